"""fit-directions as a Python API: data -> folds -> activations (cached) -> probes -> heads -> directions, sigma -> files.

``fit_directions(model=..., out=...)`` is what the CLI and the experiment commands call; pass an already-loaded model
and tokenizer to fit many folds/K/methods in one process: activations come from the cache after the first call
(``FitResult.forward_passes`` is then 0). A fit collects only its training fold's prompts; ``collect_all_folds``
collects every fold's, so that the other folds' fits need no forward pass (the experiment commands do this).
Outputs, all written atomically and only after every check passed:
``out`` (the directions file), ``<out stem>.heads.png`` (probe-accuracy heatmap) and ``<out stem>.summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__, distributed
from .architectures import model_shape
from .artifact import Directions, validate
from .atomic import write_json_atomic
from .collect import CollectStats, collect_activations, default_cache_dir
from .data import HUB_ID, load_generation, load_mc
from .errors import ITIError
from .folds import fold_assignment, fold_indices, question_id
from .loading import DTYPES, execution_device, load_model  # noqa: F401  (load_model: part of this module's API)
from .probes import PROBE_BACKENDS, ProbeResult, check_probe_memory, fit_probes, fit_probes_sklearn
from .prompts import PROMPT_FORMATS, SIGMA_DATA, gen_end_q_prompt_set, mc_prompt_set
from .select import METHODS, compute_directions, compute_sigma, head_activations, rank_heads, select_heads, split_train_val



@dataclass
class FitResult:
    out: Path
    directions: Directions
    probes: ProbeResult
    selected: torch.Tensor  # [K, 2] (layer, head) in selection order
    head_rank: torch.Tensor  # [L*H, 2]
    train_questions: list[int]  # probe-train questions (indices into the MC data)
    val_questions: list[int]
    test_questions: list[int]  # the held-out fold (empty without folds)
    train_question_ids: list[str]  # question ids of train + val: every question the fit saw
    collect_stats: dict[str, CollectStats]
    timings: dict[str, float]
    summary: dict
    heatmap_path: Path | None = None
    summary_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def forward_passes(self) -> int:
        return sum(s.forward_passes for s in self.collect_stats.values())


def companion_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """(heatmap, summary) paths beside a directions file: ``dirs.safetensors`` -> ``dirs.heads.png``, ``dirs.summary.json``."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".safetensors" else out
    return stem.with_name(stem.name + ".heads.png"), stem.with_name(stem.name + ".summary.json")


def _check_options(out, num_heads, method, probe_backend, prompt_format, sigma_data, num_folds, fold, val_ratio, alpha,
                   dtype, batch_size, max_questions, sigma_ddof) -> None:
    if Path(out).is_dir():
        raise ITIError(f"--out {out}: is a folder; give a file name such as dirs.safetensors")
    if method not in METHODS:
        raise ITIError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if probe_backend not in PROBE_BACKENDS:
        raise ITIError(f"--probe-backend {probe_backend!r} is not one of {', '.join(PROBE_BACKENDS)}")
    if prompt_format not in PROMPT_FORMATS:
        raise ITIError(f"--prompt-format {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}")
    if sigma_data not in SIGMA_DATA:
        raise ITIError(f"--sigma-data {sigma_data!r} is not one of {', '.join(SIGMA_DATA)}")
    if str(dtype) not in DTYPES:
        raise ITIError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if num_heads < 1:
        raise ITIError(f"--num-heads {num_heads} must be at least 1")
    if (num_folds is None) != (fold is None):
        raise ITIError("--num-folds and --fold go together (fit on every fold but --fold)")
    if not 0.0 < val_ratio < 1.0:
        raise ITIError(f"--val-ratio {val_ratio} must be between 0 and 1 (exclusive)")
    if alpha != "auto" and not math.isfinite(float(alpha)):
        raise ITIError(f"--alpha {alpha} must be finite")
    if batch_size < 1:
        raise ITIError(f"--batch-size {batch_size} must be at least 1")
    if max_questions is not None and max_questions < 2:
        raise ITIError(f"--max-questions {max_questions} must be at least 2")
    if sigma_ddof not in (0, 1):
        raise ITIError(f"sigma ddof {sigma_ddof} must be 0 or 1")


def fit_split(questions: list[str], num_folds: int | None = None, fold: int | None = None, seed: int = 42,
              contiguous: bool = False, val_ratio: float = 0.2) -> tuple[list[int], list[int], list[int], list[int]]:
    """(fit, held-out, probe-train, probe-val) question indices: folds.fold_indices, then the seeded train/val split."""
    if num_folds is not None:
        fit_questions, test_questions = fold_indices(questions, num_folds, fold, seed, contiguous)
    else:
        fit_questions, test_questions = list(range(len(questions))), []
    train_q, val_q = split_train_val(fit_questions, val_ratio, seed)
    return fit_questions, test_questions, train_q, val_q


def _sigma_generation_docs(source: str) -> list[dict]:
    """The generation CSV for the gen_end_q sigma set: beside mc_task.json when --data-dir names that file."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json":
        csv_path = path.parent / "TruthfulQA.csv"
        if not csv_path.is_file():
            raise ITIError(f"{source}: --sigma-data gen_end_q needs TruthfulQA.csv next to it "
                           "(pass the folder holding both, or use --sigma-data mc)")
        return load_generation(csv_path)
    return load_generation(source)


def data_sha256(docs: list[dict]) -> str:
    """The sha256 of the loaded multiple-choice data (recorded by fits and experiments)."""
    return hashlib.sha256(json.dumps(docs, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _group_by_layer(selected: torch.Tensor, dirs: torch.Tensor, sigma: torch.Tensor):
    heads, directions, sigmas = {}, {}, {}
    for layer in sorted(set(selected[:, 0].tolist())):
        rows = [i for i in range(len(selected)) if int(selected[i, 0]) == layer]
        rows.sort(key=lambda i: int(selected[i, 1]))
        idx = torch.tensor(rows, dtype=torch.long)
        heads[layer] = selected[idx, 1].to(torch.int64).clone()
        directions[layer] = dirs[idx].float().clone()
        sigmas[layer] = sigma[idx].float().clone()
    return heads, directions, sigmas


@distributed.main_writes_others_wait  # under accelerate launch: rank 0 writes, the others return once it has
def fit_directions(model, out: str | os.PathLike, *, tokenizer=None, dataset: str = HUB_ID,
                   data_dir: str | os.PathLike | None = None, num_heads: int = 48, method: str = "mass-mean",
                   random_heads: bool = False, val_ratio: float = 0.2, seed: int = 42, num_folds: int | None = None,
                   fold: int | None = None, contiguous_folds: bool = False, prompt_format: str = "qa",
                   sigma_data: str = "gen_end_q", sigma_ddof: int = 1, alpha: float = 15.0, dtype: str = "auto",
                   batch_size: int = 16, device: str | None = None, cache_dir: str | os.PathLike | None = None,
                   use_cache: bool = True, probe_backend: str = "torch", max_questions: int | None = None,
                   revision: str | None = None, chunk_size: int = 512, progress: bool = True,
                   write_plot: bool = True, gguf_file: str | None = None, kl_budget: float = 0.2,
                   kl_corpus: str = "wikitext", collect_all_folds: bool = False, device_map: str | dict | None = None,
                   max_memory: str | dict | None = None,
                   offload_folder: str | os.PathLike | None = None, probe_memory: str = "memory") -> FitResult | None:
    """Fit ITI directions and write ``out`` (+ heatmap and JSON summary). ``model``: a path/hub id or a loaded model.

    Activations are collected for the training fold's prompts only, unless ``collect_all_folds``: then every fold's
    prompts are collected and cached, so that fits of the other folds (``validate``, ``sweep``) read them back with
    no forward pass. A complete cache of every fold, when there, is read either way. ``alpha="auto"``: the largest
    alpha whose KL on held-out ``kl_corpus`` text stays within ``kl_budget`` (experiments.side_effects).
    ``device_map``/``max_memory``/``offload_folder``: accelerate's placement (loading.load_model). Under
    ``accelerate launch`` every rank collects a share of the chunks; rank 0 alone goes on and writes, and the other
    ranks return None once it has. ``probe_memory="stream"``: activations stay in the cache and the probes, directions
    and sigma read them a block of layers at a time (probes.fit_probes streaming mode; identical results).
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    _check_options(out, num_heads, method, probe_backend, prompt_format, sigma_data, num_folds, fold, val_ratio, alpha,
                   dtype, batch_size, max_questions, sigma_ddof)
    check_probe_memory(probe_memory, probe_backend, use_cache)
    out = Path(out)

    # data and folds (before the model: bad data fails fast)
    source = str(data_dir) if data_dir is not None else dataset
    mc_docs = load_mc(source)
    if max_questions is not None:
        mc_docs = mc_docs[:max_questions]
    questions = [d["question"] for d in mc_docs]
    if len(set(question_id(q) for q in questions)) != len(questions):
        raise ITIError(f"{source}: the multiple-choice data repeats a question (fold membership would be ambiguous)")
    fit_questions, test_questions, train_q, val_q = fit_split(questions, num_folds, fold, seed, contiguous_folds,
                                                              val_ratio)
    gen_docs = _sigma_generation_docs(source) if sigma_data == "gen_end_q" else None
    timings["load data"] = time.perf_counter() - clock

    # model
    clock = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        model_name = str(model)
        model, tokenizer = load_model(model_name, revision, dtype, device, progress, gguf_file=gguf_file,
                                      device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    else:
        if tokenizer is None:
            raise ITIError("fit_directions: pass tokenizer= along with an already-loaded model")
        model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    shape = model_shape(model)
    if num_heads > shape.num_layers * shape.num_heads:
        raise ITIError(f"--num-heads {num_heads} is larger than layers x heads = {shape.num_layers} x "
                       f"{shape.num_heads} = {shape.num_layers * shape.num_heads} of {model_name}")
    model_revision = revision or getattr(model.config, "_commit_hash", None) or ""
    timings["load model"] = time.perf_counter() - clock

    # prompts and labels: the full sets (one activation cache for every fold), and the rows of the training fold
    mc_all = mc_prompt_set(mc_docs, prompt_format, tokenizer)
    probe_rows = mc_all.rows_of_questions(fit_questions)
    mc_set = mc_all.subset(probe_rows)
    train_rows = mc_set.rows_of_questions(train_q)
    val_rows = mc_set.rows_of_questions(val_q)
    labels = np.asarray(mc_set.labels)
    for what, rows in (("probe-training", train_rows), ("probe-validation", val_rows)):
        present = set(labels[rows].tolist())
        if present != {0, 1}:
            missing = "true" if 1 not in present else "false"
            raise ITIError(f"the {what} questions have no {missing} answer (a class with no examples); "
                           "check the labels of the data or use more questions")
    groups = fold_assignment(questions, num_folds, seed, contiguous_folds) if num_folds is not None else None
    sigma_all = (gen_end_q_prompt_set(mc_docs, gen_docs, seed, prompt_format, tokenizer, groups=groups)
                 if sigma_data == "gen_end_q" else mc_all)
    sigma_needed = sigma_all.rows_of_questions(fit_questions)
    if not sigma_needed:
        raise ITIError(f"--sigma-data {sigma_data}: no prompt belongs to a training question")
    sigma_set = mc_set if sigma_all is mc_all else sigma_all.subset(sigma_needed)

    # activations
    clock = time.perf_counter()
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stats = {"probe set": CollectStats()}
    common = dict(batch_size=batch_size, chunk_size=chunk_size, cache_dir=cache_root, use_cache=use_cache,
                  model_name=model_name, revision=revision, progress=progress, collect_all=collect_all_folds,
                  stream=probe_memory == "stream")
    acts = collect_activations(model, tokenizer, mc_all.prompts, add_special_tokens=mc_all.add_special_tokens,
                               rows=probe_rows, desc="activations (probe set)", stats=stats["probe set"], **common)
    if sigma_set is mc_set:
        sigma_acts = acts
    else:
        stats["sigma set"] = CollectStats()
        sigma_acts = collect_activations(model, tokenizer, sigma_all.prompts, rows=sigma_needed,
                                         add_special_tokens=sigma_all.add_special_tokens,
                                         desc="activations (sigma set)", stats=stats["sigma set"], **common)
    timings["collect activations"] = time.perf_counter() - clock
    if not distributed.is_main_process():  # the chunks are written; rank 0 fits and writes
        return None

    # probes
    clock = time.perf_counter()
    if probe_backend == "torch":
        probe_device = execution_device(model)
        probes = fit_probes(acts, labels, train_rows, val_rows, device=probe_device, progress=progress)
    else:
        probes = fit_probes_sklearn(acts, labels, train_rows, val_rows, seed=seed, progress=progress)
    timings["probes"] = time.perf_counter() - clock

    # heads, directions, sigma
    clock = time.perf_counter()
    selected = select_heads(probes.accuracy, num_heads, seed, random_heads)
    ranked = rank_heads(probes.accuracy)
    chosen = {tuple(p) for p in selected.tolist()}
    head_rank = torch.cat([selected, torch.tensor([p for p in ranked.tolist() if tuple(p) not in chosen],
                                                  dtype=torch.int64).reshape(-1, 2)])
    fit_rows = mc_set.rows_of_questions(fit_questions)
    dirs = compute_directions(method, selected, x=head_activations(acts, selected, fit_rows),
                              labels=labels[fit_rows], probe_coef=probes.coef, seed=seed)
    sigma_rows = sigma_set.rows_of_questions(fit_questions)
    sigma = compute_sigma(head_activations(sigma_acts, selected, sigma_rows), dirs, sigma_ddof)
    if not bool((sigma > 0).all()):
        bad = selected[int((sigma <= 0).nonzero()[0])].tolist()
        raise ITIError(f"sigma of head (layer {bad[0]}, head {bad[1]}) is 0: its activations do not vary along the direction")
    timings["select + directions + sigma"] = time.perf_counter() - clock

    # provenance
    train_ids = [question_id(questions[i]) for i in sorted(fit_questions)]
    ids_json = json.dumps(train_ids)
    meta = {
        "model": model_name, "model_revision": model_revision, "model_identity": stats["probe set"].model_identity,
        "architecture": shape.architecture, "alpha": "" if alpha == "auto" else repr(float(alpha)), "method": method,
        "random_heads": str(bool(random_heads)).lower(), "seed": str(seed),
        "num_folds": "" if num_folds is None else str(num_folds), "fold": "" if fold is None else str(fold),
        "contiguous_folds": str(bool(contiguous_folds)).lower(), "val_ratio": repr(float(val_ratio)),
        "dataset": source, "dataset_sha256": data_sha256(mc_docs), "max_questions": "" if max_questions is None else str(max_questions),
        "num_questions": str(len(questions)), "prompt_format": prompt_format,
        "prompt_template": mc_set.info["template"], "sigma_data": sigma_data, "sigma_template": sigma_set.info["template"],
        "sigma_followup_pool": sigma_set.info.get("random_question_pool", ""),
        "sigma_ddof": str(sigma_ddof), "sigma_questions": "train+val of the training fold",
        "num_heads_selected": str(num_heads), "probe_backend": probe_backend, "probe_objective": "L2, C=1.0, intercept",
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "package": "lm-eval-iti", "package_version": __version__, "train_question_ids": ids_json,
        "train_question_ids_sha256": hashlib.sha256(ids_json.encode()).hexdigest(),
    }
    heads, directions, sigmas = _group_by_layer(selected, dirs, sigma)
    result_dirs = Directions(shape.num_layers, shape.num_heads, shape.head_dim, heads, directions, sigmas, meta,
                             probes.accuracy.float(), head_rank, str(out))
    # save_directions adds these; set them now so validation runs before any file is written
    from .artifact import FORMAT, FORMAT_VERSION, SITE
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, site=SITE, num_layers=str(shape.num_layers),
                num_heads=str(shape.num_heads), head_dim=str(shape.head_dim))
    if alpha == "auto":  # the largest alpha within the KL budget, on held-out text (not on any question)
        from .experiments.side_effects import alpha_for_kl_budget

        clock_auto = time.perf_counter()
        choice = alpha_for_kl_budget(model, tokenizer, result_dirs, kl_budget=kl_budget, corpus=kl_corpus,
                                     progress=progress)
        meta.update(alpha=repr(float(choice["alpha"])), kl_budget=repr(float(kl_budget)),
                    alpha_auto=json.dumps(choice))
        timings["alpha auto"] = time.perf_counter() - clock_auto
    validate(result_dirs, shape)

    heatmap_path, summary_path = companion_paths(out)
    summary = {
        "out": str(out), "heatmap": str(heatmap_path) if write_plot else None, "model": model_name,
        "model_identity": meta["model_identity"], "options": {
            "dataset": source, "num_heads": num_heads, "method": method, "random_heads": random_heads,
            "val_ratio": val_ratio, "seed": seed, "num_folds": num_folds, "fold": fold,
            "contiguous_folds": contiguous_folds, "prompt_format": prompt_format, "sigma_data": sigma_data,
            "sigma_ddof": sigma_ddof, "alpha": alpha, "probe_backend": probe_backend, "max_questions": max_questions},
        "counts": {"questions": len(questions), "fit_questions": len(fit_questions), "probe_train_questions": len(train_q),
                   "probe_val_questions": len(val_q), "test_questions": len(test_questions),
                   "probe_prompts": len(mc_all), "probe_rows": len(mc_set), "probe_train_rows": len(train_rows),
                   "probe_val_rows": len(val_rows), "sigma_prompts": len(sigma_all), "sigma_rows": len(sigma_rows),
                   "probes": shape.num_layers * shape.num_heads, "heads_selected": num_heads},
        "activations": {k: vars(v) for k, v in stats.items()},
        "collected": "every fold (a cache for the other folds' fits)" if collect_all_folds and test_questions
                     else "the training fold's prompts only",
        "probe_iterations": probes.iterations,
        "top_heads": [{"rank": i + 1, "layer": int(l), "head": int(h), "val_accuracy": round(float(probes.accuracy[l, h]), 4),
                       "sigma": round(float(sigma[i]), 6)} for i, (l, h) in enumerate(selected.tolist())],
        "train_question_ids_sha256": meta["train_question_ids_sha256"],
        "alpha": float(meta["alpha"]), "alpha_auto": json.loads(meta["alpha_auto"]) if "alpha_auto" in meta else None,
        "timings_s": timings, "package_version": __version__,
    }

    clock = time.perf_counter()
    if write_plot:
        from .plots import heads_heatmap

        heads_heatmap(probes.accuracy, selected, heatmap_path,
                      title=f"{Path(model_name).name or model_name}: probe validation accuracy, "
                            f"{num_heads} {'random ' if random_heads else ''}selected heads outlined")
    from .artifact import save_directions

    save_directions(result_dirs, out)
    timings["write"] = time.perf_counter() - clock
    write_json_atomic(summary_path, summary)
    return FitResult(out, result_dirs, probes, selected, head_rank, train_q, val_q, test_questions, train_ids, stats,
                     timings, summary, heatmap_path if write_plot else None, summary_path)


def format_summary(summary: dict, top: int = 10) -> str:
    """The end-of-run table: top heads, counts, activation cache use and the time of each stage."""
    c = summary["counts"]
    lines = [f"wrote {summary['out']}" + (f" and {summary['heatmap']}" if summary.get("heatmap") else ""),
             "", f"{'rank':>4}  {'layer':>5}  {'head':>4}  {'val acc':>7}  {'sigma':>9}"]
    for row in summary["top_heads"][:top]:
        lines.append(f"{row['rank']:>4}  {row['layer']:>5}  {row['head']:>4}  {row['val_accuracy']:>7.4f}  {row['sigma']:>9.4g}")
    if len(summary["top_heads"]) > top:
        lines.append(f"  ... {len(summary['top_heads']) - top} more selected heads in the summary JSON")
    lines += ["", f"questions: {c['questions']} (fit on {c['fit_questions']}: {c['probe_train_questions']} probe-train + "
              f"{c['probe_val_questions']} probe-val; {c['test_questions']} held out)",
              f"prompts: {c['probe_prompts']} probe ({c.get('probe_rows', c['probe_prompts'])} used), "
              f"{c['sigma_prompts']} sigma ({c['sigma_rows']} used); {c['probes']} probes, {c['heads_selected']} heads "
              "selected"]
    if summary.get("collected"):
        lines.append(f"collected: {summary['collected']}")
    for name, s in summary["activations"].items():
        lines.append(f"activations ({name}): {s['forward_passes']} forward passes, {s['chunks_cached']} cached + "
                     f"{s['chunks_computed']} computed chunks")
    auto = summary.get("alpha_auto")
    if auto:
        lines.append(f"alpha auto: {auto['alpha']:g} (KL budget {auto['kl_budget']:g} nats/token; measured "
                     + ", ".join(f"{m['alpha']:g}: {m['kl']:.3f}" for m in auto["measured"]) + ")")
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items()))
    return "\n".join(lines)
