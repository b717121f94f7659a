"""Judge metrics of experiment fold results: finishing what an outage left unjudged, and True*Info over folds.

An experiment keeps each fold's judged answers in its fold result (``judge_answers``: question id, question, answer,
both judgments; see ``glue.keep_judged``). With them:

* ``complete_fold``: a fold with an answer still missing a judgment (an outage, or a response unusable after its
  retries) is not complete. A rerun judges just those answers from the kept text (judgments made before come from
  the cache; nothing is generated again) and recomputes the fold's judge metrics. A fold with missing judgments and
  no kept answers (written by an older version) can only be evaluated again.
* ``true_times_info``: True*Info over folds is mean(True) × mean(Info), both over the same answers (those with both
  judgments), so that it never multiplies means over different sets of questions.
* ``unjudged_note``: how many answers a judge column's mean leaves out, so that a table marks it.
"""

from __future__ import annotations

import math

from .metrics import judge_metrics
from .prompts import Item

GEN_TASK = "truthfulqa_iti_gen"
KEPT = "judge_answers"  # the fold result's list of judged answers
# the table's judge columns -> the judgments each one needs
JUDGE_COLUMNS = {"True": ("truth",), "Info": ("info",), "True*Info": ("truth", "info"),
                 "True&Info": ("truth", "info")}


def _label(judgment) -> int | None:
    return judgment.get("label") if isinstance(judgment, dict) else None


def missing_judgments(fold: dict) -> int:
    """How many judgments the fold's kept answers still lack."""
    return sum(_label(a.get(kind)) is None for a in fold.get(KEPT) or () for kind in ("truth", "info"))


def needs_judging(fold: dict) -> bool:
    """A fold whose judge metrics are not final: an answer lacks a judgment, or a judge metric is missing while no
    answers were kept to tell why."""
    gen = (fold.get("metrics") or {}).get(GEN_TASK) or {}
    if "truth" not in gen and "info" not in gen:  # no judge in this fold
        return False
    if fold.get(KEPT):
        return missing_judgments(fold) > 0
    return bool(gen.get("judge_failures")) or gen.get("truth") is None or gen.get("info") is None


def _number(value):
    return None if isinstance(value, float) and math.isnan(value) else float(value)


def complete_fold(fold: dict, metadata: dict) -> dict | None:
    """``fold`` itself when its judge metrics are final; else a copy with the missing judgments made (those an
    outage leaves out again stay missing) and the judge metrics recomputed; None when it must be evaluated again
    (missing judgments and no kept answers)."""
    if not needs_judging(fold):
        return fold
    if not fold.get(KEPT):
        return None
    from .glue import prepared_config
    from .judging import judge_items

    cfg = prepared_config(dict(metadata))
    answers = [dict(a) for a in fold[KEPT]]
    todo = [a for a in answers if _label(a["truth"]) is None or _label(a["info"]) is None]
    items = [Item(a["question"], a["answer"], tuple(a.get("correct_answers") or ()),
                  tuple(a.get("incorrect_answers") or ())) for a in todo]
    verdicts = judge_items(items, cfg, progress=False, keep_going=True)
    for answer, truth, info in zip(todo, verdicts.truth, verdicts.info):
        for kind, judgment in (("truth", truth), ("info", info)):
            if _label(answer[kind]) is None:
                answer[kind] = _view(judgment)
    metrics = dict(fold["metrics"])
    metrics[GEN_TASK] = dict(metrics[GEN_TASK], **fold_judge_metrics(answers, tuple(verdicts.outage)))
    return dict(fold, metrics=metrics, **{KEPT: answers}, **_per_question_refreshed(fold, answers))


def _per_question_refreshed(fold: dict, answers: list[dict]) -> dict:
    """The fold's per-question values (``harness.samples``) with the gen task's judge values made from ``answers``,
    so that per_question.csv shows the new judgments; {} when the fold has none."""
    per_question = fold.get("per_question")
    if not isinstance(per_question, dict) or GEN_TASK not in per_question:
        return {}
    gen = {qid: dict(values) for qid, values in per_question[GEN_TASK].items()}
    for a in answers:
        values = gen.get(a.get("question_id"))
        if values is None:
            continue
        truth, info = _label(a["truth"]), _label(a["info"])
        values.update(truth=None if truth is None else float(truth), info=None if info is None else float(info),
                      truth_and_info=None if truth is None or info is None else float(truth and info),
                      judge_failures=float((truth is None) + (info is None)),
                      judge_undecided=float(sum(bool((a.get(k) or {}).get("undecided")) for k in ("truth", "info"))))
    return {"per_question": dict(per_question, **{GEN_TASK: gen})}


def _view(judgment) -> dict:
    """A Judgment as the kept answers hold it (as glue shows it in the samples)."""
    out = {"p_yes": judgment.p_yes, "label": judgment.label}
    if judgment.failure:
        out["failure"] = judgment.failure
    if judgment.undecided:
        out["undecided"] = True
    return out


def fold_judge_metrics(answers: list[dict], outage: tuple[str, ...] = ()) -> dict:
    """The gen task's judge metrics from kept answers, as the fold results hold them (NaN as None)."""
    undecided = sum(bool((a.get(kind) or {}).get("undecided")) for a in answers for kind in ("truth", "info"))
    metrics = judge_metrics([_label(a["truth"]) for a in answers], [_label(a["info"]) for a in answers],
                            undecided=undecided, outage=outage)
    return {name: _number(value) for name, value in metrics.items()}


def _fold_pair_means(fold: dict) -> tuple[float, float] | None:
    """(mean truth, mean info) of one fold over its answers with both judgments; None when a judge of the fold had
    an outage (its metric is missing, as in judge_metrics); from the fold's metrics when it kept no answers (older
    results: ``unjudged_note`` marks a mean over fewer answers there)."""
    gen = (fold.get("metrics") or {}).get(GEN_TASK) or {}
    if gen.get("truth") is None or gen.get("info") is None:
        return None
    answers = fold.get(KEPT)
    if answers:
        pairs = [(_label(a["truth"]), _label(a["info"])) for a in answers]
        pairs = [(t, i) for t, i in pairs if t is not None and i is not None]
        if not pairs:
            return None
        return sum(t for t, _ in pairs) / len(pairs), sum(i for _, i in pairs) / len(pairs)
    return gen["truth"], gen["info"]


def true_times_info(folds: list[dict]) -> dict:
    """The True*Info cell over folds: mean over folds of each fold's truth and info (over the same answers),
    multiplied. Equal to mean(True) × mean(Info) when every answer has both judgments."""
    per_fold = [_fold_pair_means(f) for f in folds]
    present = [p for p in per_fold if p is not None]
    mean = None
    if present:
        mean = (sum(t for t, _ in present) / len(present)) * (sum(i for _, i in present) / len(present))
    return {"mean": mean, "stderr": None, "folds": len(present),
            "per_fold": [None if p is None else p[0] * p[1] for p in per_fold],
            "definition": "mean(True) x mean(Info) over folds, both over the answers with both judgments"}


def unjudged_note(folds: list[dict], column: str) -> str | None:
    """The table's note for a judge column whose means cover fewer answers than the folds generated, else None."""
    kinds = JUDGE_COLUMNS[column]
    judged = total = missing_old = 0
    for fold in folds:
        answers = fold.get(KEPT)
        if answers:
            total += len(answers)
            judged += sum(all(_label(a.get(kind)) is not None for kind in kinds) for a in answers)
        else:  # older results: only the fold's count of missing judgments is known
            missing_old += int(((fold.get("metrics") or {}).get(GEN_TASK) or {}).get("judge_failures") or 0)
    notes = ([f"{judged} of {total} answers judged"] if judged < total else []) + \
        ([f"{missing_old} judgments missing"] if missing_old else [])
    return "; ".join(notes) or None
