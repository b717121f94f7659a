"""alpha by side-effect budget, the size-matched random control and single-fold runs, on a tiny Llama."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import shared_data, write_wikitext_corpus

from lm_eval_iti.artifact import load_directions
from lm_eval_iti.experiments import ExperimentConfig, validate
from lm_eval_iti.select import matched_random_directions
from lm_eval_iti.tiny import random_directions

BUDGET = 0.002


@pytest.fixture(scope="module")
def auto_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    config = ExperimentConfig(model=str(tiny_model_dir), dtype="float32", device="cpu",
                              data_dir=str(shared_data("truthfulqa", "v0")), num_questions=12,
                              tasks=("truthfulqa_iti_mc1",), corpus=str(write_wikitext_corpus(root / "corpus.raw")),
                              num_docs=2,
                              num_tokens=16, cache_dir=str(root / "cache"), progress=False, batch_size=16,
                              fit_batch_size=32, kl_budget=BUDGET, folds=(0,))
    out = root / "run"
    results = validate(config, out, alpha="auto", num_heads=3, baselines=("random-matched",), random_draws=2)
    return config, out, results


def test_only_the_requested_fold_is_evaluated(auto_run):
    _, out, results = auto_run
    assert sorted(p.name for p in (out / "folds").glob("*.json")) == [
        "fold_0_alpha_auto.json", "fold_0_baseline.json", "fold_0_iti.json", "fold_0_random-matched-0.json",
        "fold_0_random-matched-1.json"]
    assert {f["fold"] for fs in results["folds"].values() for f in fs} == {0}
    assert "2 folds (seed 42), evaluated on held-out fold 0 only" in (out / "table.md").read_text()


def test_the_chosen_alpha_is_within_budget_and_the_next_one_is_not(auto_run):
    _, out, results = auto_run
    choice = json.loads((out / "folds" / "fold_0_alpha_auto.json").read_text())
    kl = {m["alpha"]: m["kl"] for m in choice["measured"]}
    assert kl[choice["alpha"]] <= BUDGET
    grid = choice["grid"]
    following = grid[grid.index(choice["alpha"]) + 1]
    assert kl[following] > BUDGET
    assert sorted(kl) == [a for a in grid if a <= following]  # the scan stops at the first alpha over budget
    iti = results["folds"]["iti"][0]
    assert iti["alpha_used"] == choice["alpha"] and iti["model_info"]["iti"]["alpha"] == choice["alpha"]
    assert next(r for r in results["rows"] if r["variant"] == "iti")["α"] == f"auto: {choice['alpha']:g}"


def test_random_matched_rows_keep_the_fits_heads_and_sigmas_at_the_same_alpha(auto_run):
    _, out, results = auto_run
    fitted = load_directions(results["folds"]["iti"][0]["directions"]["path"])
    paths = set()
    for draw in (0, 1):
        row = results["folds"][f"random-matched-{draw}"][0]
        assert row["alpha_used"] == results["folds"]["iti"][0]["alpha_used"]
        control = load_directions(row["directions"]["path"])
        paths.add(row["directions"]["path"])
        assert control.selected_heads() == fitted.selected_heads()
        for layer in fitted.heads:
            assert torch.equal(control.sigma[layer], fitted.sigma[layer])
            assert not torch.allclose(control.directions[layer], fitted.directions[layer])
        assert row["leak_check"]["overlap"] == 0
    assert len(paths) == 2


def test_a_rerun_resumes_everything(auto_run):
    config, out, _ = auto_run
    again = validate(config, out, alpha="auto", num_heads=3, baselines=("random-matched",), random_draws=2)
    assert again["evaluations_this_process"] == 0


def test_matched_random_directions_have_the_fitted_shift_size(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    fitted = random_directions(model, num_heads=5, seed=2)
    for orthogonal in (False, True):
        control = matched_random_directions(fitted, seed=7, orthogonal=orthogonal)
        a, b = fitted.shift_vectors(3.0), control.shift_vectors(3.0)
        assert a.keys() == b.keys()
        for layer in a:
            heads_a, heads_b = a[layer].reshape(4, 16), b[layer].reshape(4, 16)
            assert torch.allclose(heads_a.norm(dim=1), heads_b.norm(dim=1), atol=1e-5)
            if orthogonal:
                dots = (fitted.directions[layer] * control.directions[layer]).sum(-1)
                assert dots.abs().max() < 1e-6
    assert not torch.equal(matched_random_directions(fitted, 1).directions[next(iter(fitted.heads))],
                           matched_random_directions(fitted, 2).directions[next(iter(fitted.heads))])
    assert dataclasses.asdict(matched_random_directions(fitted, 1))["metadata"]["method"] == "random-matched"
