"""harness.engine on the packaged loglikelihood tasks against lm-eval's own hf-iti: per-request loglikelihoods
(HFITI on the very requests lm-eval built) and the tasks' metrics (simple_evaluate with hf-iti), several (alpha, K)
points in one engine call, tiny Llama (GQA), Qwen2 and GPT-2, every position mode. Data from ../shared/data."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import tqa_local_metadata
from lm_eval_iti.errors import ITIError
from lm_eval_iti.intervene import MC_POSITIONS
from lm_eval_iti.harness.model import HFITI

TASKS = ["truthfulqa_iti_mc1", "truthfulqa_iti_mc2", "truthfulqa_iti_mc3", "truthfulqa_iti_binary", "nq_open_iti",
         "trivia_qa_iti"]
SETTINGS = [(0.0, None), (6.0, 2), (12.0, 6)]
LIMIT = 2


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def arch(request, tiny_arch):
    return tiny_arch(request.param)[:4]


def _run_hf_iti(model, tok, path, alpha, k, mode, metadata, max_length=None):
    from lm_eval_iti.harness.driver import run_tasks

    lm = HFITI(pretrained=model, tokenizer=tok, directions=str(path), alpha=alpha, num_heads=k, mc_positions=mode,
               batch_size=8, **({"max_length": max_length} if max_length else {}))
    try:
        return run_tasks(lm, TASKS, metadata, limit=LIMIT, bootstrap_iters=0)["metrics"]
    finally:
        lm.intervener.remove()


def _hf_iti_requests(model, tok, path, alpha, k, mode, pairs, max_length=None):
    lm = HFITI(pretrained=model, tokenizer=tok, directions=str(path), alpha=alpha, num_heads=k, mc_positions=mode,
               batch_size=8, **({"max_length": max_length} if max_length else {}))
    try:
        return lm._loglikelihood_tokens([(("", ""), c, x) for c, x in pairs], disable_tqdm=True)
    finally:
        lm.intervener.remove()


def _assert_metrics_equal(engine: dict, lm_eval: dict):
    assert set(engine) == set(lm_eval) == set(TASKS)
    for task in TASKS:
        assert set(engine[task]) == set(lm_eval[task])
        for name, value in lm_eval[task].items():
            if value is None:
                assert engine[task][name] is None
            elif name in ("acc", "acc_both", "acc_any") and task != "truthfulqa_iti_mc2":
                assert engine[task][name] == value, (task, name)  # accuracies: identical
            else:  # MC2 and probability masses are continuous in the log-likelihoods
                assert engine[task][name] == pytest.approx(value, abs=1e-4), (task, name)


@pytest.mark.parametrize("mode", MC_POSITIONS)
def test_engine_equals_hf_iti_on_every_loglikelihood_task(arch, mode):
    from lm_eval_iti.harness.engine import score_points

    model, tok, path, directions = arch
    metadata = tqa_local_metadata()
    holder = []
    evaluations = score_points(model, tok, TASKS, metadata, directions, SETTINGS, mc_positions=mode, limit=LIMIT,
                               bootstrap_iters=0, engine_lm=holder)
    engine_lm = holder[0]
    assert len(engine_lm.calls) == 1  # one scoring pass for all points
    pairs, per_point = engine_lm.calls[0]
    assert len(pairs) > 4 * len(TASKS)
    for (alpha, k), results in zip(SETTINGS, per_point):
        reference = _hf_iti_requests(model, tok, path, alpha, k, mode, pairs)
        worst = max(abs(e[0] - r[0]) for e, r in zip(results, reference))
        assert worst <= 1e-4, (alpha, k, worst)
        assert [e[1] for e in results] == [r[1] for r in reference]
    # the steering changes the numbers at these points: agreement is not the unsteered model's twice
    assert max(abs(a[0] - b[0]) for a, b in zip(per_point[0], per_point[2])) > 1e-3
    for evaluation, (alpha, k) in zip(evaluations, SETTINGS):
        assert evaluation["model_info"]["scored_by"] == "engine"
        assert evaluation["question_ids"]["truthfulqa_iti_mc1"]
    # metrics through lm-eval's own process_results and aggregation, compared with a whole hf-iti run
    alpha, k = SETTINGS[-1]
    _assert_metrics_equal(evaluations[-1]["metrics"], _run_hf_iti(model, tok, path, alpha, k, mode, metadata))


def test_engine_with_truncation_equals_hf_iti(arch):
    """max_length below the MC prompts' length (the 6-shot primer): every MC request is left-truncated."""
    from lm_eval_iti.harness.engine import score_points

    model, tok, path, directions = arch
    metadata = tqa_local_metadata()
    holder = []
    max_length = 96
    evaluations = score_points(model, tok, TASKS, metadata, directions, SETTINGS[1:], limit=LIMIT, bootstrap_iters=0,
                               max_length=max_length, engine_lm=holder)
    pairs, per_point = holder[0].calls[0]
    assert any(len(c) + len(x) > max_length + 1 for c, x in pairs)
    for (alpha, k), results in zip(SETTINGS[1:], per_point):
        reference = _hf_iti_requests(model, tok, path, alpha, k, "answer", pairs, max_length=max_length)
        assert max(abs(e[0] - r[0]) for e, r in zip(results, reference)) <= 1e-4
        assert [e[1] for e in results] == [r[1] for r in reference]
    alpha, k = SETTINGS[-1]
    _assert_metrics_equal(evaluations[-1]["metrics"],
                          _run_hf_iti(model, tok, path, alpha, k, "answer", metadata, max_length=max_length))


def test_generation_tasks_are_named_and_refused(tiny_model_dir):
    from lm_eval_iti.harness.engine import EngineLM, loglikelihood_only

    assert loglikelihood_only(TASKS + ["truthfulqa_iti_gen"], tqa_local_metadata()) == ["truthfulqa_iti_gen"]
    assert loglikelihood_only(TASKS, tqa_local_metadata()) == []
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    lm = EngineLM(model, [], tokenizer=AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    with pytest.raises(ITIError, match="loglikelihood tasks only"):
        lm.generate_until([])
    with pytest.raises(ITIError, match="loglikelihood tasks only"):
        lm.loglikelihood_rolling([])


def test_sweep_grid_by_engine_equals_the_grid_by_lm_eval(tiny_model_dir, tmp_path):
    """sweep with the engine and with --engine off: same numbers row by row; every row says who scored it; the best
    row is scored again by lm-eval itself and agrees."""
    from conftest import shared_data
    from lm_eval_iti.experiments import ExperimentConfig, sweep

    def run(engine, out, select_by):
        config = ExperimentConfig(model=str(tiny_model_dir), dtype="float32", device="cpu",
                                  data_dir=str(shared_data("truthfulqa", "v0")), num_questions=12,
                                  tasks=("truthfulqa_iti_mc1", "truthfulqa_iti_mc2"), limit=3, side_effects=False,
                                  cache_dir=str(tmp_path / "cache"), progress=False, folds=(0,), bootstrap_iters=0,
                                  engine=engine)
        # negative strengths: on this random model they raise MC2 above the baseline, so a steered row is chosen
        return sweep(config, tmp_path / out, [0.0, -8.0, -16.0], [1, 3], select_by=select_by)

    by_engine = run("auto", "engine", "MC2")
    by_lm_eval = run("off", "lm_eval", "none")
    assert by_lm_eval["selection"] is None
    grid = {r["variant"]: r for r in by_lm_eval["rows"]}
    for row in by_engine["rows"]:
        if row["variant"].endswith("-lm-eval"):
            continue
        other = grid[row["variant"]]
        assert row["scored_by"] == ("engine" if row["kind"] == "hf-iti" else "lm-eval")
        assert other["scored_by"] == "lm-eval"
        assert row["metrics"]["MC1"]["mean"] == other["metrics"]["MC1"]["mean"]
        assert row["metrics"]["MC2"]["mean"] == pytest.approx(other["metrics"]["MC2"]["mean"], abs=1e-4)
        fold_result = by_engine["folds"][row["variant"]][0]
        assert fold_result["scored_by"] == row["scored_by"]
    selection = by_engine["selection"]
    assert selection["by"] == "MC2" and selection["scored_by"] == "engine"
    confirm = next(r for r in by_engine["rows"] if r["variant"] == selection["lm_eval_variant"])
    assert confirm["scored_by"] == "lm-eval"
    assert confirm["metrics"]["MC2"]["mean"] == pytest.approx(selection["mean"], abs=1e-4)
    assert selection["lm_eval_mean"] == confirm["metrics"]["MC2"]["mean"]
    # a rerun resumes every row, the lm-eval one included
    again = run("auto", "engine", "MC2")
    assert again["evaluations_this_process"] == 0 and len(again["resumed_from_disk"]) == len(by_engine["rows"])


def test_validate_nested_selection_chooses_on_training_folds_and_lm_eval_scores_the_choice(tiny_model_dir, tmp_path):
    """--alpha select: per outer fold, inner folds of its training questions only, the grid scored by the engine
    (checked against hf-iti on one inner fold), the best mean chosen, the held-out row scored by lm-eval."""
    import json

    from conftest import shared_data
    from lm_eval_iti.experiments import ExperimentConfig, validate
    from lm_eval_iti.folds import question_id

    config = ExperimentConfig(model=str(tiny_model_dir), dtype="float32", device="cpu",
                              data_dir=str(shared_data("truthfulqa", "v0")), num_questions=24,
                              tasks=("truthfulqa_iti_mc2",), side_effects=False, cache_dir=str(tmp_path / "cache"),
                              progress=False, folds=(0,), bootstrap_iters=0)
    selection = {"alphas": [-8.0, 4.0], "num_heads": [1, 3], "by": "MC2", "inner_folds": 2}
    results = validate(config, tmp_path / "run", alpha="select", num_heads=3, selection=selection)
    fold = results["folds"]["iti"][0]
    chosen = fold["selection"]
    assert chosen["scored_by"] == "engine" and len(chosen["grid"]) == 4
    best = max(chosen["grid"], key=lambda g: g["mean"])
    assert (chosen["alpha"], chosen["num_heads"]) == (best["alpha"], best["num_heads"])
    assert (fold["alpha_used"], fold["num_heads_used"]) == (best["alpha"], best["num_heads"])
    assert fold["scored_by"] == "lm-eval"
    assert fold["model_info"]["iti"]["alpha"] == best["alpha"]
    assert fold["model_info"]["iti"]["num_heads_used"] == best["num_heads"]
    row = next(r for r in results["rows"] if r["variant"] == "iti")
    assert row["K"] == f"select: {best['num_heads']}" and row["scored_by"] == "lm-eval"
    # the inner folds cover the training questions exactly once, and never the held-out fold
    assert sum(r["evaluated_questions"] for r in chosen["inner_folds"]) == chosen["training_questions"] == 12
    data = json.loads((tmp_path / "run" / "select" / "fold_0" / "data" / "mc_task.json").read_text())
    assert not {question_id(d["question"]) for d in data} & set(fold["question_ids"]["truthfulqa_iti_mc2"])
    # inner fold 0's grid against lm-eval's hf-iti on the same inner split
    from lm_eval_iti.harness.driver import run_tasks
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    inner = chosen["inner_folds"][0]
    metadata = {"data_dir": str(tmp_path / "run" / "select" / "fold_0" / "data"), "num_folds": 2, "fold": 0,
                "seed": 42, "contiguous_folds": False, "instruction": "default"}
    for point in chosen["grid"]:
        lm = HFITI(pretrained=model, tokenizer=tok, directions=inner["directions"], alpha=point["alpha"],
                   heads=point["num_heads"], batch_size=8)
        try:
            value = run_tasks(lm, ["truthfulqa_iti_mc2"], metadata, bootstrap_iters=0)["metrics"]
        finally:
            lm.intervener.remove()
        assert point["per_inner_fold"][0] == pytest.approx(value["truthfulqa_iti_mc2"]["acc"], abs=1e-4)
    # resume: the selection is read back, not recomputed
    again = validate(config, tmp_path / "run", alpha="select", num_heads=3, selection=selection)
    assert again["evaluations_this_process"] == 0 and again["folds"]["iti"][0]["selection"] == chosen
