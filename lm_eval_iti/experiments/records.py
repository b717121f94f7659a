"""Per-question records of a run, written next to ``results.json`` from the fold results (so a resumed run writes
them from its fold files, and they always cover every row of the table):

``per_question.csv``: one line per (row, fold, question_id); ``row`` is the variant name of results.json
(``baseline``, ``iti``, ``random-matched-0``, ...). Then one column per metric any row scored: ``mc1``, ``mc2``,
``mc3``; ``binary_acc`` (the mean over the question's two answer orders) and ``binary_acc_both``; the generation
metrics under their own names (``bleu_max``, ``bleu_acc``, ``rouge1_acc``, ..., ``truth``, ``info``,
``truth_and_info``, ``judge_undecided``, ``judge_failures``); any other task's metric as ``<task>_<metric>``
(``nq_open_iti_acc``). Empty: the row did not score it (another task) or has no usable value (a failed judgment).
The per-question values are those whose mean is the fold's metric (sums for the judge counts): see
``harness.samples``.

``per_question_choices.jsonl``: one JSON object per line and (row, fold, task, doc) of every task with choices
(MC1/MC2/MC3, binary, transfer): ``row``, ``fold``, ``question_id``, ``task``, ``doc_id``, ``loglikelihoods``
(one per choice, in the task's choice order) and ``true`` (which choices are true). ``recompute`` turns one line
back into the MC1/MC2/MC3 or binary value without a model.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..atomic import write_text_atomic

PER_QUESTION_FILE = "per_question.csv"
CHOICES_FILE = "per_question_choices.jsonl"
KEY_COLUMNS = ("row", "fold", "question_id")
# what a fold result carries for these files (driver.summarize); results.json leaves them to the files
RECORD_KEYS = ("per_question", "choice_loglikelihoods")
KEPT_OUT_OF_RESULTS = RECORD_KEYS + ("judge_answers",)  # large: the fold files keep them, results.json does not
MC_COLUMNS = {"truthfulqa_iti_mc1": "mc1", "truthfulqa_iti_mc2": "mc2", "truthfulqa_iti_mc3": "mc3"}
PREFIXED = {"truthfulqa_iti_binary": "binary"}
UNPREFIXED = ("truthfulqa_iti_gen",)  # its metric names (bleu_max, truth, ...) are already unique
LEADING_COLUMNS = ("mc1", "mc2", "mc3", "binary_acc", "binary_acc_both")


def column_name(task: str, metric: str) -> str:
    """The per_question.csv column of ``task``'s ``metric`` (see the module docstring)."""
    if task in MC_COLUMNS:
        return MC_COLUMNS[task] if metric == "acc" else f"{MC_COLUMNS[task]}_{metric}"
    if task in PREFIXED:
        return f"{PREFIXED[task]}_{metric}"
    if task in UNPREFIXED:
        return metric
    return f"{task}_{metric}"


def has_records(fold_result: dict) -> bool:
    """Whether a fold result carries the per-question data (fold files written before it existed do not)."""
    return all(isinstance(fold_result.get(key), dict) for key in RECORD_KEYS)


def without_records(fold_result: dict) -> dict:
    """The fold result without its per-question data (results.json points to the files instead)."""
    return {k: v for k, v in fold_result.items() if k not in KEPT_OUT_OF_RESULTS}


def question_lines(fold_results: dict[str, list[dict]]) -> list[dict]:
    """The lines of per_question.csv as dicts ({key columns, metric columns}), rows in the given order."""
    lines = []
    for row, folds in fold_results.items():
        for fold_result in folds:
            by_question: dict[str, dict] = {}
            for task, questions in (fold_result.get("per_question") or {}).items():
                for qid, values in questions.items():
                    line = by_question.setdefault(qid, {"row": row, "fold": fold_result["fold"], "question_id": qid})
                    line.update({column_name(task, metric): value for metric, value in values.items()})
            lines.extend(by_question.values())
    return lines


def metric_columns(lines: list[dict]) -> list[str]:
    """The metric columns: MC and binary first, then the others in order of first appearance."""
    seen: dict[str, None] = {}
    for line in lines:
        for key in line:
            if key not in KEY_COLUMNS:
                seen.setdefault(key)
    leading = [c for c in LEADING_COLUMNS if c in seen]
    return leading + [c for c in seen if c not in LEADING_COLUMNS]


def csv_text(lines: list[dict]) -> str:
    """per_question.csv's content; floats as Python's repr (they read back exactly), a missing value empty."""
    columns = list(KEY_COLUMNS) + metric_columns(lines)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: "" if v is None else v for k, v in line.items()})
    return buffer.getvalue()


def choice_lines(fold_results: dict[str, list[dict]]) -> list[dict]:
    """The lines of per_question_choices.jsonl."""
    return [{"row": row, "fold": fold_result["fold"], "question_id": record["question_id"], "task": task,
             "doc_id": record.get("doc_id"), "loglikelihoods": record["loglikelihoods"], "true": record["true"]}
            for row, folds in fold_results.items() for fold_result in folds
            for task, records in (fold_result.get("choice_loglikelihoods") or {}).items() for record in records]


def write_records(out: str | os.PathLike, fold_results: dict[str, list[dict]]) -> dict:
    """Write both files (atomically) into ``out``; returns their description for results.json. Rows whose fold
    results lack the per-question data (none, after the plan's resume rule) are named in ``rows_without``."""
    out = Path(out)
    lines = question_lines(fold_results)
    write_text_atomic(out / PER_QUESTION_FILE, csv_text(lines))
    choices = choice_lines(fold_results)
    write_text_atomic(out / CHOICES_FILE,
                      "".join(json.dumps(c, separators=(",", ":")) + "\n" for c in choices))
    missing = sorted({row for row, folds in fold_results.items() for f in folds if not has_records(f)})
    return {"file": PER_QUESTION_FILE, "choices_file": CHOICES_FILE, "lines": len(lines),
            "choice_lines": len(choices), "columns": list(KEY_COLUMNS) + metric_columns(lines),
            "rows_without": missing}


# reading back ------------------------------------------------------------------------------------------------------
def read_per_question(path: str | os.PathLike) -> list[dict]:
    """per_question.csv as dicts: ``fold`` an int, metric values floats, an empty cell None."""
    with open(path, newline="", encoding="utf-8") as handle:
        lines = list(csv.DictReader(handle))
    for line in lines:
        line["fold"] = int(line["fold"])
        for key, value in line.items():
            if key not in KEY_COLUMNS:
                line[key] = float(value) if value != "" else None
    return lines


def read_choices(path: str | os.PathLike) -> list[dict]:
    return [json.loads(text) for text in Path(path).read_text(encoding="utf-8").splitlines() if text.strip()]


def recompute(line: dict) -> dict[str, float]:
    """{column: value} of one choices line recomputed from its log-likelihoods with the tasks' own scoring
    functions: MC1 (the top choice is true), MC2 (the normalised mass on the true choices), MC3 (the share of true
    choices above the best false one), binary ``acc`` of that doc (the question's value is the mean of its two
    docs); {} for another task."""
    from ..harness.taskfns import mc3_score, top_choice_is_true, true_mass

    lls, true = line["loglikelihoods"], line["true"]
    scorers = {"truthfulqa_iti_mc1": top_choice_is_true, "truthfulqa_iti_mc2": true_mass,
               "truthfulqa_iti_mc3": mc3_score, "truthfulqa_iti_binary": top_choice_is_true}
    task = line["task"]
    if task not in scorers or true is None:
        return {}
    return {column_name(task, "acc"): scorers[task](lls, true)}
