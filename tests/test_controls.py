"""Controls sampled properly: random draws seeded by (fold, draw, layer), random heads drawn per (fold, draw) and never
degenerate, label-shuffled and style directions from the right labels (against an independent computation on a tiny
activation tensor), the fit's own rows read back from the cache, and a small validate on the tiny Llama with the new
controls and the new table columns."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import shared_data, write_wikitext_corpus

from lm_eval_iti.artifact import Directions, load_directions
from lm_eval_iti.errors import ITIError
from lm_eval_iti.experiments import controls
from lm_eval_iti.experiments.answer_style import HEDGE_WORDS, is_hedged, style_labels
from lm_eval_iti.experiments.baselines import STUDY_DRAWS, expand_baselines, validate_variants
from lm_eval_iti.select import matched_random_directions

L, H, D = 2, 4, 5


def _fitted() -> Directions:
    """ITI's fit on heads (0, 1), (0, 3), (1, 0): unit directions, sigmas 1, 2, 3, ranked (1, 0) first."""
    heads = {0: torch.tensor([1, 3]), 1: torch.tensor([0])}
    dirs = {0: torch.nn.functional.normalize(torch.ones(2, D), dim=-1), 1: torch.nn.functional.normalize(
        torch.arange(1.0, D + 1).reshape(1, D), dim=-1)}
    sigma = {0: torch.tensor([1.0, 2.0]), 1: torch.tensor([3.0])}
    rank = torch.tensor([[1, 0], [0, 3], [0, 1]] + [[l, h] for l in range(L) for h in range(H)
                                                    if (l, h) not in {(1, 0), (0, 3), (0, 1)}])
    return Directions(L, H, D, heads, dirs, sigma, {"method": "mass-mean"}, torch.rand(L, H), rank)


def _view(degenerate: bool = True) -> controls.FitView:
    """6 questions x 3 answers; head (0, 2) constant (zero direction and sigma), head (1, 3) constant on the sigma
    set only (a direction, but zero sigma)."""
    g = torch.Generator().manual_seed(0)
    n = 18
    probe = torch.randn(n, L, H, D, generator=g)
    sigma = torch.randn(12, L, H, D, generator=g)
    if degenerate:
        probe[:, 0, 2] = 0.7
        sigma[:, 0, 2] = 0.7
        sigma[:, 1, 3] = -0.2
    labels = np.array([1, 0, 0] * 6)
    question_index = np.repeat(np.arange(6), 3)
    answers = ["No, it does not", "It is blue", "Yes"] * 3 + ["It might rain", "Paris", "It depends"] * 3
    return controls.FitView(probe, labels, question_index, answers, sigma)


def _mass_mean(view, pairs, labels) -> np.ndarray:
    """Independent numpy: unit(mean of label-1 rows - mean of label-0 rows) per (layer, head)."""
    x = view.probe.double().numpy()
    out = []
    for layer, head in pairs:
        a = x[:, layer, head]
        v = a[labels == 1].mean(0) - a[labels == 0].mean(0)
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def _by_pair(d: Directions) -> dict[tuple[int, int], tuple[np.ndarray, float]]:
    return {(layer, int(h)): (d.directions[layer][i].double().numpy(), float(d.sigma[layer][i]))
            for layer in d.heads for i, h in enumerate(d.heads[layer].tolist())}


# random draws -------------------------------------------------------------------------------------------------------
def test_matched_random_draws_share_no_vector_across_folds_draws_or_layers():
    fitted = _fitted()
    vectors = []
    for fold, draw in itertools.product(range(3), range(4)):
        control = matched_random_directions(fitted, draw, fold=fold, run_seed=42)
        assert _by_pair(control).keys() == _by_pair(fitted).keys()
        assert all(torch.equal(control.sigma[k], fitted.sigma[k]) for k in fitted.sigma)  # the same shift size
        assert control.metadata["control_fold"] == str(fold) and control.metadata["control_seed"] == str(draw)
        assert torch.equal(control.directions[0], matched_random_directions(fitted, draw, fold=fold,
                                                                            run_seed=42).directions[0])
        vectors += [v for layer in control.directions for v in control.directions[layer]]
    # 12 draws x 3 heads, every vector its own (the old seeding gave fold 0 and fold 1 the same vectors)
    stacked = torch.stack(vectors)
    assert len({tuple(v.tolist()) for v in stacked}) == len(vectors) == 36
    assert (stacked @ stacked.T - torch.eye(36)).abs().max() < 0.999
    assert not torch.equal(matched_random_directions(fitted, 0, run_seed=1).directions[0],
                           matched_random_directions(fitted, 0, run_seed=2).directions[0])


def test_random_heads_are_drawn_per_fold_and_draw_never_degenerate_with_their_own_direction_and_sigma():
    view = _view()
    fitted = _fitted()
    drawn = set()
    for fold, draw in itertools.product(range(2), range(10)):
        d = controls.random_head_directions(fitted, view, fold=fold, draw=draw, run_seed=42)
        pairs = _by_pair(d)
        assert len(pairs) == 3 and not pairs.keys() & {(0, 2), (1, 3)}  # never a zero-sigma head
        drawn.add(tuple(sorted(pairs)))
        expected = _mass_mean(view, list(pairs), view.labels)
        x_sigma = view.sigma.double().numpy()
        for (pair, (unit, sigma)), want in zip(pairs.items(), expected):
            assert np.allclose(unit, want, atol=1e-6)
            projected = x_sigma[:, pair[0], pair[1]] @ want
            assert sigma == pytest.approx(projected.std(ddof=1), rel=1e-5) and sigma > 0
        # top_k keeps the first heads drawn
        order = [tuple(p) for p in d.head_rank[:3].tolist()]
        assert set(order) == set(pairs) and d.top_k(1).selected_heads() == [order[0]]
        assert d.metadata["random_heads"] == "true" and d.metadata["control_fold"] == str(fold)
    assert len(drawn) >= 10  # head sets differ between draws and folds (at most 20 C(6, 3) = 20 sets exist)
    with pytest.raises(ITIError, match="only 6 of 8 heads"):
        controls.random_heads(view, 7, seed=0)


# label-shuffled and style ---------------------------------------------------------------------------------------------
def test_shuffled_labels_permute_within_each_question():
    labels = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1])
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    seen = set()
    for seed in range(40):
        out = controls.shuffled_labels(labels, groups, seed)
        for q in range(3):
            assert sorted(out[groups == q]) == sorted(labels[groups == q])
        seen.add(tuple(out))
    assert len(seen) > 10


def test_label_shuffled_directions_are_mass_means_of_the_shuffled_labels_on_itis_heads():
    from lm_eval_iti.select import SHUFFLE_SALT, draw_seed

    view, fitted = _view(degenerate=False), _fitted()
    directions = set()
    for fold, draw in itertools.product(range(2), range(3)):
        d = controls.label_shuffled_directions(fitted, view, fold=fold, draw=draw, run_seed=42)
        labels = controls.shuffled_labels(view.labels, view.question_index, draw_seed(SHUFFLE_SALT, 42, fold, draw))
        pairs = _by_pair(d)
        assert pairs.keys() == _by_pair(fitted).keys() and d.selected_heads() == fitted.selected_heads()
        for (pair, (unit, sigma)), want in zip(pairs.items(), _mass_mean(view, list(pairs), labels)):
            assert np.allclose(unit, want, atol=1e-6)
            assert sigma == _by_pair(fitted)[pair][1]  # ITI's sigma: the same shift size
        directions.add(tuple(np.round(pairs[(1, 0)][0], 6)))
    assert len(directions) == 6  # a new permutation per (fold, draw)


def test_style_labels_follow_the_documented_word_list():
    hedged = ["No, it does not", "It might rain", "It depends", "I have no comment", "Nothing happens",
              "You can't", "That isn\u2019t true", "NEVER"]
    plain = ["It is blue", "Paris", "Yes", "Notably, it rains", "Cannons fire", "Nowhere-ish"]
    assert all(is_hedged(a) for a in hedged) and "nowhere" in HEDGE_WORDS
    assert [is_hedged(a) for a in plain] == [False, False, False, False, False, True]  # "nowhere" is a word
    assert style_labels(["No", "Yes"]).tolist() == [1, 0]


def test_style_directions_are_mass_means_of_the_style_labels_on_itis_heads():
    view, fitted = _view(degenerate=False), _fitted()
    d = controls.style_directions(fitted, view)
    by_hand = np.array([1, 0, 0] * 3 + [1, 0, 1] * 3)  # "No, it does not", "It might rain", "It depends"
    pairs = _by_pair(d)
    for (pair, (unit, sigma)), want in zip(pairs.items(), _mass_mean(view, list(pairs), by_hand)):
        assert np.allclose(unit, want, atol=1e-6) and sigma == _by_pair(fitted)[pair][1]
    assert d.metadata["method"] == "style" and d.metadata["style_hedged_rows"] == "9"
    plain = controls.FitView(view.probe, view.labels, view.question_index, ["Paris"] * 18, view.sigma)
    with pytest.raises(ITIError, match="all plain"):
        controls.style_directions(fitted, plain)


# the study preset ------------------------------------------------------------------------------------------------------
def test_study_controls_give_the_study_draws():
    names, counts = expand_baselines(("study",))
    assert counts == STUDY_DRAWS and {"random-matched", "random-matched-kl", "random-heads", "label-shuffled",
                                      "style"} <= set(names)
    assert counts["random-matched"] >= 20 and counts["random-matched-kl"] >= 20 and counts["random-heads"] >= 10
    rows = [v.name for v in validate_variants(alpha=5.0, num_heads=3, baselines=("study",))]
    assert sum(r.startswith("random-matched-kl-") for r in rows) == 20 and "random-heads-9" in rows
    assert sum(r.startswith("random-matched-") and "kl" not in r for r in rows) == 20
    assert expand_baselines(("study",), random_draws=30)[1]["random-heads"] == 30
    assert expand_baselines(("random-heads",), random_draws=2)[1]["random-heads"] == 2
    with pytest.raises(ITIError, match="not one of"):
        expand_baselines(("studdy",))


# on the tiny Llama --------------------------------------------------------------------------------------------------
def _config(tiny_model_dir, root, **kw):
    from lm_eval_iti.experiments import ExperimentConfig

    settings = dict(model=str(tiny_model_dir), dtype="float32", device="cpu",
                    data_dir=str(shared_data("truthfulqa", "v0")), num_questions=16,
                    tasks=("truthfulqa_iti_mc1", "truthfulqa_iti_mc2"),
                    corpus=str(write_wikitext_corpus(root / "corpus.raw")), num_docs=3, num_tokens=32,
                    cache_dir=str(root / "cache"), progress=False, bootstrap_iters=0, engine="on")
    settings.update(kw)
    return ExperimentConfig(**settings)


@pytest.fixture(scope="module")
def controlled(tiny_model_dir, tmp_path_factory):
    from lm_eval_iti.experiments import validate

    root = tmp_path_factory.mktemp("controls")
    results = validate(_config(tiny_model_dir, root), root / "run", alpha=6.0, num_heads=3, random_draws=2,
                       baselines=("random-matched", "random-heads", "label-shuffled", "style"))
    return results, root / "run"


def test_the_fit_view_is_what_the_fit_computed_its_directions_from(controlled, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results, out = controlled
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for fold in (0, 1):
        fitted = load_directions(results["folds"]["iti"][fold]["directions"]["path"])
        options = dict(data_dir=str(out / "data"), num_heads=3, num_folds=2, fold=fold, batch_size=16)
        view = controls.fit_view(model, tok, options, cache_dir=str(out.parent / "cache"), collect_all_folds=True)
        assert view.forward_passes == 0  # read from the cache the fit filled
        heads = torch.tensor(fitted.selected_heads())
        unit, sigma = controls.head_directions_and_sigma(view, heads)
        unit = unit / unit.norm(dim=-1, keepdim=True)
        want = _by_pair(fitted)
        for i, pair in enumerate(map(tuple, heads.tolist())):
            assert np.allclose(unit[i].numpy(), want[pair][0], atol=1e-5)
            assert float(sigma[i]) == pytest.approx(want[pair][1], rel=1e-4)
        assert len(view.answers) == len(view.labels) == view.probe.shape[0]


def test_validate_builds_each_control_per_fold_and_draw_from_the_cache(controlled):
    results, out = controlled
    folds = results["folds"]
    files = {name: [load_directions(f["directions"]["path"]) for f in fs] for name, fs in folds.items()
             if name != "baseline"}
    iti = files["iti"]
    for name, (f0, f1) in files.items():
        assert all(bool((s > 0).all()) for d in (f0, f1) for s in d.sigma.values()), name  # no zero-sigma head
        if name == "iti":
            continue
        record = folds[name][0]["directions"]
        assert record["control_forward_passes"] == 0 and record["control_seconds"] >= 0
        # no vector shared between folds
        v0 = torch.cat([f0.directions[k] for k in sorted(f0.directions)])
        v1 = torch.cat([f1.directions[k] for k in sorted(f1.directions)])
        assert v0.shape != v1.shape or not torch.allclose(v0, v1), name
    # 4 draws of 3 of the tiny model's 8 heads: not all the same set (seeded per fold and draw)
    assert len({frozenset(files[f"random-heads-{d}"][f].selected_heads()) for d in (0, 1) for f in (0, 1)}) > 1
    for fold in (0, 1):
        for name in ("label-shuffled-0", "label-shuffled-1", "style"):  # ITI's heads and sigmas
            d = files[name][fold]
            assert d.selected_heads() == iti[fold].selected_heads()
            assert all(torch.equal(d.sigma[k], iti[fold].sigma[k]) for k in d.sigma)
        assert folds["style"][fold]["kl_match"]["target_kl"] > 0  # run at ITI's KL
    rm = [files[f"random-matched-{d}"][0].directions for d in (0, 1)]
    assert not torch.equal(rm[0][min(rm[0])], rm[1][min(rm[1])])


def test_a_small_validate_shows_the_new_columns(controlled):
    results, out = controlled
    table = (out / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model |"))
    assert "| instruction | mc/gen | judge | data | N |" in header and header.endswith("| ΔMC1 | ΔMC2 |")
    iti = next(line for line in table.splitlines() if line.startswith(f"| {results['settings']['model']} | ITI"))
    assert " p=" in iti.split("|")[-2] or " p<" in iti.split("|")[-2]
    for family in ("random-matched", "random-heads", "label-shuffled"):
        assert f"| iti | {family} | 2 | MC2 |" in table
    assert "| style | hedged/negated | MC2 |" in table and "| length | short (≤ " in table
    assert "style directions (hedged vs plain), matched KL" in table
    saved = json.loads((out / "results.json").read_text())
    rows = {(c["row"], c["reference"], c["metric"]) for c in saved["comparisons"]}
    assert ("style", "baseline", "MC2") in rows and ("iti", "label-shuffled", "MC1") in rows
    assert saved["comparison_settings"]["n_resamples"] == 10000 and saved["strata_gains"]
