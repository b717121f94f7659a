"""validate end to end on a tiny Llama and 16 TruthfulQA v0 questions: held-out folds checked from the recorded ids,
resume after an interruption, the baselines and their token semantics, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from conftest import shared_data, write_wikitext_corpus

from lm_eval_iti.artifact import file_sha256, load_directions
from lm_eval_iti.cli import main
from lm_eval_iti.data import load_mc
from lm_eval_iti.errors import ITIError
from lm_eval_iti.experiments import ExperimentConfig, validate
from lm_eval_iti.experiments.executor import Executor
from lm_eval_iti.experiments.plan import Plan
from lm_eval_iti.experiments.validate import parse_baselines
from lm_eval_iti.folds import fold_indices, question_id

NQ = 16
ALPHA, K = 4.0, 3


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def config(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    return ExperimentConfig(model=str(tiny_model_dir), dtype="float32", device="cpu",
                            data_dir=str(shared_data("truthfulqa", "v0")), num_questions=NQ,
                            tasks=("truthfulqa_iti_mc1",), corpus=str(write_wikitext_corpus(root / "corpus.raw")),
                            num_docs=2,
                            num_tokens=16, cache_dir=str(root / "cache"), progress=False, batch_size=16,
                            fit_batch_size=32)


@pytest.fixture(scope="module")
def resumed_run(config, tmp_path_factory):
    """validate interrupted after fold 0, then run again: returns (results, out, fold-0 bytes before the rerun)."""
    out = tmp_path_factory.mktemp("run") / "validate"
    original = Executor.run_one

    def run_one_until_fold_1(self, fold, variant):
        if fold == 1:
            raise Interrupted()
        return original(self, fold, variant)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Executor, "run_one", run_one_until_fold_1)
        with pytest.raises(Interrupted):
            validate(config, out, alpha=ALPHA, num_heads=K)
    before = {p.name: p.read_bytes() for p in sorted((out / "folds").glob("*.json"))}
    assert not (out / "results.json").exists()
    results = validate(config, out, alpha=ALPHA, num_heads=K)
    return results, out, before


def test_interrupted_validate_resumes_without_redoing_finished_folds(resumed_run):
    results, out, before = resumed_run
    assert sorted(before) == ["fold_0_baseline.json", "fold_0_iti.json"]
    assert results["evaluations_this_process"] == 2  # fold 1's baseline and ITI only
    assert sorted(results["resumed_from_disk"]) == sorted(before)
    for name, content in before.items():
        assert (out / "folds" / name).read_bytes() == content
    assert sorted(p.name for p in (out / "folds").glob("*.json")) == sorted(
        [f"fold_{f}_{v}.json" for f in (0, 1) for v in ("baseline", "iti")])


def test_no_fold_evaluates_a_question_its_directions_were_fitted_on(resumed_run):
    results, out, _ = resumed_run
    questions = [r["question"] for r in load_mc(out / "data")]
    assert len(questions) == NQ
    seen = set()
    for fold_result in results["folds"]["iti"]:
        fold = fold_result["fold"]
        evaluated = set(fold_result["question_ids"]["truthfulqa_iti_mc1"])  # from lm-eval's logged samples
        recorded = set(json.loads(load_directions(fold_result["directions"]["path"]).metadata["train_question_ids"]))
        assert evaluated and recorded and not evaluated & recorded
        assert fold_result["leak_check"]["overlap"] == 0
        assert evaluated == {question_id(questions[i]) for i in fold_indices(questions, 2, fold, 42)[1]}
        assert evaluated | recorded == {question_id(q) for q in questions}
        seen |= evaluated
    assert len(seen) == NQ and results["leak_check"]["overlap_total"] == 0
    baseline_ids = [set(f["question_ids"]["truthfulqa_iti_mc1"]) for f in results["folds"]["baseline"]]
    assert baseline_ids == [set(f["question_ids"]["truthfulqa_iti_mc1"]) for f in results["folds"]["iti"]]


def test_results_record_settings_hashes_and_fold_means(resumed_run, config):
    results, out, _ = resumed_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["num_folds"] == 2 and saved["settings"]["tasks"] == ["truthfulqa_iti_mc1"]
    assert {d["fold"] for d in saved["directions_files"]} == {0, 1}
    for d in saved["directions_files"]:
        assert d["sha256"] == file_sha256(d["path"]) and d["num_train_questions"] == NQ // 2
    rows = {r["variant"]: r for r in saved["rows"]}
    for name in ("baseline", "iti"):
        per_fold = [f["metrics"]["truthfulqa_iti_mc1"]["acc"] for f in saved["folds"][name]]
        assert rows[name]["metrics"]["MC1"]["mean"] == pytest.approx(sum(per_fold) / 2)
        assert rows[name]["metrics"]["MC1"]["stderr"] is not None
        assert rows[name]["metrics"]["True"]["mean"] is None  # no judge: blank, not 0
    assert rows["iti"]["α"] == ALPHA and rows["iti"]["K"] == K and rows["baseline"]["K"] is None
    assert rows["baseline"]["metrics"]["KL"]["mean"] == 0.0 and rows["iti"]["metrics"]["KL"]["mean"] > 0
    for f in saved["folds"]["iti"]:
        assert f["model_info"]["iti"]["directions_sha256"] == f["directions"]["sha256"]
        assert f["model_info"]["iti"]["alpha"] == ALPHA
    table = (out / "table.md").read_text()
    assert "| ITI (mass-mean) | 4 | 3 |" in table and "answer-scoring positions" in table


def test_a_changed_setting_redoes_only_the_rows_it_defines(resumed_run, config, tmp_path):
    _, out, _ = resumed_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    results = validate(config, copy, alpha=ALPHA + 1, num_heads=K)
    assert results["evaluations_this_process"] == 2  # ITI at the new alpha, both folds; the baseline is resumed
    assert sorted(results["resumed_from_disk"]) == ["fold_0_baseline.json", "fold_1_baseline.json"]


def test_cli_rerun_with_the_same_settings_resumes_everything(resumed_run, config, capsys):
    _, out, _ = resumed_run
    main(["validate", "--model", config.model, "--dtype", "float32", "--device", "cpu", "--data-dir",
          config.data_dir, "--num-questions", str(NQ), "--tasks", "truthfulqa_iti_mc1", "--alpha", str(ALPHA),
          "--num-heads", str(K), "--corpus", config.corpus, "--num-docs", "2", "--num-tokens", "16",
          "--cache-dir", config.cache_dir, "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert "0 fold x variant evaluations run, 4 resumed from disk" in printed
    assert "| baseline (α=0, instruction=default) | 0 |" in printed


def test_folds_that_disagree_with_the_fit_are_caught_and_not_written(config, tmp_path):
    original = Plan.task_metadata

    def other_seed(self, fold):
        return dict(original(self, fold), seed=config.seed + 1)  # tasks split with another seed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Plan, "task_metadata", other_seed)
        with pytest.raises(ITIError, match="training questions of"):
            validate(config, tmp_path / "leaky", alpha=ALPHA, num_heads=K, baseline=False)
    assert not list((tmp_path / "leaky").glob("folds/*.json"))


def test_bad_options_fail_with_one_line(config, tmp_path, capsys):
    for kwargs, match in (({"num_folds": 1}, "at least 2 folds"), ({"metadata": {"fold": 1}}, "metadata=fold"),
                          ({"num_questions": 5000}, "more than the 817 questions")):
        with pytest.raises(ITIError, match=match):
            validate(dataclasses.replace(config, **kwargs), tmp_path / "bad", alpha=ALPHA, num_heads=K)
    with pytest.raises(ITIError, match="not one of"):
        validate(config, tmp_path / "bad", baselines=("nonsense",))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--model", config.model, "--baselines", "nonsense", "--out", str(tmp_path / "cli")])
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "cli").exists()


@pytest.fixture(scope="module")
def all_baselines(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines") / "run"
    return validate(dataclasses.replace(config, limit=3), out, alpha=ALPHA, num_heads=K,
                    baselines=parse_baselines("all"), random_draws=1), out


def test_baselines_are_in_the_same_table_with_their_token_semantics(all_baselines):
    results, out = all_baselines
    rows = {r["variant"]: r for r in results["rows"]}
    assert list(rows) == ["baseline", "iti", "random-directions", "random-matched-0", "random-matched-kl-0",
                          "random-heads-0", "label-shuffled-0", "style", "probe-weights", "no-instruction", "baked",
                          "steered"]
    assert results["evaluations_this_process"] == 24 and results["leak_check"]["overlap_total"] == 0
    table = (out / "table.md").read_text()
    for row in rows.values():  # a family's draws share one legend line
        assert f"**{row['method'].replace(' (draw 0)', ' (every draw)')}**: {row['positions']}" in table
    assert "every position" in rows["baked"]["positions"] and "answer-scoring" in rows["iti"]["positions"]
    # baked bias, lm-eval steered and hf-iti's every-position CE/KL hooks are three implementations of one edit
    for fold in (0, 1):
        kl = {v: results["folds"][v][fold]["side_effects"]["kl"] for v in ("iti", "baked", "steered")}
        ce = {v: results["folds"][v][fold]["side_effects"]["ce_steered"] for v in ("iti", "baked", "steered")}
        assert kl["iti"] > 0 and kl["baked"] == pytest.approx(kl["iti"], rel=1e-3, abs=1e-7)
        assert kl["steered"] == pytest.approx(kl["iti"], rel=1e-3, abs=1e-7)
        assert ce["baked"] == pytest.approx(ce["iti"], abs=1e-4) and ce["steered"] == pytest.approx(ce["iti"], abs=1e-4)
        for v in ("baked", "steered"):  # same directions file as the ITI row of the fold
            assert results["folds"][v][fold]["directions"]["sha256"] == results["folds"]["iti"][fold]["directions"][
                "sha256"]
    assert rows["no-instruction"]["metrics"]["KL"]["mean"] == 0.0
    assert rows["no-instruction"]["metrics"]["CE"]["mean"] == rows["baseline"]["metrics"]["CE"]["mean"]
    meta = {v: load_directions(results["folds"][v][0]["directions"]["path"]).metadata
            for v in ("iti", "random-directions", "random-heads-0", "probe-weights")}
    assert (meta["iti"]["method"], meta["iti"]["random_heads"]) == ("mass-mean", "false")
    assert (meta["random-directions"]["method"], meta["random-heads-0"]["random_heads"]) == ("random", "true")
    assert meta["probe-weights"]["method"] == "probe"
    assert all(f["n_samples"]["truthfulqa_iti_mc1"] == 3 for fs in results["folds"].values() for f in fs)


def test_a_judge_set_in_the_environment_changes_the_resume_hash(monkeypatch, tmp_path):
    from lm_eval_iti.experiments.plan import ExperimentConfig, make_plan
    from lm_eval_iti.experiments.validate import validate_variants

    variants = validate_variants()

    def fold_hash():
        plan = make_plan(ExperimentConfig(model="m", data_dir=str(shared_data("truthfulqa", "v0"))), variants,
                         tmp_path / "run")
        return plan.fold_hash(0, variants[1])

    monkeypatch.delenv("LM_EVAL_ITI_JUDGE", raising=False)
    without = fold_hash()
    monkeypatch.setenv("LM_EVAL_ITI_JUDGE", "hf")
    monkeypatch.setenv("LM_EVAL_ITI_TRUTH_JUDGE", str(tmp_path / "truth-judge"))
    monkeypatch.setenv("LM_EVAL_ITI_INFO_JUDGE", str(tmp_path / "info-judge"))
    assert fold_hash() != without
