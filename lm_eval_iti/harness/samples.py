"""Per-question records from lm-eval's logged samples (pure functions: no lm-eval, no torch import).

``driver.summarize`` keeps, per task and question id, the per-sample metric values that lm-eval averaged into the
task's metric (``per_question``), and, for loglikelihood tasks with choices, every choice's log-likelihood and
whether that choice is true (``choice_loglikelihoods``), so that any metric can be recomputed without a model.

Rules, chosen so that each task's reported metric is the mean of its per-question values:

* one value per (task, question id, metric): the mean over the question's docs (binary has two docs per question,
  one per answer order, so its ``acc`` is the question's mean over orders; every other task has one doc);
* binary ``acc_both`` (a ``(question_id, correct)`` pair per doc): 1.0 when both orders are right, 0.0 when not,
  None when the question has only one order (e.g. cut by ``--limit``), which lm-eval leaves out too;
* judge payloads (``truth``, ``info``, ``truth_and_info``): the 0/1 label, None for an unusable judgment;
  ``judge_undecided`` and ``judge_failures``: the question's count (their task values are sums, not means);
* left out: values that are per-task constants or derived from means (``excluded_rows``, ``duplicate_rows``,
  ``truth_info``, ``judge_check_*``).

A doc without a ``question_id`` (the transfer tasks) gets ``folds.question_id`` of its question text.
"""

from __future__ import annotations

import math

from ..folds import question_id

# not per-question quantities: per-task constants, or a product of means (truth_info = mean truth x mean info)
NOT_PER_QUESTION = ("excluded_rows", "duplicate_rows", "truth_info")
JUDGE_COUNTS = {"judge_undecided": "undecided", "judge_failures": "failures"}
SKIP = object()  # sample_value's answer for what is not a per-question quantity


def sample_question_id(sample: dict) -> str:
    """The question id of a logged sample: the doc's own, else the id of its question text, else its doc id."""
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    if "question_id" in doc:
        return str(doc["question_id"])
    if isinstance(doc.get("question"), str):
        return question_id(doc["question"])
    return f"doc-{sample.get('doc_id')}"


def _finite(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _metric_name(metric: str, filter_name: str) -> str:
    """As ``driver.task_metrics`` names the task value: filter ``none`` dropped, any other kept."""
    return metric if filter_name in ("none", None) else f"{metric},{filter_name}"


def sample_value(metric: str, value):
    """One sample's value of ``metric`` as a number (None: unusable); the pair of binary ``acc_both`` is kept as
    ``("pair", correct)`` for ``question_value``; what is not a per-question quantity gives ``SKIP``."""
    if metric in NOT_PER_QUESTION or metric.startswith("judge_check_"):
        return SKIP
    if isinstance(value, dict):  # a judge payload, filled in place at aggregation (judges/glue.py)
        if metric in JUDGE_COUNTS:
            return _finite(value.get(JUDGE_COUNTS[metric]))
        return _finite(value.get("label")) if "label" in value or "pending" in value else SKIP
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
        return ("pair", _finite(value[1]))
    if isinstance(value, bool):
        return float(value)
    if value is None or isinstance(value, (int, float)):
        return _finite(value)  # NaN: no usable value, kept as missing
    return SKIP


def question_value(values: list):
    """The question's value from its docs' values (see the module docstring)."""
    if values and isinstance(values[0], tuple):  # binary acc_both: right in both orders
        corrects = [v[1] for v in values]
        if len(corrects) != 2 or None in corrects:
            return None
        return float(all(corrects))
    usable = [v for v in values if v is not None]
    return sum(usable) / len(usable) if usable else None


def per_question(samples: dict | None) -> dict[str, dict[str, dict[str, float | None]]]:
    """{task: {question id: {metric: value}}} from lm-eval's logged samples, in doc order."""
    out = {}
    for task, rows in (samples or {}).items():
        collected: dict[str, dict[str, list]] = {}
        for sample in rows:
            metrics = collected.setdefault(sample_question_id(sample), {})
            for metric in sample.get("metrics") or ():
                value = sample_value(metric, sample.get(metric))
                if value is not SKIP:
                    metrics.setdefault(_metric_name(metric, sample.get("filter")), []).append(value)
        out[task] = {qid: {m: question_value(v) for m, v in metrics.items()} for qid, metrics in collected.items()}
    return out


def _choice_loglikelihoods(sample: dict) -> list[float] | None:
    """The per-choice log-likelihoods of a loglikelihood sample ((ll, is_greedy) per choice), else None."""
    resps = sample.get("filtered_resps")
    if not isinstance(resps, (list, tuple)) or not resps:
        return None
    lls = []
    for r in resps:
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[1], bool)):
            return None
        if isinstance(r[0], bool) or not isinstance(r[0], (int, float)):
            return None
        lls.append(float(r[0]))
    return lls


def _continuations(sample: dict) -> list[str]:
    return [str(a[1]) if isinstance(a, (list, tuple)) and len(a) == 2 else "" for a in sample.get("arguments") or ()]


def choice_truth(sample: dict, n: int) -> list[bool] | None:
    """Which of the ``n`` choices are true, from the doc: TruthfulQA MC (the ``mc1_targets``/``mc2_targets`` whose
    choices were scored), binary (``gold``), transfer (the first ``num_true``); else lm-eval's target index."""
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    scored = [c.strip() for c in _continuations(sample)]
    for key in ("mc1_targets", "mc2_targets"):
        targets = doc.get(key)
        if isinstance(targets, dict) and [str(c).strip() for c in targets.get("choices", ())] == scored:
            return [label == 1 for label in targets["labels"]]
    if "num_true" in doc:
        return [i < int(doc["num_true"]) for i in range(n)]
    gold = doc.get("gold", sample.get("target"))
    if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < n:
        return [i == gold for i in range(n)]
    return None


def choice_loglikelihoods(samples: dict | None) -> dict[str, list[dict]]:
    """{task: [{"question_id", "doc_id", "loglikelihoods", "true"}]} for every loglikelihood sample with choices
    (multiple-choice tasks; filter ``none`` only), in doc order."""
    out = {}
    for task, rows in (samples or {}).items():
        records = []
        for sample in rows:
            lls = _choice_loglikelihoods(sample)
            if lls is None or sample.get("filter", "none") != "none":
                continue
            records.append({"question_id": sample_question_id(sample), "doc_id": sample.get("doc_id"),
                            "loglikelihoods": lls, "true": choice_truth(sample, len(lls))})
        if records:
            out[task] = records
    return out
