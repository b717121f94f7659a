"""From probe accuracies and activations to heads, directions and sigmas: pure functions on tensors.

- ``split_train_val``: questions of the training fold -> probe-train / probe-val questions (seeded, question-level;
  ``int(n * (1 - val_ratio))`` train questions, as the reference).
- ``rank_heads``: every (layer, head), best first: validation accuracy descending, ties by layer then head ascending.
- ``select_heads``: the top K, or K heads drawn with the seed (the random-heads baseline).
- ``compute_directions``: ``mass-mean`` (mean of true minus mean of false answers, over train + val questions of the
  training fold), ``probe`` (the head's probe weights) or ``random`` (a seeded Gaussian); unit-normalised.
- ``all_head_directions``: the same directions for every head at once (``--head-selection effect`` scores them all).
- ``compute_sigma``: the standard deviation (ddof 1, as the reference's pyvene path) of the sigma activations projected on
  each unit direction; callers pass only rows of training questions.
- ``draw_seed`` / ``matched_random_directions``: the random controls' seeds (from run seed, fold, draw and layer, so
  no draw is shared between folds) and the size-matched random directions on a fit's heads.
"""

from __future__ import annotations

import numpy as np
import torch

from .choices import METHODS
from .errors import ITIError


def split_train_val(question_indices: list[int], val_ratio: float = 0.2, seed: int = 42) -> tuple[list[int], list[int]]:
    """Seeded question-level split of the training fold's questions into (probe-train, probe-val), each sorted."""
    if not 0.0 < val_ratio < 1.0:
        raise ITIError(f"val_ratio={val_ratio} must be between 0 and 1 (exclusive)")
    questions = sorted(int(q) for q in question_indices)
    n_train = int(len(questions) * (1 - val_ratio))
    if n_train < 1 or n_train >= len(questions):
        raise ITIError(f"val_ratio={val_ratio} leaves an empty probe-train or probe-validation split of "
                       f"{len(questions)} questions")
    order = np.random.default_rng(seed).permutation(len(questions))
    train = sorted(questions[i] for i in order[:n_train])
    val = sorted(questions[i] for i in order[n_train:])
    return train, val


def rank_heads(accuracy: torch.Tensor) -> torch.Tensor:
    """int64 [L*H, 2] (layer, head) pairs by accuracy descending, then layer, then head (deterministic ties)."""
    L, H = accuracy.shape
    acc = accuracy.detach().double().cpu().reshape(-1).numpy()
    flat = np.arange(L * H)
    order = np.lexsort((flat, -acc))  # last key first: accuracy desc, then flat index (= layer, head) asc
    return torch.tensor(np.stack([order // H, order % H], axis=1), dtype=torch.int64)


def select_heads(accuracy: torch.Tensor, k: int, seed: int = 42, random_heads: bool = False) -> torch.Tensor:
    """int64 [k, 2] (layer, head): the top k of ``rank_heads``, or k seeded random heads."""
    L, H = accuracy.shape
    if not 1 <= k <= L * H:
        raise ITIError(f"num_heads={k} must be between 1 and layers x heads = {L} x {H} = {L * H}")
    if random_heads:
        flat = np.random.default_rng(seed).permutation(L * H)[:k]
        return torch.tensor(np.stack([flat // H, flat % H], axis=1), dtype=torch.int64)
    return rank_heads(accuracy)[:k]


def ranked_selection(accuracy: torch.Tensor, k: int, seed: int = 42, random_heads: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected [k, 2], head_rank [L*H, 2]): the k heads of ``select_heads``, then every other head by rank."""
    selected = select_heads(accuracy, k, seed, random_heads)
    chosen = {tuple(p) for p in selected.tolist()}
    rest = [p for p in rank_heads(accuracy).tolist() if tuple(p) not in chosen]
    return selected, torch.cat([selected, torch.tensor(rest, dtype=torch.int64).reshape(-1, 2)])


def every_head(num_layers: int, num_heads: int) -> torch.Tensor:
    """int64 [L*H, 2]: every (layer, head), layer-major."""
    flat = torch.arange(num_layers * num_heads)
    return torch.stack([flat // num_heads, flat % num_heads], 1)


def all_head_directions(method: str, num_layers: int, num_heads: int, *, x: torch.Tensor | None = None, labels=None,
                        probe_coef: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit directions float32 [L, H, d], live bool [L, H]) of EVERY head, as ``compute_directions`` would give them
    if the head were selected; a head whose raw direction is zero (e.g. two identical class means) is not live and
    gets a zero row instead of an error. x: [n, L*H, d] activations of every head."""
    heads = every_head(num_layers, num_heads)
    if method == "mass-mean":
        raw = mass_mean_directions(x, labels)
    elif method == "probe":
        raw = probe_coef.reshape(num_layers * num_heads, -1).double()
    else:  # a random direction's effect says nothing about the head
        raise ITIError(f"head_selection='effect' needs method mass-mean or probe, not {method!r}")
    norms = raw.norm(dim=-1)
    live = norms > 1e-9 * float(norms.max()) if len(norms) else norms > 0
    unit = torch.where(live[:, None], raw / norms.clamp_min(1e-300)[:, None], torch.zeros_like(raw)).float()
    return unit.view(num_layers, num_heads, -1), live.view(num_layers, num_heads)


def _unit(v: torch.Tensor, what: str, heads: torch.Tensor) -> torch.Tensor:
    norms = v.norm(dim=-1, keepdim=True)
    zero = (norms.squeeze(-1) == 0).nonzero().flatten().tolist()
    if zero:
        layer, head = heads[zero[0]].tolist()
        raise ITIError(f"{what} direction of head (layer {layer}, head {head}) is zero: cannot normalise it")
    return v / norms


def head_activations(acts: torch.Tensor, heads: torch.Tensor, rows=None) -> torch.Tensor:
    """float32 [n, K, d]: the selected heads' activations (all rows, or ``rows``)."""
    if not isinstance(acts, torch.Tensor):  # a streaming view (collect.CachedActivations): reads only these layers
        return acts.head_activations(heads, rows)
    x = acts if rows is None else acts[torch.as_tensor(np.asarray(rows, dtype=np.int64))]
    return x[:, heads[:, 0], heads[:, 1]].float()


def mass_mean_directions(x: torch.Tensor, labels) -> torch.Tensor:
    """[K, d]: mean over true rows minus mean over false rows, per head (not normalised). x: [n, K, d]."""
    y = torch.as_tensor(np.asarray(labels)).bool()
    if y.numel() != x.shape[0]:
        raise ValueError(f"{y.numel()} labels for {x.shape[0]} rows")
    if not bool(y.any()) or bool(y.all()):
        raise ITIError(f"mass-mean needs true and false answers; the training rows have only class {int(y[0])}")
    return x[y].double().mean(0) - x[~y].double().mean(0)


def compute_directions(method: str, heads: torch.Tensor, *, x: torch.Tensor | None = None, labels=None,
                       probe_coef: torch.Tensor | None = None, seed: int = 42) -> torch.Tensor:
    """float32 [K, d] unit directions for the selected ``heads`` ([K, 2])."""
    if method == "mass-mean":
        raw = mass_mean_directions(x, labels)
    elif method == "probe":
        raw = probe_coef[heads[:, 0], heads[:, 1]].double()
    elif method == "random":
        d = x.shape[-1] if x is not None else probe_coef.shape[-1]
        g = torch.Generator().manual_seed(int(seed))
        raw = torch.randn(len(heads), d, generator=g, dtype=torch.float64)
    else:
        raise ITIError(f"method {method!r} is not one of {', '.join(METHODS)}")
    return _unit(raw, method, heads).float()


def compute_sigma(x: torch.Tensor, directions: torch.Tensor, ddof: int = 1) -> torch.Tensor:
    """float32 [K]: std (with ``ddof``) over rows of x [n, K, d] projected on the unit directions [K, d]."""
    if x.shape[0] <= ddof:
        raise ITIError(f"sigma needs more than {ddof} activation rows, got {x.shape[0]}")
    proj = torch.einsum("nkd,kd->nk", x.double(), directions.double())
    return proj.std(dim=0, correction=ddof).float()


def draw_seed(*key: int) -> int:
    """A seed for torch/numpy from integer keys (e.g. run seed, fold, draw, layer): numpy's SeedSequence mixes them,
    so keys that differ in any part give unrelated streams (no arithmetic like ``draw * 100003 + layer`` can collide)."""
    if any(int(k) < 0 for k in key):
        raise ITIError(f"draw_seed{tuple(key)}: keys must be non-negative integers")
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> 1)


# salts that keep the random streams of different controls apart (same run seed, fold and draw)
MATCHED_SALT, HEADS_SALT, SHUFFLE_SALT = 1, 2, 3


def random_unit_directions(shape: tuple[int, int], seed: int, orthogonal_to: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [K, d] seeded Gaussian unit vectors; with ``orthogonal_to`` ([K, d]) each row's component along the
    matching row is projected out first (a control with no share of the fitted direction)."""
    g = torch.Generator().manual_seed(int(seed))
    raw = torch.randn(*shape, generator=g, dtype=torch.float64)
    if orthogonal_to is not None:
        u = orthogonal_to.double() / orthogonal_to.double().norm(dim=-1, keepdim=True)
        raw = raw - (raw * u).sum(-1, keepdim=True) * u
    return (raw / raw.norm(dim=-1, keepdim=True)).float()


def matched_random_directions(directions, seed: int, orthogonal: bool = False, *, fold: int = 0, run_seed: int = 0):
    """A random-direction control matched in size: the same heads and the same sigmas as ``directions`` (so the same
    alpha * sigma shift norm per head at any alpha), with seeded random unit directions in place of the fitted ones.

    ``seed`` is the draw; each layer's vectors come from ``draw_seed(run_seed, fold, draw, layer)``, so no vector is
    shared between folds, draws or layers (fold 0 and fold 1 of draw 0 are different draws)."""
    from dataclasses import replace

    new_dirs = {}
    for layer in sorted(directions.heads):
        fitted = directions.directions[layer]
        layer_seed = draw_seed(MATCHED_SALT, run_seed, fold, seed, layer)
        new_dirs[layer] = random_unit_directions(tuple(fitted.shape), layer_seed, fitted if orthogonal else None)
    meta = dict(directions.metadata, method="random-matched" + ("-orthogonal" if orthogonal else ""),
                control_seed=str(seed), control_fold=str(fold), control_run_seed=str(run_seed),
                control_seeding="SeedSequence(run seed, fold, draw, layer)",
                control_of=directions.metadata.get("method", ""))
    return replace(directions, directions=new_dirs, metadata=meta, source=f"{directions.source} (random control)")
