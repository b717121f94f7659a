"""Controls built from a fit's own cached activations (no forward pass): random heads, label-shuffled and style
directions for validate's control rows.

Every builder starts from ITI's fitted ``Directions`` of a fold and the ``FitView`` of that fold (the probe-set
activations of the fit's training questions, their true/false labels, question indices and answer texts, and the
sigma-set activations), which ``fit_view`` reads back from the activation cache the fit filled:

- ``random_head_directions``: K heads drawn per (fold, draw) among the heads whose mass-mean direction and sigma
  are not degenerate (zero), each with the method's own mass-mean direction and its own sigma, as fit-directions
  computes them for heads it selects.
- ``label_shuffled_directions``: mass-mean directions on ITI's heads from the true/false labels permuted within
  each question (per (fold, draw)); ITI's sigmas (the same shift size).
- ``style_directions``: mass-mean directions on ITI's heads from labels that mark hedged or negated answers
  (``answer_style.HEDGE_WORDS``) instead of true ones; ITI's sigmas (validate runs it at ITI's KL).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import ITIError
from ..select import HEADS_SALT, SHUFFLE_SALT, compute_sigma, draw_seed, mass_mean_directions
from .answer_style import HEDGE_WORDS, style_labels


def shuffled_labels(labels, question_index, seed: int) -> np.ndarray:
    """``labels`` permuted within each question (seeded): every question keeps its count of true answers, but which
    of its answers is true is random."""
    labels = np.asarray(labels)
    groups = np.asarray(question_index)
    if labels.shape != groups.shape:
        raise ITIError(f"{labels.size} labels for {groups.size} question indices")
    rng = np.random.default_rng(seed)
    out = labels.copy()
    for q in np.unique(groups):
        rows = np.flatnonzero(groups == q)
        out[rows] = labels[rows[rng.permutation(rows.size)]]
    return out


@dataclass
class FitView:
    """What a fold's fit saw, in the fit's own row order: probe-set activations [n, L, H, d] of the training
    questions (train + val), their labels, question indices and answer texts; sigma-set activations [m, L, H, d]."""

    probe: torch.Tensor
    labels: np.ndarray
    question_index: np.ndarray
    answers: list[str]
    sigma: torch.Tensor
    sigma_ddof: int = 1
    forward_passes: int = 0  # made to read the activations (0 when the fit filled the cache)
    seconds: float = 0.0  # to read them

    def on_heads(self, heads: torch.Tensor, which: str = "probe") -> torch.Tensor:
        """float32 [rows, K, d] of the (layer, head) pairs ``heads`` [K, 2]."""
        acts = self.probe if which == "probe" else self.sigma
        return acts[:, heads[:, 0], heads[:, 1]].float()


def fit_view(model, tokenizer, fit_options: dict, *, revision: str | None = None, cache_dir=None,
             collect_all_folds: bool = False, progress: bool = False) -> FitView:
    """The ``FitView`` of the fit with ``fit_options`` (fit.FitConfig fields), through fit-directions' own stages, so
    its rows are the rows that fit computed its directions from; activations come from the cache (``cache_dir``:
    None = the default cache, as ``fit_and_save``) and cost no forward pass once the fit has run."""
    from ..collect import default_cache_dir
    from ..fit import build_prompt_sets, collect_stage, load_and_split, make_config

    cfg = make_config(**fit_options)
    data = load_and_split(cfg)
    prompts = build_prompt_sets(cfg, data, tokenizer)
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__  # as fit._model_and_tokenizer
    acts = collect_stage(model, tokenizer, cfg, prompts, model_name=name, revision=revision,
                         cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
                         collect_all_folds=collect_all_folds, progress=progress)
    fit_rows = prompts.mc_set.rows_of_questions(data.fit_questions)  # every row: mc_set holds training questions
    sigma_rows = prompts.sigma_set.rows_of_questions(data.fit_questions)
    answers_all = [c for doc in data.mc_docs for c in doc["mc2_targets"]["choices"]]
    answers = [answers_all[prompts.probe_rows[r]] for r in fit_rows]
    return FitView(_rows(acts.probe, fit_rows), np.asarray(prompts.labels)[fit_rows],
                   np.asarray(prompts.mc_set.question_index)[fit_rows], answers, _rows(acts.sigma, sigma_rows),
                   cfg.sigma_ddof, sum(s.forward_passes for s in acts.stats.values()))


def _rows(acts: torch.Tensor, rows: list[int]) -> torch.Tensor:
    return acts if rows == list(range(len(acts))) else acts[torch.as_tensor(rows, dtype=torch.long)]


# directions on given heads ------------------------------------------------------------------------------------------
def _ranked_heads(directions) -> torch.Tensor:
    """int64 [K, 2]: the file's heads in head_rank order (top_k keeps a prefix of this order)."""
    return torch.tensor(directions.selected_heads(), dtype=torch.int64).reshape(-1, 2)


def unit_mass_mean(x: torch.Tensor, labels, heads: torch.Tensor, what: str) -> torch.Tensor:
    """float32 [K, d] unit mass-mean directions; one line naming the head when a direction is zero."""
    raw = mass_mean_directions(x, labels)
    norms = raw.norm(dim=-1)
    if bool((norms == 0).any()):
        layer, head = heads[int((norms == 0).nonzero()[0])].tolist()
        raise ITIError(f"{what}: the direction of head (layer {layer}, head {head}) is zero")
    return (raw / norms[:, None]).float()


def with_directions(fitted, heads: torch.Tensor, unit: torch.Tensor, sigma: torch.Tensor | None, metadata: dict,
                    head_rank: torch.Tensor | None = None):
    """A ``Directions`` like ``fitted`` on ``heads`` [K, 2] with ``unit`` [K, d] and ``sigma`` [K] (None: the fitted
    sigma of each head, which must be one of ``fitted``'s)."""
    by_layer: dict[int, list[int]] = {}
    for i, (layer, _) in enumerate(heads.tolist()):
        by_layer.setdefault(layer, []).append(i)
    new_heads, new_dirs, new_sigma = {}, {}, {}
    for layer, rows in sorted(by_layer.items()):
        rows.sort(key=lambda i: int(heads[i, 1]))  # within a layer by head, as fit writes them
        idx = torch.tensor(rows, dtype=torch.long)
        new_heads[layer] = heads[idx, 1].clone()
        new_dirs[layer] = unit[idx].float().clone()
        if sigma is None:
            fitted_heads = fitted.heads[layer].tolist()
            new_sigma[layer] = fitted.sigma[layer][[fitted_heads.index(int(h)) for h in new_heads[layer]]].clone()
        else:
            new_sigma[layer] = sigma[idx].float().clone()
    return replace(fitted, heads=new_heads, directions=new_dirs, sigma=new_sigma,
                   metadata=dict(fitted.metadata, **metadata),
                   head_rank=fitted.head_rank if head_rank is None else head_rank)


def label_shuffled_directions(fitted, view: FitView, *, fold: int, draw: int, run_seed: int = 0):
    """Mass-mean directions on ``fitted``'s heads from labels permuted within each question (seed: run seed, fold,
    draw), with ``fitted``'s sigmas."""
    heads = _ranked_heads(fitted)
    labels = shuffled_labels(view.labels, view.question_index, draw_seed(SHUFFLE_SALT, run_seed, fold, draw))
    unit = unit_mass_mean(view.on_heads(heads), labels, heads, "label-shuffled control")
    meta = {"method": "label-shuffled", "control_of": fitted.metadata.get("method", ""), "control_seed": str(draw),
            "control_fold": str(fold), "control_run_seed": str(run_seed)}
    return with_directions(fitted, heads, unit, None, meta)


def style_directions(fitted, view: FitView):
    """Mass-mean directions on ``fitted``'s heads from hedged/negated (1) against plain (0) answers, with
    ``fitted``'s sigmas."""
    labels = style_labels(view.answers)
    if labels.min() == labels.max():
        raise ITIError("style control: the training answers are all "
                       f"{'hedged or negated' if labels[0] else 'plain'}; no style direction to fit")
    heads = _ranked_heads(fitted)
    unit = unit_mass_mean(view.on_heads(heads), labels, heads, "style control")
    meta = {"method": "style", "control_of": fitted.metadata.get("method", ""),
            "style_words": ",".join(HEDGE_WORDS) + ",*n't", "style_hedged_rows": str(int(labels.sum())),
            "style_rows": str(labels.size)}
    return with_directions(fitted, heads, unit, None, meta)


def head_directions_and_sigma(view: FitView, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw mass-mean directions [K, d] float64, sigma [K] along their unit vectors; 0 where the direction is 0)."""
    raw = mass_mean_directions(view.on_heads(heads), view.labels)
    norms = raw.norm(dim=-1, keepdim=True)
    unit = torch.where(norms > 0, raw / norms.clamp_min(1e-300), torch.zeros_like(raw))
    return raw, compute_sigma(view.on_heads(heads, "sigma"), unit.float(), view.sigma_ddof)


def random_heads(view: FitView, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(heads [k, 2] in draw order, unit directions [k, d], sigma [k], heads skipped as degenerate): heads taken in a
    seeded random order, skipping any whose mass-mean direction or sigma is zero (or not finite)."""
    _, L, H, _ = view.probe.shape
    if not 1 <= k <= L * H:
        raise ITIError(f"random heads: k={k} must be between 1 and layers x heads = {L * H}")
    order = np.random.default_rng(seed).permutation(L * H)
    kept_heads, kept_dirs, kept_sigma, skipped, start = [], [], [], 0, 0
    while sum(len(h) for h in kept_heads) < k and start < L * H:
        batch = order[start:start + k - sum(len(h) for h in kept_heads)]
        start += batch.size
        heads = torch.tensor(np.stack([batch // H, batch % H], axis=1), dtype=torch.int64)
        raw, sigma = head_directions_and_sigma(view, heads)
        norms = raw.norm(dim=-1)
        good = (norms > 0) & torch.isfinite(norms) & (sigma > 0) & torch.isfinite(sigma)
        skipped += int((~good).sum())
        kept_heads.append(heads[good])
        kept_dirs.append((raw[good] / norms[good, None]).float())
        kept_sigma.append(sigma[good])
    heads = torch.cat(kept_heads)
    if len(heads) < k:
        raise ITIError(f"random heads: only {len(heads)} of {L * H} heads have a nonzero direction and sigma; "
                       f"cannot draw {k}")
    return heads[:k], torch.cat(kept_dirs)[:k], torch.cat(kept_sigma)[:k], skipped


def random_head_directions(fitted, view: FitView, *, fold: int, draw: int, run_seed: int = 0):
    """As many random heads as ``fitted`` holds, drawn per (run seed, fold, draw) among non-degenerate heads, each
    with its own mass-mean direction and sigma; head_rank lists them in draw order (top_k(k) = the first k drawn)."""
    k = fitted.num_selected
    heads, unit, sigma, skipped = random_heads(view, k, draw_seed(HEADS_SALT, run_seed, fold, draw))
    drawn = {tuple(p) for p in heads.tolist()}
    rest = [p for p in fitted.head_rank.tolist() if tuple(p) not in drawn] if fitted.head_rank is not None else []
    rank = torch.cat([heads, torch.tensor(rest, dtype=torch.int64).reshape(-1, 2)])
    meta = {"method": "mass-mean", "random_heads": "true", "control_seed": str(draw), "control_fold": str(fold),
            "control_run_seed": str(run_seed), "control_skipped_degenerate_heads": str(skipped)}
    return with_directions(fitted, heads, unit, sigma, meta, head_rank=rank)
