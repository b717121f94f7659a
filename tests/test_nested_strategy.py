"""validate --alpha select with the direction type and the head selection nested too (``--baselines nested-strategy``):
the search runs on inner folds of the training questions only, the held-out row uses the chosen fit, and the row is
compared with ITI's own row question by question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data

from lm_eval_iti.errors import ITIError


def _config(tiny_model_dir, tmp_path):
    from lm_eval_iti.experiments import ExperimentConfig

    return ExperimentConfig(model=str(tiny_model_dir), dtype="float32", device="cpu",
                            data_dir=str(shared_data("truthfulqa", "v0")), num_questions=24,
                            tasks=("truthfulqa_iti_mc2",), side_effects=False, cache_dir=str(tmp_path / "cache"),
                            progress=False, folds=(0,), bootstrap_iters=0, engine="on")


def test_nested_strategy_searches_method_and_head_selection_on_inner_folds(tiny_model_dir, tmp_path, monkeypatch):
    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.experiments import validate

    config = _config(tiny_model_dir, tmp_path)
    selection = {"alphas": [-8.0, 4.0], "num_heads": [1, 3], "by": "MC2", "inner_folds": 2}
    results = validate(config, tmp_path / "run", alpha="select", num_heads=3, selection=selection,
                       baselines=("nested-strategy",), effect_check_heads=4, effect_questions=8)
    iti, strategy = results["folds"]["iti"][0], results["folds"]["iti-strategy"][0]
    grid = strategy["selection"]["grid"]
    assert len(grid) == 2 * 2 * 2 * 2  # methods x head selections x alphas x K
    assert {(g["method"], g["head_selection"]) for g in grid} == {(m, h) for m in ("mass-mean", "probe")
                                                                 for h in ("probe", "effect")}
    best = max(grid, key=lambda g: g["mean"])
    chosen = strategy["selection"]
    assert (chosen["method"], chosen["head_selection"], chosen["alpha"], chosen["num_heads"]) == \
        (best["method"], best["head_selection"], best["alpha"], best["num_heads"])
    # ITI's own grid is the strategy grid's (mass-mean, probe) part: the same inner fits score the same
    for point in iti["selection"]["grid"]:
        twin = next(g for g in grid if (g["method"], g["head_selection"], g["alpha"], g["num_heads"])
                    == ("mass-mean", "probe", point["alpha"], point["num_heads"]))
        assert twin["per_inner_fold"] == pytest.approx(point["per_inner_fold"], abs=1e-9)
    # the held-out row steers with a fit of the chosen kind, fitted on the training folds only
    fitted = load_directions(strategy["directions"]["path"])
    assert fitted.metadata["method"] == chosen["method"]
    assert fitted.metadata["head_selection"] == chosen["head_selection"]
    assert strategy["alpha_used"] == chosen["alpha"] and strategy["num_heads_used"] == chosen["num_heads"]
    assert strategy["leak_check"]["overlap"] == 0
    # every effect fit of the inner folds recorded its check against measured one-head effects
    fits = [f for inner in chosen["inner_folds"] for f in inner["fits"]]
    assert len(fits) == 2 * 4
    for f in fits:
        inner_dirs = load_directions(f["directions"])
        assert inner_dirs.metadata["head_selection"] == f["head_selection"]
        assert (f["effect_check"] is not None) == (f["head_selection"] == "effect")
        if f["effect_check"]:
            assert len(f["effect_check"]["heads"]) == 4 and int(inner_dirs.metadata["effect_questions"]) <= 8
    # head to head with ITI's row, paired over the same questions
    pair = next(c for c in results["comparisons"] if c["row"] == "iti-strategy" and c["reference"] == "iti")
    assert pair["metric"] == "MC2" and pair["n"] == len(iti["question_ids"]["truthfulqa_iti_mc2"])
    iti_row = next(r for r in results["rows"] if r["variant"] == "iti")["metrics"]["MC2"]["mean"]
    strategy_row = next(r for r in results["rows"] if r["variant"] == "iti-strategy")["metrics"]["MC2"]["mean"]
    assert pair["delta"] == pytest.approx(strategy_row - iti_row, abs=1e-9)
    table = (tmp_path / "run" / "table.md").read_text()
    assert "Head to head" in table and "| iti-strategy | iti | MC2 |" in table
    assert "The nested-strategy row" in table and "**yes**" in table.split("The nested-strategy row")[1]
    # resume: nothing is recomputed
    again = validate(config, tmp_path / "run", alpha="select", num_heads=3, selection=selection,
                     baselines=("nested-strategy",), effect_check_heads=4, effect_questions=8)
    assert again["evaluations_this_process"] == 0
    assert again["folds"]["iti-strategy"][0]["selection"] == chosen
    # a selection interrupted after its fits reuses them (no refit, no effect ranking again) and chooses the same
    import lm_eval_iti.fit as fit_module

    for name in ("fold_0_iti-strategy_select.json", "fold_0_iti-strategy.json"):
        (tmp_path / "run" / "folds" / name).unlink()
    real = fit_module.fit_and_save

    def no_inner_refit(model, out, **kw):
        assert "select" not in Path(out).parts, f"refitted {out}"
        return real(model, out, **kw)

    monkeypatch.setattr(fit_module, "fit_and_save", no_inner_refit)
    resumed = validate(config, tmp_path / "run", alpha="select", num_heads=3, selection=selection,
                       baselines=("nested-strategy",), effect_check_heads=4, effect_questions=8)
    assert resumed["folds"]["iti-strategy"][0]["selection"]["grid"] == grid


def test_nested_strategy_needs_alpha_select_and_known_names():
    from lm_eval_iti.experiments.baselines import check_selection, validate_variants

    with pytest.raises(ITIError, match="nested-strategy needs --alpha select"):
        validate_variants(alpha=5.0, baselines=("nested-strategy",))
    base = {"alphas": [1.0], "num_heads": [1]}
    with pytest.raises(ITIError, match="--select-methods 'random'"):
        check_selection(dict(base, methods=["random"]), 4)
    with pytest.raises(ITIError, match="--select-head-selections 'greedy'"):
        check_selection(dict(base, head_selections=["greedy"]), 4)
    # searching only the row's own kind is the plain alpha-and-K selection (described as before: resume keys)
    assert "methods" not in check_selection(dict(base, methods=["mass-mean"], head_selections=["probe"]), 4)


def test_probe_rows_describe_their_fit_as_before_head_selection_existed():
    """Saved fold results are keyed by the row's description: ITI's probe ranking must not change it."""
    from lm_eval_iti.experiments.baselines import FitSpec

    assert FitSpec("mass-mean", False, 48).describe() == {"method": "mass-mean", "random_heads": False,
                                                          "num_heads": 48, "name": "mass-mean-k48"}
    effect = FitSpec("mass-mean", False, 48, "effect").describe()
    assert effect["name"] == "mass-mean-effect-k48" and effect["head_selection"] == "effect"
    assert json.dumps(effect)  # JSON-safe: it goes into the settings hash


def test_a_kind_whose_every_point_is_over_the_kl_budget_is_never_scored(tiny_model_dir, tmp_path, monkeypatch):
    """KL is measured before scoring: with probe-weight directions costing more than the budget at every point, the
    selection scores only mass-mean points and chooses among them (SmolLM2's effect fits hit this)."""
    from lm_eval_iti.experiments import validate
    from lm_eval_iti.experiments.session import ModelSession

    class FakeMeter:
        def __call__(self, directions, alpha):
            return 1.0 if directions.metadata["method"] == "probe" else 0.01

        def describe(self):
            return {"what": "fake"}

    monkeypatch.setattr(ModelSession, "kl_meter", lambda self: FakeMeter())
    config = _config(tiny_model_dir, tmp_path)
    selection = {"alphas": [2.0, 4.0], "num_heads": [1, 3], "by": "MC2", "inner_folds": 2, "kl_budget": 0.5,
                 "methods": ["mass-mean", "probe"]}
    results = validate(config, tmp_path / "run", alpha="select", num_heads=3, selection=selection)
    chosen = results["folds"]["iti"][0]["selection"]
    for point in chosen["grid"]:
        assert (point["mean"] is None) == (point["method"] == "probe")
        assert point["kl_mean"] == (1.0 if point["method"] == "probe" else 0.01)
    assert chosen["method"] == "mass-mean"
    assert len(chosen["inner_folds"][0]["fits"]) == 2  # both kinds were fitted, one was never scored
