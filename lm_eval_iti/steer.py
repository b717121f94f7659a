"""ITI on any labelled prompts: ``train(model, tokenizer, samples)`` returns ``Directions``.

A sample is a prompt, a 0/1 label (1: the behaviour to steer towards) and an optional group (e.g. the question the
prompt answers): probes are validated on held-out groups, so no group is on both sides. The pipeline is the fit's:
out-projection inputs at each prompt's last token, one logistic probe per head, the K heads with the best validation
accuracy, one direction per head (mass-mean over every sample, or the probe's weights) and sigma, the spread of
``sigma_samples`` (default: the samples' prompts) along it. TruthfulQA is one source of samples
(``lm_eval_iti.truthfulqa.samples``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .errors import ITIError
from .options import DEFAULT_ALPHA, default_of


@dataclass(frozen=True)
class Sample:
    prompt: str
    label: int
    group: str | None = None


def as_samples(samples: Iterable, what: str = "samples") -> list[Sample]:
    """``Sample``s from Samples, (prompt, label[, group]) tuples or {"prompt", "label"[, "group"]} dicts."""
    out = []
    for i, s in enumerate(samples):
        if isinstance(s, Sample):
            item = s
        elif isinstance(s, dict):
            if "prompt" not in s or "label" not in s:
                raise ITIError(f"{what}[{i}]: a dict sample needs 'prompt' and 'label'")
            item = Sample(s["prompt"], s["label"], s.get("group"))
        elif isinstance(s, (tuple, list)) and len(s) in (2, 3):
            item = Sample(*s)
        else:
            raise ITIError(f"{what}[{i}]: expected (prompt, label[, group]), a dict or a Sample")
        if not isinstance(item.prompt, str) or not item.prompt.strip():
            raise ITIError(f"{what}[{i}]: the prompt is empty or not text")
        if item.label not in (0, 1) or isinstance(item.label, float):
            raise ITIError(f"{what}[{i}]: label {item.label!r} is not 0 or 1")
        out.append(Sample(item.prompt, int(item.label), None if item.group is None else str(item.group)))
    if not out:
        raise ITIError(f"{what}: no samples")
    return out


def group_split(groups: list[str], val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, validation rows): whole groups on each side, split as the fit splits questions."""
    from .select import split_train_val

    order = list(dict.fromkeys(groups))  # first-appearance order, so the split does not depend on sorting names
    train_groups, _ = split_train_val(list(range(len(order))), val_ratio, seed)
    in_train = {order[g] for g in train_groups}
    rows = list(range(len(groups)))
    return [r for r in rows if groups[r] in in_train], [r for r in rows if groups[r] not in in_train]


def train(model, tokenizer, samples: Iterable, *, num_heads: int = default_of("num_heads"),
          method: str = default_of("method"), sigma_samples: Iterable | None = None, alpha: float = DEFAULT_ALPHA,
          val_ratio: float = default_of("val_ratio"), seed: int = default_of("fold_seed"),
          probe_backend: str = default_of("probe_backend"), sigma_ddof: int = 1, add_special_tokens: bool = True,
          batch_size: int = default_of("fit_batch_size"),
          cache_dir=None, progress: bool = True, provenance: dict | None = None):
    """Directions for ``model`` from labelled ``samples`` (see the module docstring).

    ``sigma_samples``: prompts (strings or samples; labels unused) whose activations give sigma. ``cache_dir``: the
    activation cache (None: none). ``provenance``: string metadata to record (the TruthfulQA adapter passes the
    question ids the leak guard checks). Without groups every sample is its own group; with groups, their
    ``question_id`` s are recorded as ``train_question_ids`` (groups that are TruthfulQA question texts are then
    refused by the tasks' leak guard, as a fit's are)."""
    from .architectures import model_shape
    from .artifact import FORMAT, FORMAT_VERSION, SITE, Directions
    from .choices import METHODS, PROBE_BACKENDS
    from .collect import collect_activations
    from .fit import _group_by_layer
    from .folds import question_id
    from .identity import fingerprint_metadata
    from .loading import execution_device
    from .model_args import check_alpha_value
    from .probes import fit_probes, fit_probes_sklearn
    from .select import compute_directions, compute_sigma, head_activations, ranked_selection

    items = as_samples(samples)
    if method not in ("mass-mean", "probe"):
        raise ITIError(f"method={method!r} is not one of mass-mean, probe" + (" (random: see the controls)"
                                                                            if method in METHODS else ""))
    if probe_backend not in PROBE_BACKENDS:
        raise ITIError(f"probe_backend={probe_backend!r} is not one of {', '.join(PROBE_BACKENDS)}")
    check_alpha_value(float(alpha))
    labels = np.array([s.label for s in items])
    if len(set(labels.tolist())) != 2:
        raise ITIError(f"samples: every label is {int(labels[0])}; probes need both 0 and 1")
    grouped = all(s.group is not None for s in items)
    groups = [s.group if grouped else str(i) for i, s in enumerate(items)]
    train_rows, val_rows = group_split(groups, val_ratio, seed)
    for what, rows in (("probe-training", train_rows), ("probe-validation", val_rows)):
        if len(set(labels[rows].tolist())) != 2:
            raise ITIError(f"the {what} samples hold only label {int(labels[rows][0])}: use more samples or groups "
                           "with both labels")

    shape = model_shape(model)
    if not 1 <= num_heads <= shape.num_layers * shape.num_heads:
        raise ITIError(f"num_heads={num_heads} must be between 1 and layers x heads = {shape.num_layers * shape.num_heads}")
    common = dict(add_special_tokens=add_special_tokens, batch_size=batch_size, cache_dir=cache_dir,
                  use_cache=cache_dir is not None, progress=progress)
    acts = collect_activations(model, tokenizer, [s.prompt for s in items], desc="activations (samples)", **common)
    if probe_backend == "torch":
        probes = fit_probes(acts, labels, train_rows, val_rows, device=execution_device(model), progress=progress)
    else:
        probes = fit_probes_sklearn(acts, labels, train_rows, val_rows, seed=seed, progress=progress)
    selected, head_rank = ranked_selection(probes.accuracy, num_heads)
    every = list(range(len(items)))
    dirs = compute_directions(method, selected, x=head_activations(acts, selected, every), labels=labels,
                              probe_coef=probes.coef, seed=seed)
    if sigma_samples is None:
        sigma_acts = acts
    else:
        prompts = [s if isinstance(s, str) else as_samples([s], "sigma_samples")[0].prompt for s in sigma_samples]
        sigma_acts = collect_activations(model, tokenizer, prompts, desc="activations (sigma)", **common)
    sigma = compute_sigma(head_activations(sigma_acts, selected), dirs, sigma_ddof)
    if not bool((sigma > 0).all()):
        bad = selected[int((sigma <= 0).nonzero()[0])].tolist()
        raise ITIError(f"sigma of head (layer {bad[0]}, head {bad[1]}) is 0: its activations do not vary along the "
                       "direction")
    digest = hashlib.sha256(json.dumps([[s.prompt, s.label, s.group] for s in items]).encode()).hexdigest()
    meta = {"model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
            "model_fingerprint": fingerprint_metadata(model), "architecture": shape.architecture,
            "method": method, "seed": str(seed), "val_ratio": repr(float(val_ratio)),
            "num_samples": str(len(items)), "num_groups": str(len(set(groups))), "samples_sha256": digest,
            "sigma_data": "samples" if sigma_samples is None else "sigma_samples", "sigma_ddof": str(sigma_ddof),
            "num_heads_selected": str(num_heads), "probe_backend": probe_backend, "source": "lm_eval_iti.train",
            "format": FORMAT, "format_version": FORMAT_VERSION, "site": SITE}
    if grouped:
        ids = json.dumps(sorted({question_id(g) for g in groups}))
        meta.update(train_question_ids=ids, train_question_ids_sha256=hashlib.sha256(ids.encode()).hexdigest())
    meta.update({k: str(v) for k, v in (provenance or {}).items()})
    heads, directions, sigmas = _group_by_layer(selected, dirs, sigma)
    return Directions(shape.num_layers, shape.num_heads, shape.head_dim, heads, directions, sigmas, meta,
                      probes.accuracy.float(), head_rank, alpha=float(alpha))
