"""Check a judge before trusting it: score human-labelled TruthfulQA answers and report accuracy and AUC.

TruthfulQA's ``eval_examples.csv`` gives, for each of the 817 questions, answers labelled true / false and
informative / uninformative. The check draws ``n`` of them per judge, seeded and balanced (half positive), scores
them with the configured judge and compares its labels (P(yes) >= 0.5) with the human ones. A wrong prompt format,
the wrong model behind a URL or a chat model in place of a fine-tune gives numbers near chance (0.5); a judge below
``min_accuracy`` is an error unless ``allow_fail`` is set, then one loud warning.

The AllenAI judges were fine-tuned on these same questions, so for them this is a configuration check, not a
held-out accuracy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import random
from pathlib import Path

from ..errors import ITIError
from .cache import JudgmentCache
from .config import JudgeConfig
from .prompts import INFO, KINDS, TRUTH, Item
from .runner import Stats, judge_requests

log = logging.getLogger("lm_eval_iti.judges")

EVAL_EXAMPLES_URL = "https://raw.githubusercontent.com/sylinrl/TruthfulQA/main/data/eval_examples.csv"
EVAL_EXAMPLES_SHA256 = "40ab4547b0a8ceaf1285b00f37bb908c9656e17e6e4dad3a8ed6e7256f4a1e1a"
COLUMNS = {TRUTH: ("Examples: True", "Examples: False"), INFO: ("Examples: Informative", "Examples: Uninformative")}


def load_eval_examples(source: str = EVAL_EXAMPLES_URL) -> list[dict]:
    """Rows ``{question, TRUTH: (positives, negatives), INFO: (positives, negatives)}`` from eval_examples.csv (a
    file, its folder or a URL); ITIError naming the problem otherwise."""
    from ..data import _split_answers

    source = str(source)
    if source.startswith(("http://", "https://")):
        from ..data import _fetch_url

        try:
            raw = _fetch_url(source)
        except ITIError:
            raise ITIError(f"could not download {source}; pass judge_check_data=PATH (TruthfulQA's "
                           f"eval_examples.csv or its folder) instead") from None
        if source == EVAL_EXAMPLES_URL and hashlib.sha256(raw).hexdigest() != EVAL_EXAMPLES_SHA256:
            log.warning("%s: upstream changed since this package was written (sha256 differs)", source)
        text, where = raw.decode("utf-8-sig"), source
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / "eval_examples.csv"
        if not path.is_file():
            raise ITIError(f"judge_check_data={source}: no such file (TruthfulQA's eval_examples.csv or its folder)")
        text, where = path.read_text(encoding="utf-8-sig"), str(path)
    reader = csv.DictReader(io.StringIO(text))
    needed = ["Question", *COLUMNS[TRUTH], *COLUMNS[INFO]]
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise ITIError(f"{where}: missing column '{missing[0]}' (is this TruthfulQA's eval_examples.csv?)")
    rows = [{"question": r["Question"].strip(),
             **{kind: (_split_answers(r[pos]), _split_answers(r[neg])) for kind, (pos, neg) in COLUMNS.items()}}
            for r in reader]
    if not rows:
        raise ITIError(f"{where}: no rows")
    return rows


def draw_examples(rows: list[dict], kind: str, n: int, seed: int) -> list[tuple[Item, int]]:
    """``n`` labelled (question, answer) pairs for the ``kind`` judge: ceil(n/2) positive, floor(n/2) negative,
    drawn without replacement with ``seed`` and interleaved."""
    positives = [Item(r["question"], a) for r in rows for a in r[kind][0]]
    negatives = [Item(r["question"], a) for r in rows for a in r[kind][1]]
    n_pos, n_neg = (n + 1) // 2, n // 2
    if n_pos > len(positives) or n_neg > len(negatives):
        raise ITIError(f"judge_check_examples={n} is more than the labelled answers available "
                       f"({len(positives)} positive, {len(negatives)} negative for the {kind} judge)")
    rng = random.Random(f"{seed}:{kind}")
    pos, neg = rng.sample(positives, n_pos), rng.sample(negatives, n_neg)
    out: list[tuple[Item, int]] = []
    for i in range(max(n_pos, n_neg)):
        out += [(pos[i], 1)] if i < n_pos else []
        out += [(neg[i], 0)] if i < n_neg else []
    return out


def roc_auc(scores: list[float], labels: list[int]) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney U / n⁺n⁻)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return math.nan
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def check_judges(cfg: JudgeConfig, cache: JudgmentCache | None = None, rows: list[dict] | None = None,
                 progress: bool = False) -> dict:
    """Score ``cfg.check_examples`` labelled answers per judge; the report, or ITIError for a judge below
    ``cfg.check_min_accuracy`` (one loud warning instead with ``cfg.check_allow_fail``)."""
    from .judging import build_judge

    n = cfg.check_examples
    rows = rows if rows is not None else load_eval_examples(cfg.check_data or EVAL_EXAMPLES_URL)
    own_cache = cache is None
    cache = cache if cache is not None else JudgmentCache(cfg.cache_path)
    report: dict = {"examples": n, "seed": cfg.check_seed, "min_accuracy": cfg.check_min_accuracy}
    try:
        for kind in KINDS:
            examples = draw_examples(rows, kind, n, cfg.check_seed)
            judge = build_judge(kind, cfg)
            try:
                judgments = judge_requests(judge, [judge.request_text(item) for item, _ in examples], cache,
                                           concurrency=cfg.concurrency, retries=cfg.retries, backoff=cfg.backoff,
                                           batch_size=cfg.batch_size, stats=Stats(), progress=progress)
            finally:
                judge.close()
            usable = [(j, y) for j, (_, y) in zip(judgments, examples) if j.usable]
            accuracy = sum(j.label == y for j, y in usable) / len(usable) if usable else math.nan
            report[kind] = {"accuracy": accuracy, "auc": roc_auc([j.p_yes for j, _ in usable], [y for _, y in usable]),
                            "scored": len(usable), "failures": len(examples) - len(usable),
                            "undecided": sum(j.undecided for j, _ in usable)}
    finally:
        if own_cache:
            cache.close()
    low = [kind for kind in KINDS if not report[kind]["accuracy"] >= cfg.check_min_accuracy]
    report["passed"] = not low
    if low:
        shown = "; ".join(f"{kind} judge {cfg.judge_for(kind)[0]!r}: accuracy {report[kind]['accuracy']:.3f}, "
                          f"AUC {report[kind]['auc']:.3f}" for kind in low)
        message = (f"JUDGE CHECK FAILED on {n} human-labelled TruthfulQA answers per judge (balanced, chance 0.5; "
                   f"threshold {cfg.check_min_accuracy:g}): {shown}. Check the prompt format, the model behind the "
                   f"URL and that it is a fine-tuned judge")
        if not cfg.check_allow_fail:
            raise ITIError(message + " (judge_check_allow_fail=true reports the numbers anyway)")
        log.warning("%s. Continuing because judge_check_allow_fail=true: the judge metrics are not trustworthy.",
                    message)
    return report
