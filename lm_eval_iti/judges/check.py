"""Check a judge before trusting it: score human-labelled TruthfulQA answers and report accuracy and AUC.

TruthfulQA's ``eval_examples.csv`` gives, for each of the 817 questions, answers labelled true / false and
informative / uninformative. The check draws ``n`` of them per judge (default 100), seeded and balanced (exactly half
positive, so a judge that always says "yes" or always "no" scores 0.5), scores them with the configured judge and
compares its labels (P(yes) >= 0.5) with the human ones. Undecided and unusable answers count as wrong. A judge
fails when its accuracy is below ``min_accuracy`` or when it decides fewer than 90% of the answers; a failure is
an error (one line) unless ``allow_fail`` is set, then one loud warning. It runs by default before any judging;
``judge_check=false`` skips it, and the results record that it was skipped.

A wrong prompt format, the wrong model behind a URL or a chat model in place of a fine-tune gives numbers near
chance (0.5). The AllenAI judges were fine-tuned on these same questions, so for them this is a configuration
check, not a held-out accuracy.
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
MIN_USABLE = 0.9  # a judge that decides fewer of the labelled answers than this fails the check
SKIPPED = {"skipped": True, "reason": "judge_check=false"}  # what results record when the user opted out
COLUMNS = {TRUTH: ("Examples: True", "Examples: False"), INFO: ("Examples: Informative", "Examples: Uninformative")}


def load_eval_examples(source: str = EVAL_EXAMPLES_URL) -> list[dict]:
    """Rows ``{question, TRUTH: (positives, negatives), INFO: (positives, negatives)}`` from eval_examples.csv (a
    file, its folder or a URL); ITIError naming the problem otherwise."""
    from ..data import _split_answers

    source = str(source)
    if source.startswith(("http://", "https://")):
        text, where = _download(source).decode("utf-8-sig"), source
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


def local_copy_path() -> Path:
    """Where the default download is kept (next to the judgment cache): the check runs by default, so once is enough."""
    from .config import default_cache_path

    return Path(default_cache_path()).parent / f"eval_examples-{EVAL_EXAMPLES_SHA256[:16]}.csv"


def _download(url: str) -> bytes:
    """The file at ``url``; the default file is read from its local copy when there is one, and kept after download."""
    from ..data import _fetch_url

    default = url == EVAL_EXAMPLES_URL
    copy = local_copy_path()
    if default and copy.is_file():
        raw = copy.read_bytes()
        if hashlib.sha256(raw).hexdigest() == EVAL_EXAMPLES_SHA256:
            return raw
    try:
        raw = _fetch_url(url)
    except ITIError:
        raise ITIError(f"could not download {url}; pass judge_check_data=PATH (TruthfulQA's eval_examples.csv or "
                       f"its folder) instead, or judge_check=false to skip the judge check") from None
    if default and hashlib.sha256(raw).hexdigest() != EVAL_EXAMPLES_SHA256:
        log.warning("%s: upstream changed since this package was written (sha256 differs)", url)
    elif default:
        try:
            from ..atomic import atomic_path

            with atomic_path(copy) as tmp:
                tmp.write_bytes(raw)
        except (OSError, ITIError) as exc:  # a read-only cache folder costs a download next time, nothing more
            log.debug("could not keep %s: %s", copy, exc)
    return raw


def draw_examples(rows: list[dict], kind: str, n: int, seed: int) -> list[tuple[Item, int]]:
    """``n`` labelled (question, answer) pairs for the ``kind`` judge: n/2 positive and n/2 negative (``n`` even),
    drawn without replacement with ``seed`` and interleaved."""
    if n < 2 or n % 2:
        raise ITIError(f"judge_check_examples={n} must be even and at least 2 (half positive, half negative)")
    positives = [Item(r["question"], a) for r in rows for a in r[kind][0]]
    negatives = [Item(r["question"], a) for r in rows for a in r[kind][1]]
    half = n // 2
    if half > min(len(positives), len(negatives)):
        raise ITIError(f"judge_check_examples={n} is more than the labelled answers available "
                       f"({len(positives)} positive, {len(negatives)} negative for the {kind} judge)")
    rng = random.Random(f"{seed}:{kind}")
    pos, neg = rng.sample(positives, half), rng.sample(negatives, half)
    return [pair for p, q in zip(pos, neg) for pair in ((p, 1), (q, 0))]


def roc_auc(scores: list[float], labels: list[int]) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney U / n⁺n⁻)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return math.nan
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def score_check(judgments: list, labels: list[int], min_accuracy: float) -> dict:
    """One judge's figures on the labelled answers. Only decided answers (usable, not undecided) can be right:
    the others count as wrong, so a judge cannot pass by abstaining."""
    decided = [(j, y) for j, y in zip(judgments, labels) if j.usable and not j.undecided]
    n = len(labels)
    accuracy = sum(j.label == y for j, y in decided) / n if n else math.nan
    usable = len(decided) / n if n else math.nan
    return {"accuracy": accuracy, "usable": usable,
            "auc": roc_auc([j.p_yes for j, _ in decided], [y for _, y in decided]),
            "positives": sum(labels), "negatives": n - sum(labels), "scored": len(decided),
            "failures": sum(not j.usable for j in judgments), "undecided": sum(j.undecided for j in judgments),
            "passed": accuracy >= min_accuracy and usable >= MIN_USABLE}


def _judge_examples(kind: str, cfg: JudgeConfig, examples, cache, progress: bool) -> list:
    from .judging import build_judge

    judge = build_judge(kind, cfg)
    try:
        return judge_requests(judge, [judge.request_text(item) for item, _ in examples], cache,
                              concurrency=cfg.concurrency, retries=cfg.retries, backoff=cfg.backoff,
                              batch_size=cfg.batch_size, stats=Stats(), progress=progress)
    finally:
        judge.close()


def failure_line(cfg: JudgeConfig, report: dict) -> str:
    """The one line that names each failing judge and its figures."""
    shown = "; ".join(
        f"{kind} judge {cfg.judge_for(kind)[0]!r}: accuracy {r['accuracy']:.3f} (threshold "
        f"{cfg.check_min_accuracy:g}), usable {r['usable']:.0%} (threshold {MIN_USABLE:.0%}), AUC {r['auc']:.3f} on "
        f"{r['positives']} {POSITIVE[kind]} + {r['negatives']} {NEGATIVE[kind]} human-labelled answers"
        for kind, r in ((k, report[k]) for k in KINDS) if not r["passed"])
    return (f"JUDGE CHECK FAILED: {shown} (chance 0.5). Check the prompt format, the model behind the URL and that "
            f"it is a fine-tuned judge")


POSITIVE = {TRUTH: "true", INFO: "informative"}
NEGATIVE = {TRUTH: "false", INFO: "uninformative"}


def check_judges(cfg: JudgeConfig, cache: JudgmentCache | None = None, rows: list[dict] | None = None,
                 progress: bool = False) -> dict:
    """Score ``cfg.check_examples`` labelled answers per judge; the report, or ITIError (one line) for a judge below
    ``cfg.check_min_accuracy`` or deciding fewer than ``MIN_USABLE`` of them (a loud warning instead with
    ``cfg.check_allow_fail``)."""
    n = cfg.check_examples
    rows = rows if rows is not None else load_eval_examples(cfg.check_data or EVAL_EXAMPLES_URL)
    own_cache = cache is None
    cache = cache if cache is not None else JudgmentCache(cfg.cache_path)
    report: dict = {"examples": n, "seed": cfg.check_seed, "min_accuracy": cfg.check_min_accuracy,
                    "min_usable": MIN_USABLE, "data": cfg.check_data or EVAL_EXAMPLES_URL}
    try:
        for kind in KINDS:
            examples = draw_examples(rows, kind, n, cfg.check_seed)
            judgments = _judge_examples(kind, cfg, examples, cache, progress)
            report[kind] = score_check(judgments, [y for _, y in examples], cfg.check_min_accuracy)
    finally:
        if own_cache:
            cache.close()
    report["passed"] = all(report[kind]["passed"] for kind in KINDS)
    if not report["passed"]:
        message = failure_line(cfg, report)
        if not cfg.check_allow_fail:
            raise ITIError(message + ", or pass judge_check=false to skip the check (recorded in the results)")
        log.warning("%s. Continuing because judge_check_allow_fail=true: the judge metrics are not trustworthy.",
                    message)
        report["allowed_to_fail"] = True
    return report
