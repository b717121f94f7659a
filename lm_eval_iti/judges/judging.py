"""The Python API: check a judge configuration, then judge (question, answer) items with both judges."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .cache import JudgmentCache
from .config import JudgeConfig
from .metrics import judge_metrics
from .prompts import KINDS, Item
from .runner import Stats, judge_requests
from .scoring import Judgment

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


def judge_items(items: list[Item], cfg: JudgeConfig, cache: JudgmentCache | None = None,
                progress: bool = True) -> Verdicts:
    """Judge every item with the truth and the info judge (cached; one judge loaded at a time for hf)."""
    own_cache = cache is None
    cache = cache if cache is not None else JudgmentCache(cfg.cache_path)
    secret = (os.environ.get(cfg.api_key_env) or None) if cfg.is_api else None  # to scrub from error messages
    results: dict[str, list[Judgment]] = {}
    stats: dict[str, dict] = {}
    try:
        for kind in KINDS:
            judge = build_judge(kind, cfg)
            counter = Stats()
            try:
                requests = [judge.request_text(item) for item in items]
                results[kind] = judge_requests(judge, requests, cache, concurrency=cfg.concurrency,
                                               retries=cfg.retries, backoff=cfg.backoff,
                                               batch_size=cfg.batch_size, stats=counter, secret=secret,
                                               progress=progress)
            finally:
                judge.close()
            stats[kind] = {"requests": counter.requests, "retries": counter.retries, "cached": counter.cached}
    finally:
        if own_cache:
            cache.close()
    metrics = judge_metrics([j.label for j in results["truth"]], [j.label for j in results["info"]])
    return Verdicts(results["truth"], results["info"], metrics, stats)
