"""The Python API: check a judge configuration, then judge (question, answer) items with both judges."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .cache import JudgmentCache
from .config import JudgeConfig
from .metrics import judge_metrics
from .prompts import KINDS, Item
from .runner import OUTAGE_ERRORS, Stats, judge_requests
from .scoring import Judgment, outage

log = logging.getLogger("lm_eval_iti.judges")


def validate(cfg: JudgeConfig) -> None:
    """Endpoint reachable and both models known (API), or both models loadable (hf). ITIError otherwise."""
    if not cfg.enabled or not cfg.check:
        return
    if cfg.is_api:
        from .api import check_endpoint

        check_endpoint(cfg)
    else:
        from .hf import check_model

        check_model(cfg)


def build_judge(kind: str, cfg: JudgeConfig):
    if cfg.backend == "hf":
        from .hf import HFJudge

        return HFJudge(kind, cfg)
    from .api import build, make_client

    return build(kind, cfg, make_client(cfg, kind))


@dataclass
class Verdicts:
    """Per-item judgments of both judges, the metrics, and how many requests it took."""

    truth: list[Judgment]
    info: list[Judgment]
    metrics: dict
    stats: dict = field(default_factory=dict)
    outage: dict = field(default_factory=dict)  # kind -> one-line cause, when judging was cut short


def judge_items(items: list[Item], cfg: JudgeConfig, cache: JudgmentCache | None = None,
                progress: bool = True, keep_going: bool = False) -> Verdicts:
    """Judge every item with the truth and the info judge (cached; one judge loaded at a time for hf).

    ``keep_going``: a judge that fails (server down after retries, weights that do not load) is an outage, not an
    exception: its unjudged items get unusable judgments, its metrics are NaN and ``Verdicts.outage`` says why.
    """
    own_cache = cache is None
    cache = cache if cache is not None else JudgmentCache(cfg.cache_path)
    secret = (os.environ.get(cfg.api_key_env) or None) if cfg.is_api else None  # to scrub from error messages
    results: dict[str, list[Judgment]] = {}
    stats: dict[str, dict] = {}
    outages: dict[str, str] = {}
    try:
        for kind in KINDS:
            counter = Stats()
            try:
                judge = build_judge(kind, cfg)
            except OUTAGE_ERRORS as exc:
                if not keep_going:
                    raise
                counter.outage = " ".join(str(exc).split())
                results[kind] = [outage(counter.outage)] * len(items)
            else:
                try:
                    requests = [judge.request_text(item) for item in items]
                    results[kind] = judge_requests(judge, requests, cache, concurrency=cfg.concurrency,
                                                   retries=cfg.retries, backoff=cfg.backoff,
                                                   batch_size=cfg.batch_size, stats=counter, secret=secret,
                                                   progress=progress, keep_going=keep_going)
                finally:
                    judge.close()
            stats[kind] = {"requests": counter.requests, "retries": counter.retries, "cached": counter.cached}
            if counter.outage:
                outages[kind] = counter.outage
    finally:
        if own_cache:
            cache.close()
    undecided = sum(j.undecided for j in results["truth"] + results["info"])
    metrics = judge_metrics([j.label for j in results["truth"]], [j.label for j in results["info"]],
                            undecided=undecided, outage=tuple(outages))
    return Verdicts(results["truth"], results["info"], metrics, stats, outages)
