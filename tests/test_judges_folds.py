"""Judge metrics of experiment folds: an outage leaves a fold incomplete, a rerun judges what is missing from the kept
answers (no generation), tables mark means over fewer folds or answers, and True*Info multiplies means over the same
answers only. End to end: an outage mid-run, then a rerun, gives the table of a run without the outage."""

from __future__ import annotations

import json

import pytest
from conftest import shared_data

from lm_eval_iti.experiments import aggregate as agg
from lm_eval_iti.judges.folds import complete_fold, needs_judging, true_times_info

GEN = "truthfulqa_iti_gen"


def _answer(qid: str, truth, info) -> dict:
    def view(label):
        return None if label is None else {"p_yes": 0.9 if label else 0.1, "label": label}
    return {"question_id": qid, "question": f"Q {qid}?", "answer": f"A {qid}.", "truth": view(truth),
            "info": view(info)}


def _fold(answers: list[dict], **gen) -> dict:
    return {"metrics": {GEN: gen}, "judge_answers": answers}


def test_true_times_info_multiplies_means_over_the_same_answers():
    # the truth judge judged q1-q4, the info judge q2-q4 (q1's info judgment was lost)
    answers = [_answer("q1", 1, None), _answer("q2", 0, 1), _answer("q3", 1, 1), _answer("q4", 1, 0)]
    cell = true_times_info([_fold(answers, truth=0.75, info=2 / 3)])
    assert cell["mean"] == pytest.approx((2 / 3) * (2 / 3))  # over q2-q4, not 0.75 x 2/3
    complete = [_answer("q1", 1, 1), *answers[1:]]
    product = true_times_info([_fold(complete, truth=0.75, info=0.75)])["mean"]
    assert product == pytest.approx(0.75 * 0.75)  # complete: the product of the means, as before


def test_a_table_marks_means_over_fewer_folds_or_answers():
    full = _fold([_answer("a", 1, 1), _answer("b", 0, 1)], truth=0.5, info=1.0, truth_and_info=0.5)
    cut = _fold([_answer("c", None, 1), _answer("d", None, 0)], truth=None, info=0.5, truth_and_info=None)
    for f, mc1 in ((full, 0.3), (cut, 0.4)):
        f["metrics"]["truthfulqa_iti_mc1"] = {"acc": mc1}
    out = agg.aggregate_variant([full, cut])
    assert out["True"]["partial"] == "1 of 2 folds; 2 of 4 answers judged"
    assert agg.format_cell("True", out["True"]) == "0.500 (1 of 2 folds; 2 of 4 answers judged)"
    assert "partial" not in out["Info"] and agg.format_cell("Info", out["Info"]) == "0.750"
    assert out["True*Info"]["mean"] == pytest.approx(0.5 * 1.0) and "2 of 4 answers" in out["True*Info"]["partial"]
    assert "partial" not in out["MC1"]
    older = {"metrics": {GEN: {"truth": 0.5, "info": 0.5, "judge_failures": 3}}}  # no kept answers
    assert agg.aggregate_variant([older])["Info"]["partial"] == "3 judgments missing"


def test_a_fold_with_missing_judgments_is_not_complete():
    assert not needs_judging(_fold([_answer("a", 1, 1)], truth=1.0, info=1.0))
    assert needs_judging(_fold([_answer("a", 1, None)], truth=1.0, info=None))
    assert not needs_judging({"metrics": {"truthfulqa_iti_mc1": {"acc": 0.3}}})  # no judge in this fold
    older = {"metrics": {GEN: {"truth": None, "info": 0.5, "judge_failures": 2}}}
    assert needs_judging(older) and complete_fold(older, {}) is None  # no kept answers: evaluate it again


@pytest.fixture
def experiment(tiny_model_dir, tmp_path):
    """A validate-like run of the baseline on truthfulqa_iti_gen (8 questions, 2 folds), judged by the fake server."""
    from lm_eval_iti.experiments import ExperimentConfig
    from lm_eval_iti.experiments.baselines import baseline_variant
    from lm_eval_iti.experiments import execute, make_plan
    from lm_eval_iti.judges import glue

    def run(server, out, cache):
        glue.reset()
        meta = {"judge": "openai", "truth_judge": "truth-judge", "info_judge": "info-judge",
                "judge_base_url": server.url, "judge_cache": str(cache), "judge_retries": 0,
                "judge_backoff": 0.01, "judge_concurrency": 1, "judge_check": False}
        config = ExperimentConfig(model=str(tiny_model_dir), dtype="float32", device="cpu",
                                  data_dir=str(shared_data("truthfulqa", "v0")), num_questions=8,
                                  tasks=("truthfulqa_iti_gen",), side_effects=False, progress=False,
                                  batch_size=8, gen_kwargs="max_gen_toks=6", bootstrap_iters=0, metadata=meta,
                                  cache_dir=str(tmp_path / "acts"))
        try:
            return execute(make_plan(config, [baseline_variant()], out))
        finally:
            glue.reset()
    return run


@pytest.mark.slow
def test_an_outage_then_a_rerun_gives_the_table_of_a_run_without_it(fake_server, tmp_path, experiment):
    clean = experiment(fake_server, tmp_path / "clean", tmp_path / "clean.sqlite")
    assert (clean["rows"][0]["metrics"]["True*Info"]["mean"] is not None
            and not any("partial" in c for c in clean["rows"][0]["metrics"].values() if isinstance(c, dict)))
    clean_table = (tmp_path / "clean" / "table.md").read_text()

    # the info judge's server fails (no retries) once it has answered fold 0: an outage in the middle of the run
    answered = []

    def plan(endpoint, key, attempt):
        if key.endswith("Helpful:"):
            if len(answered) >= 4:
                return "500"
            answered.append(key)
        return None

    fake_server.plan = plan
    down = experiment(fake_server, tmp_path / "down", tmp_path / "down.sqlite")
    # the kept answers live in the fold files (results.json leaves them out)
    folds = [json.loads((tmp_path / "down" / "folds" / f"fold_{i}_baseline.json").read_text()) for i in (0, 1)]
    assert [sum(a["info"]["label"] is None for a in f["judge_answers"]) for f in folds] == [0, 4]
    assert [f["metrics"][GEN]["info"] is None for f in folds] == [False, True]
    assert all(a["truth"]["label"] is not None for f in folds for a in f["judge_answers"])  # truth finished
    row = down["rows"][0]["metrics"]
    for name in ("Info", "True*Info", "True&Info"):  # over fold 0 only: never an unmarked partial mean
        assert row[name]["partial"] == "1 of 2 folds; 4 of 8 answers judged", name
    assert "partial" not in row["True"]
    assert "(1 of 2 folds; 4 of 8 answers judged)" in (tmp_path / "down" / "table.md").read_text()
    missing = 4

    # the server is back: the rerun judges only what is missing, generates nothing, and the table is the clean one
    fake_server.plan = lambda endpoint, key, attempt: None
    before = fake_server.total("completions")
    again = experiment(fake_server, tmp_path / "down", tmp_path / "down.sqlite")
    assert again["evaluations_this_process"] == 0 and len(again["resumed_from_disk"]) == 2
    assert fake_server.total("completions") - before == missing
    assert (tmp_path / "down" / "table.md").read_text() == clean_table
    for name in ("True", "Info", "True*Info", "True&Info"):
        assert again["rows"][0]["metrics"][name]["mean"] == clean["rows"][0]["metrics"][name]["mean"], name
    for f, g in zip(again["folds"]["baseline"], clean["folds"]["baseline"]):
        assert {k: f["metrics"][GEN][k] for k in ("truth", "info", "truth_info", "truth_and_info", "judge_failures")} \
            == {k: g["metrics"][GEN][k] for k in ("truth", "info", "truth_info", "truth_and_info", "judge_failures")}
    for fold in (0, 1):  # the fold files' per-question values (per_question.csv) are the clean run's too
        name = f"folds/fold_{fold}_baseline.json"
        done, ref = (json.loads((tmp_path / run / name).read_text()) for run in ("down", "clean"))
        assert done["per_question"][GEN] == ref["per_question"][GEN]
    # a third run finds every fold complete: no judge request at all
    before = fake_server.total("completions")
    experiment(fake_server, tmp_path / "down", tmp_path / "down.sqlite")
    assert fake_server.total("completions") == before
