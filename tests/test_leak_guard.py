"""The leak guard: under hf-iti every truthfulqa_iti_* task refuses to score a question the directions were fitted on.

The fit's question split is rebuilt with fit-directions' own functions (``fit.fit_split``, ``folds.question_id``,
``fit.data_sha256``; test_fit checks that fit-directions records exactly these ids); the expected counts are
independent set intersections of ``folds.fold_indices`` splits.
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_data
from conftest import tqa_local_metadata as _local_metadata

from lm_eval_iti import data
from lm_eval_iti.artifact import Directions, save_directions
from lm_eval_iti.errors import ITIError
from lm_eval_iti.fit import data_sha256, fit_split
from lm_eval_iti.folds import fold_indices, question_id
from lm_eval_iti.harness import taskfns


def fit_provenance(data_dir, num_folds=None, fold=None, seed=42, max_questions=None) -> dict:
    """The split metadata fit-directions writes for these options."""
    docs = data.load_mc(data_dir)
    if max_questions is not None:
        docs = docs[:max_questions]
    questions = [d["question"] for d in docs]
    fit_questions = fit_split(questions, num_folds, fold, seed, False, 0.2)[0]
    ids_json = json.dumps([question_id(questions[i]) for i in sorted(fit_questions)])
    return {"seed": str(seed), "num_folds": "" if num_folds is None else str(num_folds),
            "fold": "" if fold is None else str(fold), "contiguous_folds": "false", "dataset": str(data_dir),
            "dataset_sha256": data_sha256(docs), "max_questions": "" if max_questions is None else str(max_questions),
            "train_question_ids": ids_json, "train_question_ids_sha256": hashlib.sha256(ids_json.encode()).hexdigest()}


def directions_file(path: Path, provenance: dict | None, model=None) -> str:
    if model is not None:
        from lm_eval_iti.tiny import random_directions

        d = random_directions(model, num_heads=4, seed=1, alpha=3.0)
    else:
        d = Directions(2, 4, 16, {0: torch.tensor([1])}, {0: torch.nn.functional.normalize(torch.ones(1, 16))},
                       {0: torch.ones(1)})
    d = dataclasses.replace(d, metadata={**d.metadata, **(provenance or {})})
    return str(save_directions(d, path))


def test_fit_with_another_seed_is_refused_with_the_count_and_the_cause(tmp_path, capsys):
    v0 = shared_data("truthfulqa", "v0")
    path = directions_file(tmp_path / "seed1.safetensors", fit_provenance(v0, 2, 0, seed=1))
    questions = [r["question"] for r in data.load_mc(v0)]
    fitted = set(fold_indices(questions, 2, 0, 1)[0])
    evaluated = set(fold_indices(questions, 2, 0, 42)[1])
    leaked = len(fitted & evaluated)
    assert 0 < leaked < len(evaluated)
    meta = _local_metadata(num_folds=2, fold=0, directions=path)
    with pytest.raises(ITIError) as err:
        taskfns.load_truthfulqa_mc(**meta)
    message = str(err.value)
    assert f"{leaked} of the {len(evaluated)} evaluated questions were used to fit {path}" in message
    assert "seed differs (fit 1, this run 42)" in message and "num_folds=2,fold=0,seed=1" in message
    assert "allow_fit_questions=true" in message and "\n" not in message
    with capsys.disabled():
        print(f"\nleak guard, v0: fit --seed 1 vs evaluate seed 42 (fold 0): {leaked} of {len(evaluated)} refused")
    for loader in (taskfns.load_truthfulqa_gen, taskfns.load_truthfulqa_binary):
        with pytest.raises(ITIError, match="evaluated questions were used to fit"):
            loader(**meta)


def test_fit_on_other_data_is_refused_naming_the_data(tmp_path, capsys):
    v0, v1 = shared_data("truthfulqa", "v0"), shared_data("truthfulqa", "v1")
    path = directions_file(tmp_path / "v1.safetensors", fit_provenance(v1, 2, 0))
    v1_questions = [r["question"] for r in data.load_mc(v1)]
    fitted_ids = {question_id(v1_questions[i]) for i in fold_indices(v1_questions, 2, 0, 42)[0]}
    v0_questions = [r["question"] for r in data.load_mc(v0)]
    evaluated_ids = {question_id(v0_questions[i]) for i in fold_indices(v0_questions, 2, 0, 42)[1]}
    leaked = len(fitted_ids & evaluated_ids)
    assert leaked > 0
    with pytest.raises(ITIError, match=f"{leaked} of the {len(evaluated_ids)} evaluated .* the data differ"):
        taskfns.load_truthfulqa_mc(**_local_metadata(num_folds=2, fold=0, directions=path))
    with capsys.disabled():
        print(f"\nleak guard: fit on v1, evaluate v0 fold 0: {leaked} of {len(evaluated_ids)} refused")


def test_fit_on_max_questions_is_refused(tmp_path, capsys):
    v0 = shared_data("truthfulqa", "v0")
    path = directions_file(tmp_path / "max100.safetensors", fit_provenance(v0, 2, 0, max_questions=100))
    questions = [r["question"] for r in data.load_mc(v0)]
    fitted = set(fold_indices(questions[:100], 2, 0, 42)[0])
    evaluated = set(fold_indices(questions, 2, 0, 42)[1])
    leaked = len(fitted & evaluated)
    assert leaked > 0
    with pytest.raises(ITIError, match=f"{leaked} of the {len(evaluated)} .*first 100 questions .*--num-questions"):
        taskfns.load_truthfulqa_mc(**_local_metadata(num_folds=2, fold=0, directions=path))
    with capsys.disabled():
        print(f"\nleak guard: fit --num-questions 100 ({len(fitted)} fit questions), evaluate the full data's fold 0:"
              f" {leaked} refused")


@pytest.mark.parametrize("task_meta, cause", [
    ({}, "this run evaluates every question, the fit held out fold 0 of 2"),
    ({"num_folds": 2, "fold": 1}, "fold differs (fit 0, this run 1)"),
    ({"num_folds": 3, "fold": 2}, "num_folds differs (fit 2, this run 3); fold differs (fit 0, this run 2)"),
])
def test_other_fold_options_are_refused_naming_the_option(tmp_path, task_meta, cause):
    v0 = shared_data("truthfulqa", "v0")
    path = directions_file(tmp_path / "f.safetensors", fit_provenance(v0, 2, 0))
    with pytest.raises(ITIError, match=re.escape(cause)):
        taskfns.load_truthfulqa_mc(**_local_metadata(directions=path, **task_meta))


def test_directions_fitted_on_every_question_are_refused(tmp_path):
    v0 = shared_data("truthfulqa", "v0")
    path = directions_file(tmp_path / "all.safetensors", fit_provenance(v0))
    with pytest.raises(ITIError, match="817 of the 817 .*fitted on every question.*refit on the training folds"):
        taskfns.load_truthfulqa_mc(**_local_metadata(directions=path))


def test_matching_folds_pass_and_the_override_scores_fit_questions(tmp_path, caplog):
    v0 = shared_data("truthfulqa", "v0")
    path = directions_file(tmp_path / "ok.safetensors", fit_provenance(v0, 2, 0, seed=1))
    honest = taskfns.load_truthfulqa_mc(**_local_metadata(num_folds=2, fold=0, seed=1, directions=path))
    assert len(honest["validation"]) == len(fold_indices([r["question"] for r in data.load_mc(v0)], 2, 0, 1)[1])
    overridden = taskfns.load_truthfulqa_mc(**_local_metadata(num_folds=2, fold=0, directions=path,
                                                              allow_fit_questions="true"))
    assert len(overridden["validation"]) == len(honest["validation"])
    assert "scoring them anyway (allow_fit_questions=true)" in caplog.text
    plain = taskfns.load_truthfulqa_mc(**_local_metadata(num_folds=2, fold=0))  # no directions: model hf, no guard
    assert len(plain["validation"]) == len(honest["validation"])


def test_a_file_without_train_question_ids_is_refused_unless_overridden(tmp_path):
    path = directions_file(tmp_path / "bare.safetensors", None)
    with pytest.raises(ITIError, match="records no train_question_ids"):
        taskfns.load_truthfulqa_mc(**_local_metadata(num_folds=2, fold=0, directions=path))
    ds = taskfns.load_truthfulqa_mc(**_local_metadata(num_folds=2, fold=0, directions=path, allow_fit_questions=True))
    assert len(ds["validation"]) > 0
    with pytest.raises(ITIError, match="allow_fit_questions='maybe' must be true or false"):
        taskfns.load_truthfulqa_mc(**_local_metadata(directions=path, allow_fit_questions="maybe"))


# ---- through the stock lm_eval CLI ----

def _lm_eval(args, out: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    cmd = [str(Path(sys.executable).parent / "lm_eval"), *args, "--output_path", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_stock_lm_eval_with_mismatched_folds_exits_with_one_line_and_no_results(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    v0 = shared_data("truthfulqa", "v0")
    provenance = fit_provenance(v0, 2, 0, seed=1)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    path = directions_file(tmp_path / "seed1.safetensors", provenance, model=model)
    common = ["--model", "hf-iti", "--model_args", f"pretrained={tiny_model_dir},directions={path},dtype=float32",
              "--tasks", "truthfulqa_iti_mc1", "--device", "cpu", "--batch_size", "8", "--limit", "2"]
    meta = {"data_dir": str(v0), "num_folds": 2, "fold": 0}
    refused = _lm_eval([*common, "--metadata", json.dumps(meta)], tmp_path / "refused")
    allowed = _lm_eval([*common, "--metadata", json.dumps({**meta, "allow_fit_questions": True})],
                       tmp_path / "allowed")
    _, err = refused.communicate(timeout=600)
    _, allowed_err = allowed.communicate(timeout=600)
    assert refused.returncode != 0
    lines = [line for line in err.splitlines() if "lm-eval-iti: error:" in line]
    assert len(lines) == 1 and "evaluated questions were used to fit" in lines[0], err[-2000:]
    assert "seed differs (fit 1, this run 42)" in lines[0] and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "refused").exists()

    assert allowed.returncode == 0, allowed_err[-3000:]
    [results_file] = (tmp_path / "allowed").rglob("results_*.json")
    res = json.loads(results_file.read_text())
    assert res["configs"]["truthfulqa_iti_mc1"]["metadata"]["allow_fit_questions"] is True
    iti = res["config"]["iti"]
    assert (iti["fold"], iti["num_folds"], iti["fold_seed"]) == (0, 2, 1)
    assert iti["train_question_ids_sha256"] == provenance["train_question_ids_sha256"]
    assert iti["num_train_questions"] == len(json.loads(provenance["train_question_ids"]))


def test_an_in_memory_directions_object_is_guarded_through_the_driver(tiny_model_dir, tmp_path):
    """HFITI given a Directions object (no file): the driver hands the object to the tasks, whose guard refuses
    the fit's questions as it does for a file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.harness.driver import evaluate
    from lm_eval_iti.harness.model import HFITI

    v0 = shared_data("truthfulqa", "v0")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    directions = load_directions(directions_file(tmp_path / "seed1.safetensors", fit_provenance(v0, 2, 0, seed=1),
                                                 model=model))
    lm = HFITI(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(str(tiny_model_dir)), directions=directions,
               batch_size=8)
    try:
        with pytest.raises(ITIError, match="evaluated questions were used to fit the given Directions object"):
            evaluate(lm, ["truthfulqa_iti_mc1"], _local_metadata(num_folds=2, fold=0), limit=2, bootstrap_iters=0)
        out = evaluate(lm, ["truthfulqa_iti_mc1"], _local_metadata(num_folds=2, fold=0, seed=1), limit=2,
                       bootstrap_iters=0)
    finally:
        lm.intervener.remove()
    assert 0.0 <= out["results"]["truthfulqa_iti_mc1"]["acc,none"] <= 1.0
    assert str(out["configs"]["truthfulqa_iti_mc1"]["metadata"]["directions"]) == "<in-memory Directions object>"
