"""The planner of validate and sweep is pure: it lists every fold x row job with its result file and resume hash
without loading a model, and the hash changes exactly when a setting that defines the row changes."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import shared_data

from lm_eval_iti.atomic import write_json_sealed
from lm_eval_iti.experiments import plan as planning
from lm_eval_iti.experiments.baselines import FitSpec, baseline_variant, iti_variant
from lm_eval_iti.experiments.plan import ExperimentConfig, make_plan
from lm_eval_iti.experiments.records import RECORD_KEYS


@pytest.fixture
def no_model(monkeypatch):
    """Loading any model fails the test: planning must not need one."""
    import lm_eval_iti.fit

    def refuse(*args, **kwargs):
        raise AssertionError("the planner loaded a model")

    monkeypatch.setattr(lm_eval_iti.fit, "load_model", refuse)


def config(**overrides) -> ExperimentConfig:
    return ExperimentConfig(**{"model": "never-loaded", "data_dir": str(shared_data("truthfulqa", "v0")),
                               "num_questions": 12, "tasks": ("truthfulqa_iti_mc1",), **overrides})


def rows(alpha=4.0):
    fit = FitSpec("mass-mean", num_heads=3)
    return [baseline_variant(), iti_variant(fit, alpha), iti_variant(fit, 2.0, name="iti-weak")]


def test_every_fold_x_row_is_a_job_with_its_file_and_hash(tmp_path, no_model):
    plan = make_plan(config(), rows(), tmp_path / "run")
    assert [(j.fold, j.variant.name) for j in plan.jobs] == [(f, n) for f in (0, 1)
                                                             for n in ("baseline", "iti", "iti-weak")]
    assert all(j.path == tmp_path / "run" / "folds" / f"fold_{j.fold}_{j.variant.name}.json" for j in plan.jobs)
    hashes = [j.settings_hash for j in plan.jobs]
    assert len(set(hashes)) == len(hashes)  # every job is its own result
    assert [j.settings_hash for j in make_plan(config(), rows(), tmp_path / "run").jobs] == hashes  # stable
    assert plan.pending() == plan.jobs
    assert plan.data.questions[:1] and len(plan.data.questions) == 12 and plan.settings["data_sha256"]
    meta = plan.task_metadata(1)
    assert (meta["fold"], meta["num_folds"], meta["seed"]) == (1, 2, 42)
    only_one = make_plan(config(folds=(1,)), rows(), tmp_path / "run")
    assert {j.fold for j in only_one.jobs} == {1}


def test_the_hash_follows_the_settings_that_define_a_row(tmp_path, no_model):
    base = {(j.fold, j.variant.name): j.settings_hash for j in make_plan(config(), rows(), tmp_path / "a").jobs}

    def hashes(cfg, variants=None):
        return {(j.fold, j.variant.name): j.settings_hash
                for j in make_plan(cfg, variants or rows(), tmp_path / "b").jobs}

    assert hashes(config(batch_size=3, fit_batch_size=5, engine="off", progress=False)) == base  # speed only
    assert all(base[k] != v for k, v in hashes(config(val_ratio=0.3)).items())  # the fit changes: every row
    changed = hashes(config(), rows(alpha=5.0))
    assert {k for k in base if base[k] != changed[k]} == {(0, "iti"), (1, "iti")}  # one row's alpha


def test_a_result_on_disk_with_the_same_hash_is_not_pending(tmp_path, no_model):
    plan = make_plan(config(), rows(), tmp_path / "run")
    done = plan.jobs[1]
    record = {"settings_hash": done.settings_hash, **{key: {} for key in RECORD_KEYS}}
    write_json_sealed(done.path, record)
    assert done not in plan.pending() and len(plan.pending()) == len(plan.jobs) - 1
    stale = dataclasses.replace(plan.jobs[2])
    write_json_sealed(stale.path, {"settings_hash": "another", **{key: {} for key in RECORD_KEYS}})
    assert stale in plan.pending()
    without_records = plan.jobs[3]
    write_json_sealed(without_records.path, {"settings_hash": without_records.settings_hash})
    assert without_records in plan.pending()  # an old fold file without per-question data is recomputed


def test_bad_plans_are_refused_before_anything_is_written(tmp_path, no_model):
    with pytest.raises(planning.ITIError, match="two variants share a name"):
        make_plan(config(), rows() + [baseline_variant()], tmp_path / "run")
    with pytest.raises(planning.ITIError, match="num_folds=1"):
        make_plan(config(num_folds=1), rows(), tmp_path / "run")
    assert not (tmp_path / "run").exists()
