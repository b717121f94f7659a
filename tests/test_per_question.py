"""Per-question records and the instruction's reach, on a tiny Llama and TruthfulQA v0 from ../shared/data.

* Only the tasks that take an instruction receive the row's: the rendered prompts (lm-eval's logged ``arguments``)
  of the MC tasks hold it, those of the binary and transfer tasks do not (their default is ``none``).
* validate and sweep write per_question.csv and per_question_choices.jsonl: the fold metrics of results.json are the
  means of the per-question values, for rows scored by lm-eval and by the shared-prefix engine; MC1/MC2/MC3 and
  binary recomputed from the choice log-likelihoods equal the per-question columns; a rerun keeps the files, and a
  fold file without per-question data is recomputed.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import pytest
from conftest import shared_data

from lm_eval_iti.experiments import ExperimentConfig, sweep, validate
from lm_eval_iti.experiments import records
from lm_eval_iti.experiments.runner import Experiment, instruction_metadata
from lm_eval_iti.prompts import INSTRUCTIONS, QA_PRIMER

MC_TASKS = ("truthfulqa_iti_mc1", "truthfulqa_iti_mc2", "truthfulqa_iti_mc3")
OTHER_TASKS = ("truthfulqa_iti_binary", "nq_open_iti", "trivia_qa_iti")
INSTRUCTION = INSTRUCTIONS["default"]
# the per-question columns of each task metric that is a mean of per-question values
MEANS = {("truthfulqa_iti_mc1", "acc"): "mc1", ("truthfulqa_iti_mc2", "acc"): "mc2",
         ("truthfulqa_iti_mc3", "acc"): "mc3", ("truthfulqa_iti_binary", "acc"): "binary_acc",
         ("truthfulqa_iti_binary", "acc_both"): "binary_acc_both", ("nq_open_iti", "acc"): "nq_open_iti_acc",
         ("nq_open_iti", "prob_mass_true"): "nq_open_iti_prob_mass_true", ("trivia_qa_iti", "acc_any"):
         "trivia_qa_iti_acc_any"}


def _config(tiny_model_dir, root, **kw) -> ExperimentConfig:
    settings = dict(model=str(tiny_model_dir), dtype="float32", device="cpu",
                    data_dir=str(shared_data("truthfulqa", "v0")), num_questions=16,
                    binary_data=str(shared_data("truthfulqa", "TruthfulQA.csv")),
                    metadata={"nq_data": str(shared_data("transfer", "iti_nq_open_val.csv")),
                              "trivia_data": str(shared_data("transfer", "iti_trivia_qa_val.csv"))},
                    tasks=MC_TASKS + OTHER_TASKS, limit=4, side_effects=False, bootstrap_iters=0,
                    cache_dir=str(root / "cache"), progress=False, batch_size=16, fit_batch_size=32)
    settings.update(kw)
    return ExperimentConfig(**settings)


def _capturing(mp, captured: list):
    """Record (row, lm-eval's logged samples) of every evaluation the experiment runs."""
    import lm_eval_iti.harness.driver as driver

    evaluate, run_one = driver.evaluate, Experiment.run_one
    current = {}

    def run_one_named(self, fold, variant):
        current["row"] = variant.name
        return run_one(self, fold, variant)

    def evaluate_recorded(*args, **kwargs):
        out = evaluate(*args, **kwargs)
        captured.append((current.get("row"), out.get("samples") or {}))
        return out

    mp.setattr(Experiment, "run_one", run_one_named)
    mp.setattr(driver, "evaluate", evaluate_recorded)


@pytest.fixture(scope="module")
def validated(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("per_question")
    captured = []
    with pytest.MonkeyPatch.context() as mp:
        _capturing(mp, captured)
        results = validate(_config(tiny_model_dir, root), root / "run", alpha=4.0, num_heads=3,
                           baselines=("no-instruction",))
    return results, root / "run", captured


def _contexts(samples: dict, task: str) -> list[str]:
    return [args[0] for sample in samples[task] for args in sample["arguments"]]


def test_only_the_tasks_that_take_an_instruction_receive_it(validated):
    _, _, captured = validated
    rows = defaultdict(int)
    for row, samples in captured:
        assert set(samples) == set(MC_TASKS + OTHER_TASKS)
        rows[row] += 1
        for task in MC_TASKS:
            contexts = _contexts(samples, task)
            if row == "no-instruction":
                assert all(c.startswith(QA_PRIMER) for c in contexts), (row, task)
            else:
                assert all(c.startswith(INSTRUCTION + "\n\n" + QA_PRIMER) for c in contexts), (row, task)
        for task in OTHER_TASKS:  # default "none" whatever the row's instruction
            contexts = _contexts(samples, task)
            assert contexts and not any("Interpret each question" in c for c in contexts), (row, task)
        assert all(c.startswith("Q: ") for c in _contexts(samples, "truthfulqa_iti_binary"))
        assert all(c.startswith(QA_PRIMER) for t in ("nq_open_iti", "trivia_qa_iti") for c in _contexts(samples, t))
    assert dict(rows) == {"baseline": 2, "iti": 2, "no-instruction": 2}


def test_an_instruction_set_in_metadata_reaches_the_tasks_without_their_own(tmp_path):
    """metadata instruction=... is for binary and transfer; the MC tasks keep the row's (here none)."""
    from lm_eval_iti.harness.driver import task_manager

    meta = {"data_dir": str(shared_data("truthfulqa", "v0")), "instruction": "informative",
            "binary_data": str(shared_data("truthfulqa", "TruthfulQA.csv")),
            "nq_data": str(shared_data("transfer", "iti_nq_open_val.csv"))}
    tasks = ["truthfulqa_iti_mc1", "truthfulqa_iti_binary", "nq_open_iti"]
    loaded = task_manager(tasks, meta, per_task_metadata=instruction_metadata("none")).load(tasks)["tasks"]
    first = {name: task.doc_to_text(next(iter(task.eval_docs))) for name, task in loaded.items()}
    assert first["truthfulqa_iti_mc1"].startswith(QA_PRIMER)
    for name in ("truthfulqa_iti_binary", "nq_open_iti"):
        assert first[name].startswith(INSTRUCTIONS["informative"] + "\n\n"), name
    assert loaded["truthfulqa_iti_mc1"].config.metadata["instruction"] == "none"


def _check_means(results: dict, lines: list[dict], rows: list[str]) -> int:
    """Every fold metric of ``rows`` in results.json is the mean of its per-question column; returns the count."""
    checked = 0
    for row in rows:
        for fold_result in results["folds"][row]:
            mine = [line for line in lines if line["row"] == row and line["fold"] == fold_result["fold"]]
            for (task, metric), column in MEANS.items():
                reported = (fold_result["metrics"].get(task) or {}).get(metric)
                if reported is None:
                    continue
                values = [line[column] for line in mine if line.get(column) is not None]
                assert values and sum(values) / len(values) == pytest.approx(reported, abs=1e-12), (row, column)
                checked += 1
        # and the table's value: the mean over folds of those fold means
        mc2 = [sum(v) / len(v) for v in ([line["mc2"] for line in lines if line["row"] == row
                                          and line["fold"] == f["fold"] and line["mc2"] is not None]
                                         for f in results["folds"][row])]
        row_mean = next(r for r in results["rows"] if r["variant"] == row)["metrics"]["MC2"]["mean"]
        assert sum(mc2) / len(mc2) == pytest.approx(row_mean, abs=1e-12)
    return checked


def _check_recomputed(out, lines: list[dict]) -> None:
    """MC1/MC2/MC3 (and binary acc, per question the mean of its two orders) from the choices file equal the
    per-question columns."""
    by_key = {(line["row"], line["fold"], line["question_id"]): line for line in lines}
    binary = defaultdict(list)
    compared = 0
    for choice in records.read_choices(out / records.CHOICES_FILE):
        key = (choice["row"], choice["fold"], choice["question_id"])
        for column, value in records.recompute(choice).items():
            if column == "binary_acc":
                binary[key].append(value)
            else:
                assert by_key[key][column] == pytest.approx(value, abs=1e-12), (key, column)
                compared += 1
    for key, values in binary.items():
        assert by_key[key]["binary_acc"] == pytest.approx(sum(values) / len(values), abs=1e-12)
    assert compared and binary


def test_validate_writes_per_question_records_whose_means_are_the_metrics(validated):
    results, out, _ = validated
    lines = records.read_per_question(out / records.PER_QUESTION_FILE)
    header = (out / records.PER_QUESTION_FILE).read_text().splitlines()[0].split(",")
    assert header[:8] == ["row", "fold", "question_id", "mc1", "mc2", "mc3", "binary_acc", "binary_acc_both"]
    assert {"nq_open_iti_acc", "trivia_qa_iti_acc", "nq_open_iti_acc_any"} <= set(header)
    assert not {"nq_open_iti_excluded_rows", "truth_info"} & set(header)
    # per row and fold: 4 MC questions, 2 binary questions (both orders: limit 4 docs), 4 + 4 transfer questions
    keys = {(line["row"], line["fold"], line["question_id"]) for line in lines}
    truthfulqa = [len(set().union(*f["question_ids"].values())) for fs in results["folds"].values() for f in fs]
    assert len(keys) == len(lines) == sum(truthfulqa) + 3 * 2 * (4 + 4) and min(truthfulqa) >= 4
    assert {line["row"] for line in lines} == {"baseline", "iti", "no-instruction"}
    for fold_result in results["folds"]["iti"]:
        mc_ids = set(fold_result["question_ids"]["truthfulqa_iti_mc1"])
        assert {line["question_id"] for line in lines if line["row"] == "iti" and line["fold"] == fold_result["fold"]
                and line["mc1"] is not None} == mc_ids
    assert _check_means(results, lines, ["baseline", "iti", "no-instruction"]) == 3 * 2 * len(MEANS)
    _check_recomputed(out, lines)
    saved = json.loads((out / "results.json").read_text())
    assert saved["per_question"]["rows_without"] == [] and saved["per_question"]["columns"] == header
    assert not any(key in f for fs in saved["folds"].values() for f in fs for key in records.RECORD_KEYS)
    assert all(records.has_records(json.loads(p.read_text())) for p in (out / "folds").glob("fold_*_*.json")
               if not p.name.endswith(("_select.json", "_alpha_auto.json", "_kl_match.json")))


def test_a_rerun_keeps_the_records_and_recomputes_a_fold_file_without_them(validated, tiny_model_dir, tmp_path):
    results, out, _ = validated
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = (out / records.PER_QUESTION_FILE).read_text()
    choices = (out / records.CHOICES_FILE).read_text()
    config = _config(tiny_model_dir, out.parent)
    again = validate(config, copy, alpha=4.0, num_heads=3, baselines=("no-instruction",))
    assert again["evaluations_this_process"] == 0
    assert (copy / records.PER_QUESTION_FILE).read_text() == before
    assert (copy / records.CHOICES_FILE).read_text() == choices
    # a fold file as an older version wrote it: no per-question data -> stale, its row is recomputed
    path = copy / "folds" / "fold_1_baseline.json"
    path.write_text(json.dumps(records.without_records(json.loads(path.read_text()))))
    again = validate(config, copy, alpha=4.0, num_heads=3, baselines=("no-instruction",))
    assert again["evaluations_this_process"] == 1 and "fold_1_baseline.json" not in again["resumed_from_disk"]
    assert records.has_records(json.loads(path.read_text()))
    assert (copy / records.PER_QUESTION_FILE).read_text() == before


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("per_question_sweep")
    config = _config(tiny_model_dir, root, tasks=MC_TASKS + ("truthfulqa_iti_binary",), metadata={}, folds=(0,))
    results = sweep(config, root / "run", [0.0, 4.0, 8.0], [3], select_by="none")
    return results, root / "run"


def test_sweep_records_engine_rows_like_lm_eval_rows(swept):
    results, out = swept
    lines = records.read_per_question(out / records.PER_QUESTION_FILE)
    scored_by = {r["variant"]: r["scored_by"] for r in results["rows"]}
    assert {"engine", "lm-eval"} <= set(scored_by.values())
    assert {line["row"] for line in lines} == set(scored_by)
    assert _check_means(results, lines, list(scored_by)) == len(scored_by) * 5
    _check_recomputed(out, lines)
    assert results["selection"] is None  # no rescoring: the grid rows are the engine's, the baseline lm-eval's
    # the per-question records of engine rows against lm-eval's: tests/test_validate_controls.py


def test_column_names():
    assert [records.column_name(t, "acc") for t in MC_TASKS] == ["mc1", "mc2", "mc3"]
    assert records.column_name("truthfulqa_iti_binary", "acc_both") == "binary_acc_both"
    assert records.column_name("truthfulqa_iti_gen", "bleu_max") == "bleu_max"
    assert records.column_name("truthfulqa_iti_gen", "truth") == "truth"
    assert records.column_name("nq_open_iti", "acc_any") == "nq_open_iti_acc_any"


def test_per_question_values_from_logged_samples():
    """The judge payloads, binary's pairs and the constants, as harness.samples reads them."""
    from lm_eval_iti.harness.samples import choice_loglikelihoods, per_question

    gen = [{"doc_id": 0, "doc": {"question_id": "q1"}, "filter": "none",
            "metrics": ["bleu_max", "truth", "info", "truth_info", "truth_and_info", "judge_undecided",
                        "judge_failures"],
            "bleu_max": 3.5, "truth": {"p_yes": 0.9, "label": 1}, "info": {"p_yes": 0.2, "label": None, "failure": "x"},
            "truth_info": {"truth": 1, "info": None}, "truth_and_info": {"label": None},
            "judge_undecided": {"undecided": 1}, "judge_failures": {"failures": 1},
            "filtered_resps": ["an answer"], "arguments": [("Q: x", {"until": ["Q:"]})]}]
    binary = [{"doc_id": i, "doc": {"question_id": "b", "gold": i}, "filter": "none", "metrics": ["acc", "acc_both"],
               "acc": float(i == 0), "acc_both": ("b", float(i == 0)), "target": i,
               "filtered_resps": [(-1.0, False), (-2.0, False)], "arguments": [("p", " A"), ("p", " B")]}
              for i in (0, 1)]
    transfer = [{"doc_id": 0, "doc": {"question": " who? ", "num_true": 2, "excluded_rows": 3}, "filter": "none",
                 "metrics": ["acc", "excluded_rows"], "acc": 1.0, "excluded_rows": 3,
                 "filtered_resps": [(-1.0, False), (-3.0, True), (-2.0, False)], "arguments": []}]
    values = per_question({"truthfulqa_iti_gen": gen, "truthfulqa_iti_binary": binary, "nq_open_iti": transfer})
    assert values["truthfulqa_iti_gen"] == {"q1": {"bleu_max": 3.5, "truth": 1.0, "info": None,
                                                   "truth_and_info": None, "judge_undecided": 1.0,
                                                   "judge_failures": 1.0}}
    assert values["truthfulqa_iti_binary"] == {"b": {"acc": 0.5, "acc_both": 0.0}}
    from lm_eval_iti.folds import question_id

    assert values["nq_open_iti"] == {question_id("who?"): {"acc": 1.0}}
    choices = choice_loglikelihoods({"truthfulqa_iti_gen": gen, "truthfulqa_iti_binary": binary,
                                     "nq_open_iti": transfer})
    assert "truthfulqa_iti_gen" not in choices
    assert [c["true"] for c in choices["truthfulqa_iti_binary"]] == [[True, False], [False, True]]
    assert choices["nq_open_iti"][0]["true"] == [True, True, False]


def test_generation_rows_record_bleu_rouge_and_the_judgments(fake_server, tiny_model_dir, tmp_path):
    """truthfulqa_iti_gen judged by the fake OpenAI-compatible server: per question BLEU/ROUGE and the judges'
    labels, whose means (sums for the counts) are the fold's metrics."""
    from lm_eval_iti.judges import glue

    glue.reset()
    judge = {"judge": "openai", "truth_judge": "truth-judge", "info_judge": "info-judge",
             "judge_base_url": fake_server.url, "judge_cache": str(tmp_path / "judgments.sqlite"),
             "judge_check": "false"}
    config = _config(tiny_model_dir, tmp_path, tasks=("truthfulqa_iti_gen",), metadata=judge, folds=(0,), limit=3)
    try:
        results = validate(config, tmp_path / "run", alpha=4.0, num_heads=3)
    finally:
        glue.reset()
    lines = records.read_per_question(tmp_path / "run" / records.PER_QUESTION_FILE)
    assert len(lines) == 2 * 3 and (tmp_path / "run" / records.CHOICES_FILE).read_text() == ""
    for row in ("baseline", "iti"):
        metrics = results["folds"][row][0]["metrics"]["truthfulqa_iti_gen"]
        mine = [line for line in lines if line["row"] == row]
        for column in ("bleu_max", "bleu_acc", "rouge1_acc", "rougeL_max", "truth", "info", "truth_and_info"):
            values = [line[column] for line in mine if line[column] is not None]
            assert values and sum(values) / len(values) == pytest.approx(metrics[column], abs=1e-12), column
        for column in ("judge_undecided", "judge_failures"):
            assert sum(line[column] for line in mine) == metrics[column], column
