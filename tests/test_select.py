"""Head selection, directions and sigma as pure tensor functions, each checked against a hand/NumPy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_eval_iti.errors import ITIError
from lm_eval_iti.probes import fit_probes
from lm_eval_iti.select import (compute_directions, compute_sigma, head_activations, mass_mean_directions, rank_heads,
                                select_heads, split_train_val)


def planted(n=800, L=3, H=4, d=16, heads=((2, 1), (0, 3), (1, 0)), strength=(2.0, 1.2, 0.8), seed=0):
    """Isotropic noise; rows labelled 1 are shifted by +strength*u, rows labelled 0 by -strength*u on planted heads."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.45).long()
    acts = torch.randn(n, L, H, d, generator=g)
    truth = {}
    for (layer, head), s in zip(heads, strength):
        u = torch.randn(d, generator=g)
        u /= u.norm()
        truth[(layer, head)] = u
        acts[:, layer, head] += (2 * y[:, None].float() - 1) * s * u
    return acts.half(), y.numpy(), truth


def test_planted_direction_heads_selected_and_direction_recovered():
    acts, y, truth = planted()
    rows = np.arange(len(y))
    train, val = rows[:600].tolist(), rows[600:].tolist()
    probes = fit_probes(acts, y, train, val)
    selected = select_heads(probes.accuracy, k=3)
    # the planted heads, strongest signal first
    assert [tuple(p) for p in selected.tolist()] == [(2, 1), (0, 3), (1, 0)]
    for method in ("mass-mean", "probe"):
        dirs = compute_directions(method, selected, x=head_activations(acts, selected, train + val), labels=y,
                                  probe_coef=probes.coef)
        for row, (layer, head) in enumerate(selected.tolist()):
            cos = float(torch.dot(dirs[row].double(), truth[(layer, head)].double()))
            assert cos >= 0.99 if method == "mass-mean" else cos >= 0.95, (method, layer, head, cos)
        assert torch.allclose(dirs.norm(dim=1), torch.ones(3), atol=1e-6)


def test_rank_heads_ties_broken_by_layer_then_head():
    acc = torch.tensor([[0.5, 0.9, 0.7], [0.9, 0.7, 0.9]])
    assert rank_heads(acc).tolist() == [[0, 1], [1, 0], [1, 2], [0, 2], [1, 1], [0, 0]]
    assert select_heads(acc, 2).tolist() == [[0, 1], [1, 0]]


def test_rank_heads_matches_a_python_sort():
    g = torch.Generator().manual_seed(3)
    acc = (torch.randint(0, 5, (6, 7), generator=g) / 4).float()  # many ties
    expected = sorted(((l, h) for l in range(6) for h in range(7)), key=lambda p: (-float(acc[p]), p[0], p[1]))
    assert [tuple(p) for p in rank_heads(acc).tolist()] == expected


def test_random_heads_seeded_distinct_and_checked():
    acc = torch.rand(4, 5)
    a = select_heads(acc, 6, seed=1, random_heads=True)
    assert torch.equal(a, select_heads(acc, 6, seed=1, random_heads=True))
    assert not torch.equal(a, select_heads(acc, 6, seed=2, random_heads=True))
    assert len({tuple(p) for p in a.tolist()}) == 6
    assert ((a[:, 0] < 4) & (a[:, 1] < 5)).all()
    with pytest.raises(ITIError, match="layers x heads"):
        select_heads(acc, 21)


def test_mass_mean_and_sigma_against_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 8, generator=g)
    y = (torch.rand(50, generator=g) > 0.5).numpy()
    xn = x.double().numpy()
    expected = xn[y].mean(0) - xn[~y].mean(0)
    assert np.allclose(mass_mean_directions(x, y).numpy(), expected, atol=1e-12)
    dirs = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    proj = np.einsum("nkd,kd->nk", xn, dirs.double().numpy())
    assert np.allclose(compute_sigma(x, dirs, ddof=1).numpy(), proj.std(axis=0, ddof=1), rtol=1e-6)
    assert np.allclose(compute_sigma(x, dirs, ddof=0).numpy(), proj.std(axis=0, ddof=0), rtol=1e-6)


def test_mass_mean_needs_both_classes():
    with pytest.raises(ITIError, match="true and false"):
        mass_mean_directions(torch.randn(5, 2, 4), np.ones(5, dtype=bool))


def test_random_direction_is_seeded_unit():
    heads = torch.tensor([[0, 1], [1, 2]])
    x = torch.randn(4, 2, 8)
    a = compute_directions("random", heads, x=x, seed=5)
    assert torch.equal(a, compute_directions("random", heads, x=x, seed=5))
    assert torch.allclose(a.norm(dim=1), torch.ones(2))


def test_split_train_val_question_level():
    questions = list(range(3, 103))
    train, val = split_train_val(questions, 0.2, seed=7)
    assert len(train) == 80 and len(val) == 20
    assert not set(train) & set(val) and set(train) | set(val) == set(questions)
    assert (train, val) == split_train_val(list(reversed(questions)), 0.2, seed=7)  # input order does not matter
    assert (train, val) != split_train_val(questions, 0.2, seed=8)
    with pytest.raises(ITIError):
        split_train_val([5], 0.2)
