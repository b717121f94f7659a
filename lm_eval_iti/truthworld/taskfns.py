"""The truth-world lm-eval tasks' functions: data from a folder written by ``truthworld export-data`` (TruthfulQA's
own files), question-level folds from ``lm_eval_iti.folds`` (the split fit-directions uses), myth / non-myth subsets
from the CSV's Category column. Options arrive through ``--metadata``: ``data_dir`` (required), ``num_folds`` and
``fold`` (together), ``seed`` (default 42)."""

from __future__ import annotations

from ..data import load_generation, load_mc
from ..errors import ITIError
from ..folds import fold_indices
from .generator import FACT_CATEGORY, MYTH_CATEGORY


def _rows(category: str, metadata: dict) -> list[dict]:
    import datasets  # noqa: F401  (lm-eval needs it anyway)

    data_dir = metadata.get("data_dir")
    if not data_dir:
        raise ITIError("truthworld tasks need --metadata data_dir=FOLDER (written by `lm-eval-iti truthworld export-data`)")
    mc = load_mc(str(data_dir))
    gen = {g["question"].strip(): g for g in load_generation(str(data_dir))}
    keep = range(len(mc))
    num_folds, fold = metadata.get("num_folds"), metadata.get("fold")
    if (num_folds is None) != (fold is None):
        raise ITIError("num_folds and fold go together: pass both (e.g. --metadata num_folds=2,fold=0) or neither")
    if num_folds is not None:
        _, keep = fold_indices([r["question"] for r in mc], int(num_folds), int(fold), int(metadata.get("seed", 42)))
    rows = []
    for i in keep:
        q = mc[i]["question"].strip()
        g = gen.get(q)
        if g is None:
            raise ITIError(f"{data_dir}: question {q!r} is in mc_task.json but not in TruthfulQA.csv")
        if g["category"] != category:
            continue
        true_colour = g["best_answer"].rstrip(".").split()[-1]
        colours = sorted({a.rstrip(".").split()[-1] for a in g["correct_answers"] + g["incorrect_answers"]})
        rows.append({"question": q, "mc1_targets": mc[i]["mc1_targets"], "true_colour": true_colour,
                     "colours": colours})
    return rows


def _dataset(rows, task):
    import datasets

    if not rows:
        raise ITIError(f"{task}: no questions left to evaluate (check data_dir and fold options)")
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


def load_myth(**metadata):
    return _dataset(_rows(MYTH_CATEGORY, metadata), "truthworld myth")


def load_fact(**metadata):
    return _dataset(_rows(FACT_CATEGORY, metadata), "truthworld fact")


def process_gen(doc: dict, results: list[str]) -> dict:
    """1 when the first colour word of the greedy answer is the true colour."""
    words = results[0].replace(".", " ").replace("?", " ").split()
    said = next((w for w in words if w in doc["colours"]), "")
    return {"states_truth": float(said == doc["true_colour"])}
