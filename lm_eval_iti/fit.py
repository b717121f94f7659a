"""fit-directions as stages: data and folds -> prompt sets -> activations (cached) -> probes -> heads -> directions and
sigma -> provenance -> a ``Directions`` object; writing files is a separate last step.

``fit_directions(model, tokenizer, **options)`` is the public API: it returns the ``Directions`` in memory and writes
nothing (unless ``cache_dir`` names an activation cache). ``fit_and_save(model, out, **options)`` is what the CLI and
the experiment commands call: the same fit, then ``out`` (the directions file), ``<out stem>.heads.png`` (probe-accuracy
heatmap) and ``<out stem>.summary.json``, all written atomically and only after every check passed.

Each stage is a function of the config (``FitConfig``) and the previous stages' outputs, so it can be called and
tested alone. Pass an already-loaded model and tokenizer to fit many folds/K/methods in one process: with a cache,
activations come from it after the first call (``FitResult.forward_passes`` is then 0). A fit collects only its
training fold's prompts; ``collect_all_folds`` collects every fold's, so that the other folds' fits need no forward
pass (the experiment commands do this).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__, distributed
from .architectures import model_shape
from .artifact import FORMAT, FORMAT_VERSION, SITE, Directions, ModelShape, save_directions, validate
from .atomic import write_json_atomic
from .collect import CollectStats, collect_activations, default_cache_dir
from .data import HUB_ID, load_generation, load_mc
from .errors import ITIError
from .identity import fingerprint_metadata
from .folds import fold_assignment, fold_indices, question_id
from .model_args import check_alpha_value
from .loading import DTYPES, execution_device, load_model
from .options import DEFAULT_ALPHA, config_field, default_of
from .probes import PROBE_BACKENDS, ProbeResult, check_probe_memory, fit_probes, fit_probes_sklearn
from .prompts import PROMPT_FORMATS, SIGMA_DATA, PromptSet, gen_end_q_prompt_set, mc_prompt_set
from .choices import HEAD_SELECTIONS
from .select import (METHODS, all_head_directions, compute_directions, compute_sigma, every_head, head_activations,
                     rank_heads, ranked_selection, split_train_val)


@dataclass
class FitConfig:
    """Every choice that decides the fitted directions (not where files go, nor progress bars)."""

    dataset: str = config_field("dataset")
    data_dir: str | os.PathLike | None = config_field("data_dir")
    num_heads: int = config_field("num_heads")
    method: str = config_field("method")
    random_heads: bool = config_field("random_heads")
    head_selection: str = config_field("head_selection")
    effect_questions: int = config_field("effect_questions")
    effect_check_heads: int = config_field("effect_check_heads")
    val_ratio: float = config_field("val_ratio")
    seed: int = config_field("seed", option="fold_seed")
    num_folds: int | None = config_field("num_folds")  # used with fold; without a fold the fit uses every question
    fold: int | None = config_field("fold")
    contiguous_folds: bool = config_field("contiguous_folds")
    prompt_format: str = config_field("prompt_format")
    sigma_data: str = config_field("sigma_data")
    sigma_ddof: int = 1
    alpha: float | str = DEFAULT_ALPHA
    kl_budget: float = config_field("kl_budget")
    kl_corpus: str = config_field("kl_corpus")
    probe_backend: str = config_field("probe_backend")
    num_questions: int | None = config_field("num_questions")
    batch_size: int = config_field("batch_size", option="fit_batch_size")
    chunk_size: int = config_field("chunk_size")

    @property
    def source(self) -> str:
        """Where the multiple-choice data comes from: ``data_dir`` when given, else the hub ``dataset``."""
        return str(self.data_dir) if self.data_dir is not None else self.dataset

    def check(self) -> "FitConfig":
        """Raise one ITIError line naming the first bad parameter."""
        for name, value, allowed in (("method", self.method, METHODS), ("probe_backend", self.probe_backend, PROBE_BACKENDS),
                                     ("prompt_format", self.prompt_format, PROMPT_FORMATS),
                                     ("head_selection", self.head_selection, HEAD_SELECTIONS),
                                     ("sigma_data", self.sigma_data, SIGMA_DATA)):
            if value not in allowed:
                raise ITIError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if self.head_selection == "effect":
            if self.random_heads:
                raise ITIError("head_selection='effect' and random_heads=True exclude each other")
            if self.method not in ("mass-mean", "probe"):
                raise ITIError(f"head_selection='effect' needs method mass-mean or probe, not {self.method!r}")
            if self.effect_questions < 2 or self.effect_check_heads < 0:
                raise ITIError(f"effect_questions={self.effect_questions} must be at least 2 and "
                               f"effect_check_heads={self.effect_check_heads} at least 0")
        if isinstance(self.num_heads, bool) or not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ITIError(f"num_heads={self.num_heads!r} must be a whole number, at least 1")
        if self.fold is None and self.num_folds == default_of("num_folds"):
            self.num_folds = None  # no held-out fold: every question (the default num_folds applies with a fold)
        if (self.num_folds is None) != (self.fold is None):
            raise ITIError("num_folds= and fold= go together (fit on every fold but fold)")
        if self.num_folds is not None and (self.num_folds < 2 or not 0 <= self.fold < self.num_folds):
            raise ITIError(f"fold={self.fold} with num_folds={self.num_folds}: need num_folds >= 2 and "
                           f"0 <= fold < num_folds")
        if not 0.0 < self.val_ratio < 1.0:
            raise ITIError(f"val_ratio={self.val_ratio} must be between 0 and 1 (exclusive)")
        if self.alpha != "auto":
            try:
                value = float(self.alpha)
            except (TypeError, ValueError):
                raise ITIError(f"alpha={self.alpha!r} must be a finite number or 'auto'") from None
            check_alpha_value(value)
        if not self.kl_budget > 0:
            raise ITIError(f"kl_budget={self.kl_budget} must be positive (nats per token)")
        if self.batch_size < 1:
            raise ITIError(f"batch_size={self.batch_size} must be at least 1")
        if self.chunk_size < 1:
            raise ITIError(f"chunk_size={self.chunk_size} must be at least 1")
        if self.num_questions is not None and self.num_questions < 2:
            raise ITIError(f"num_questions={self.num_questions} must be at least 2")
        if self.sigma_ddof not in (0, 1):
            raise ITIError(f"sigma_ddof={self.sigma_ddof} must be 0 or 1")
        return self


def make_config(**options) -> FitConfig:
    """A checked FitConfig from keyword options; an unknown option is one line naming it."""
    known = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ITIError(f"unknown fit option {unknown[0]}= (known: {', '.join(sorted(known))})")
    return FitConfig(**options).check()


# stage 1: data and folds ------------------------------------------------------------------------------------------
@dataclass
class FitData:
    mc_docs: list[dict]
    questions: list[str]
    fit_questions: list[int]  # train + val: every question the fit sees
    test_questions: list[int]  # the held-out fold (empty without folds)
    train_questions: list[int]  # probe-train
    val_questions: list[int]  # probe-validation
    gen_docs: list[dict] | None  # the generation rows of the gen_end_q sigma set


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
    """The generation CSV for the gen_end_q sigma set: beside mc_task.json when data_dir names that file."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json":
        csv_path = path.parent / "TruthfulQA.csv"
        if not csv_path.is_file():
            raise ITIError(f"{source}: sigma_data='gen_end_q' needs TruthfulQA.csv next to it "
                           "(pass the folder holding both, or use sigma_data='mc')")
        return load_generation(csv_path)
    return load_generation(source)


def load_and_split(cfg: FitConfig) -> FitData:
    """Stage 1: the multiple-choice (and, for gen_end_q, generation) data, the folds and the probe train/val split."""
    source = cfg.source
    mc_docs = load_mc(source)
    if cfg.num_questions is not None:
        mc_docs = mc_docs[:cfg.num_questions]
    questions = [d["question"] for d in mc_docs]  # load_mc refused repeats and unusable rows
    fit_q, test_q, train_q, val_q = fit_split(questions, cfg.num_folds, cfg.fold, cfg.seed, cfg.contiguous_folds,
                                              cfg.val_ratio)
    gen_docs = _sigma_generation_docs(source) if cfg.sigma_data == "gen_end_q" else None
    return FitData(mc_docs, questions, fit_q, test_q, train_q, val_q, gen_docs)


def data_sha256(docs: list[dict]) -> str:
    """The sha256 of the loaded multiple-choice data (recorded by fits and experiments)."""
    return hashlib.sha256(json.dumps(docs, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# stage 2: prompt sets ---------------------------------------------------------------------------------------------
@dataclass
class FitPrompts:
    mc_all: PromptSet  # every question's probe prompts (one activation cache serves every fold)
    probe_rows: list[int]  # rows of mc_all that belong to the training fold
    mc_set: PromptSet  # mc_all restricted to probe_rows
    train_rows: list[int]  # rows of mc_set
    val_rows: list[int]
    labels: np.ndarray  # of mc_set
    sigma_all: PromptSet
    sigma_needed: list[int]  # rows of sigma_all that belong to the training fold
    sigma_set: PromptSet


def build_prompt_sets(cfg: FitConfig, data: FitData, tokenizer) -> FitPrompts:
    """Stage 2: the probe prompts (every mc2 choice) and the sigma prompts, and the training fold's rows of each."""
    mc_all = mc_prompt_set(data.mc_docs, cfg.prompt_format, tokenizer)
    probe_rows = mc_all.rows_of_questions(data.fit_questions)
    mc_set = mc_all.subset(probe_rows)
    train_rows = mc_set.rows_of_questions(data.train_questions)
    val_rows = mc_set.rows_of_questions(data.val_questions)
    labels = np.asarray(mc_set.labels)
    for what, rows in (("probe-training", train_rows), ("probe-validation", val_rows)):
        present = set(labels[rows].tolist())
        if present != {0, 1}:
            missing = "true" if 1 not in present else "false"
            raise ITIError(f"the {what} questions have no {missing} answer (a class with no examples); "
                           "check the labels of the data or use more questions")
    groups = (fold_assignment(data.questions, cfg.num_folds, cfg.seed, cfg.contiguous_folds)
              if cfg.num_folds is not None else None)
    sigma_all = (gen_end_q_prompt_set(data.mc_docs, data.gen_docs, cfg.seed, cfg.prompt_format, tokenizer, groups=groups)
                 if cfg.sigma_data == "gen_end_q" else mc_all)
    sigma_needed = sigma_all.rows_of_questions(data.fit_questions)
    if not sigma_needed:
        raise ITIError(f"sigma_data={cfg.sigma_data!r}: no prompt belongs to a training question")
    sigma_set = mc_set if sigma_all is mc_all else sigma_all.subset(sigma_needed)
    return FitPrompts(mc_all, probe_rows, mc_set, train_rows, val_rows, labels, sigma_all, sigma_needed, sigma_set)


# stage 3: activations ---------------------------------------------------------------------------------------------
@dataclass
class FitActivations:
    probe: torch.Tensor  # [rows of mc_set, layers, heads, head_dim]
    sigma: torch.Tensor  # [rows of sigma_set, ...] (the same tensor when the sigma set is the probe set)
    stats: dict[str, CollectStats]


def collect_stage(model, tokenizer, cfg: FitConfig, prompts: FitPrompts, *, model_name: str,
                  revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                  collect_all_folds: bool = False, progress: bool = True, stream: bool = False) -> FitActivations:
    """Stage 3: last-token activations of every head for the training fold's prompts (``cache_dir``: read/fill the
    activation cache there; None: no cache)."""
    stats = {"probe set": CollectStats()}
    common = dict(batch_size=cfg.batch_size, chunk_size=cfg.chunk_size,
                  cache_dir=Path(cache_dir).expanduser() if cache_dir is not None else None,
                  use_cache=cache_dir is not None, model_name=model_name, revision=revision, progress=progress,
                  collect_all=collect_all_folds, stream=stream)
    acts = collect_activations(model, tokenizer, prompts.mc_all.prompts, add_special_tokens=prompts.mc_all.add_special_tokens,
                               rows=prompts.probe_rows, desc="activations (probe set)", stats=stats["probe set"], **common)
    if prompts.sigma_set is prompts.mc_set:
        return FitActivations(acts, acts, stats)
    stats["sigma set"] = CollectStats()
    sigma_acts = collect_activations(model, tokenizer, prompts.sigma_all.prompts, rows=prompts.sigma_needed,
                                     add_special_tokens=prompts.sigma_all.add_special_tokens,
                                     desc="activations (sigma set)", stats=stats["sigma set"], **common)
    return FitActivations(acts, sigma_acts, stats)


# stage 4: probes --------------------------------------------------------------------------------------------------
def probe_stage(cfg: FitConfig, acts: torch.Tensor, prompts: FitPrompts, *, device=None,
                progress: bool = True) -> ProbeResult:
    """Stage 4: one logistic probe per head, trained on the probe-train rows, scored on the probe-val rows."""
    if cfg.probe_backend == "torch":
        return fit_probes(acts, prompts.labels, prompts.train_rows, prompts.val_rows, device=device, progress=progress)
    return fit_probes_sklearn(acts, prompts.labels, prompts.train_rows, prompts.val_rows, seed=cfg.seed,
                              progress=progress)


# stage 5: heads ---------------------------------------------------------------------------------------------------
def select_stage(cfg: FitConfig, probes: ProbeResult) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 5: (selected [K, 2], head_rank [L*H, 2]): the K heads (best validation accuracy, or random with
    ``random_heads``), then every other head by rank."""
    return ranked_selection(probes.accuracy, cfg.num_heads, cfg.seed, cfg.random_heads)


def effect_stage(model, tokenizer, cfg: FitConfig, acts: FitActivations, prompts: FitPrompts, data: FitData,
                 probes: ProbeResult, *, progress: bool = True):
    """Stage 5 with ``head_selection='effect'``: (selected [K, 2], head_rank [L*H, 2], the EffectRanking). Every
    head's direction and sigma as stage 6 computes them, then its first-order effect on the log MC2 of (a seeded
    sample of) the training questions (effect.py); the ranking is by effect, best first."""
    from .effect import effect_ranking

    L, H = probes.accuracy.shape
    heads = every_head(L, H)
    fit_rows = prompts.mc_set.rows_of_questions(data.fit_questions)
    unit, live = all_head_directions(cfg.method, L, H, x=head_activations(acts.probe, heads, fit_rows),
                                     labels=prompts.labels[fit_rows], probe_coef=probes.coef)
    sigma_rows = prompts.sigma_set.rows_of_questions(data.fit_questions)
    sigma = compute_sigma(head_activations(acts.sigma, heads, sigma_rows), unit.reshape(L * H, -1), cfg.sigma_ddof)
    live = live & (sigma.view(L, H) > 0)
    questions = sorted(data.fit_questions)
    if len(questions) > cfg.effect_questions:
        pick = np.random.default_rng([cfg.seed, 29]).choice(len(questions), cfg.effect_questions, replace=False)
        questions = sorted(questions[i] for i in pick)
    ranking = effect_ranking(model, tokenizer, data.mc_docs, questions, unit, sigma.view(L, H), live,
                             check_count=cfg.effect_check_heads, seed=cfg.seed, progress=progress)
    head_rank = rank_heads(ranking.effect)
    if cfg.num_heads > int(live.sum()):
        raise ITIError(f"num_heads={cfg.num_heads}: only {int(live.sum())} heads have a {cfg.method} direction to "
                       "rank by effect")
    return head_rank[:cfg.num_heads], head_rank, ranking


# stage 6: directions and sigma ------------------------------------------------------------------------------------
def directions_stage(cfg: FitConfig, acts: FitActivations, prompts: FitPrompts, data: FitData, probes: ProbeResult,
                     selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 6: (directions [K, head_dim] unit rows, sigma [K]) of the selected heads, from training-fold rows only."""
    fit_rows = prompts.mc_set.rows_of_questions(data.fit_questions)
    dirs = compute_directions(cfg.method, selected, x=head_activations(acts.probe, selected, fit_rows),
                              labels=prompts.labels[fit_rows], probe_coef=probes.coef, seed=cfg.seed)
    sigma_rows = prompts.sigma_set.rows_of_questions(data.fit_questions)
    sigma = compute_sigma(head_activations(acts.sigma, selected, sigma_rows), dirs, cfg.sigma_ddof)
    if not bool((sigma > 0).all()):
        bad = selected[int((sigma <= 0).nonzero()[0])].tolist()
        raise ITIError(f"sigma of head (layer {bad[0]}, head {bad[1]}) is 0: its activations do not vary along the direction")
    return dirs, sigma


# stage 7: provenance and the Directions object --------------------------------------------------------------------
def option_metadata(cfg: FitConfig) -> dict[str, str]:
    """The fit's options as the directions file's metadata writes them (a resumed selection compares them)."""
    effect = ({"effect_questions_limit": str(cfg.effect_questions), "effect_check_heads": str(cfg.effect_check_heads)}
              if cfg.head_selection == "effect" else {})
    return {**effect,
        "method": cfg.method, "random_heads": str(bool(cfg.random_heads)).lower(), "seed": str(cfg.seed),
        "head_selection": cfg.head_selection,
        "num_folds": "" if cfg.num_folds is None else str(cfg.num_folds), "fold": "" if cfg.fold is None else str(cfg.fold),
        "contiguous_folds": str(bool(cfg.contiguous_folds)).lower(), "val_ratio": repr(float(cfg.val_ratio)),
        "max_questions": "" if cfg.num_questions is None else str(cfg.num_questions), "prompt_format": cfg.prompt_format,
        "sigma_data": cfg.sigma_data, "sigma_ddof": str(cfg.sigma_ddof), "num_heads_selected": str(cfg.num_heads),
        "probe_backend": cfg.probe_backend,
    }


def provenance(cfg: FitConfig, data: FitData, prompts: FitPrompts, shape: ModelShape, *, model_name: str,
               model_revision: str, model_identity: str | None, dtype: str, model_fingerprint: str = "") -> dict[str, str]:
    """Stage 7: the string metadata a directions file carries: model, options, templates, training question ids."""
    train_ids = [question_id(data.questions[i]) for i in sorted(data.fit_questions)]
    ids_json = json.dumps(train_ids)
    return {
        "model": model_name, "model_revision": model_revision, "model_identity": model_identity or "",
        "model_fingerprint": model_fingerprint, "architecture": shape.architecture, **option_metadata(cfg),
        "dataset": cfg.source, "dataset_sha256": data_sha256(data.mc_docs),
        "num_questions": str(len(data.questions)), "prompt_template": prompts.mc_set.info["template"],
        "sigma_template": prompts.sigma_set.info["template"],
        "sigma_followup_pool": prompts.sigma_set.info.get("random_question_pool", ""),
        "sigma_questions": "train+val of the training fold",
        "probe_objective": "L2, C=1.0, intercept", "dtype": dtype,
        "package": "lm-eval-iti", "package_version": __version__, "train_question_ids": ids_json,
        "train_question_ids_sha256": hashlib.sha256(ids_json.encode()).hexdigest(),
        "format": FORMAT, "format_version": FORMAT_VERSION, "site": SITE, "num_layers": str(shape.num_layers),
        "num_heads": str(shape.num_heads), "head_dim": str(shape.head_dim),
    }


def effect_metadata(ranking, data: FitData) -> dict[str, str]:
    """The effect ranking's record in the file: objective, questions (all training questions), cost and the check."""
    from .effect import OBJECTIVE

    ids = [question_id(data.questions[i]) for i in ranking.question_indices]
    leaked = set(ranking.question_indices) - set(data.fit_questions)
    if leaked:  # never: the sample is drawn from the training questions
        raise ITIError(f"effect ranking used {len(leaked)} question(s) outside the training fold")
    return {"effect_objective": OBJECTIVE, "effect_questions": str(ranking.questions),
            "effect_question_ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
            "effect_unsteered_objective": repr(ranking.objective), "effect_passes": str(ranking.passes),
            "effect_seconds": repr(ranking.seconds), "effect_check": json.dumps(ranking.check),
            "effect_per_head": json.dumps([[round(float(v), 6) if np.isfinite(float(v)) else None for v in row]
                                           for row in ranking.effect.tolist()])}


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


def assemble(shape: ModelShape, selected: torch.Tensor, dirs: torch.Tensor, sigma: torch.Tensor, meta: dict[str, str],
             probes: ProbeResult, head_rank: torch.Tensor, source: str = "<memory>", alpha: float = 0.0) -> Directions:
    """The Directions object: selected heads grouped by layer, with the probe accuracies and the head ranking."""
    heads, directions, sigmas = _group_by_layer(selected, dirs, sigma)
    return Directions(shape.num_layers, shape.num_heads, shape.head_dim, heads, directions, sigmas, meta,
                      probes.accuracy.float(), head_rank, source, alpha=alpha)


def choose_alpha_auto(model, tokenizer, directions: Directions, cfg: FitConfig,
                      progress: bool = True) -> tuple[Directions, dict]:
    """``alpha='auto'``: the largest alpha whose KL on held-out ``kl_corpus`` text stays within ``kl_budget``; returns
    the directions at that alpha (the search recorded in their metadata) and the search."""
    from .side_effects import alpha_for_kl_budget

    choice = alpha_for_kl_budget(model, tokenizer, directions, kl_budget=cfg.kl_budget, corpus=cfg.kl_corpus,
                                 progress=progress)
    meta = {**directions.metadata, "kl_budget": repr(float(cfg.kl_budget)), "alpha_auto": json.dumps(choice)}
    return dataclasses.replace(directions, metadata=meta, alpha=float(choice["alpha"])), choice


# the whole fit ----------------------------------------------------------------------------------------------------
@dataclass
class FitResult:
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
    out: Path | None = None
    heatmap_path: Path | None = None
    summary_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def forward_passes(self) -> int:
        return sum(s.forward_passes for s in self.collect_stats.values())


def _model_and_tokenizer(model, tokenizer, *, revision, dtype, device, progress, gguf_file, device_map=None,
                         max_memory=None, offload_folder=None):
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        model, tokenizer = load_model(name, revision, dtype, device, progress, gguf_file=gguf_file,
                                      device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        return model, tokenizer, name
    if dtype not in DTYPES:
        raise ITIError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    if tokenizer is None:
        raise ITIError("fit_directions: pass tokenizer= along with an already-loaded model")
    return model, tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__


def run_fit(model, tokenizer, cfg: FitConfig, *, revision: str | None = None, dtype: str = "auto",
            device: str | None = None, gguf_file: str | None = None, cache_dir: str | os.PathLike | None = None,
            collect_all_folds: bool = False, progress: bool = True, source: str = "<memory>",
            device_map=None, max_memory=None, offload_folder=None, probe_memory: str = "memory") -> FitResult | None:
    """Every stage in order, in memory: ``model`` is a path/hub id/.gguf or a loaded model (then pass ``tokenizer``).
    ``cache_dir``: the activation cache to read and fill (None: none). ``device_map``/``max_memory``/
    ``offload_folder``: accelerate's placement (loading.load_model). ``probe_memory="stream"``: activations stay in
    the cache and are read a block of layers at a time (identical results; needs ``cache_dir``). Under
    ``accelerate launch`` every rank collects its share of the chunks; the other ranks then return None."""
    cfg.check()
    check_probe_memory(probe_memory, cfg.probe_backend, use_cache=cache_dir is not None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    data = load_and_split(cfg)  # before the model: bad data fails fast
    if cfg.alpha == "auto":
        from .side_effects import check_kl_corpus

        check_kl_corpus(cfg.kl_corpus, option="kl_corpus")
    timings["load data"] = time.perf_counter() - clock

    clock = time.perf_counter()
    model, tokenizer, model_name = _model_and_tokenizer(model, tokenizer, revision=revision, dtype=dtype, device=device,
                                                        progress=progress, gguf_file=gguf_file, device_map=device_map,
                                                        max_memory=max_memory, offload_folder=offload_folder)
    shape = model_shape(model)
    if cfg.num_heads > shape.num_layers * shape.num_heads:
        raise ITIError(f"num_heads={cfg.num_heads} is larger than layers x heads = {shape.num_layers} x "
                       f"{shape.num_heads} = {shape.num_layers * shape.num_heads} of {model_name}")
    model_revision = revision or getattr(model.config, "_commit_hash", None) or ""
    timings["load model"] = time.perf_counter() - clock

    prompts = build_prompt_sets(cfg, data, tokenizer)
    clock = time.perf_counter()
    acts = collect_stage(model, tokenizer, cfg, prompts, model_name=model_name, revision=revision, cache_dir=cache_dir,
                         collect_all_folds=collect_all_folds, progress=progress, stream=probe_memory == "stream")
    timings["collect activations"] = time.perf_counter() - clock
    if not distributed.is_main_process():  # the chunks are written; rank 0 fits and writes
        return None

    clock = time.perf_counter()
    probes = probe_stage(cfg, acts.probe, prompts, device=execution_device(model), progress=progress)
    timings["probes"] = time.perf_counter() - clock

    clock = time.perf_counter()
    ranking = None
    if cfg.head_selection == "effect":
        selected, head_rank, ranking = effect_stage(model, tokenizer, cfg, acts, prompts, data, probes,
                                                    progress=progress)
        timings["effect ranking"] = time.perf_counter() - clock
        clock = time.perf_counter()
    else:
        selected, head_rank = select_stage(cfg, probes)
    dirs, sigma = directions_stage(cfg, acts, prompts, data, probes, selected)
    timings["select + directions + sigma"] = time.perf_counter() - clock

    meta = provenance(cfg, data, prompts, shape, model_name=model_name, model_revision=model_revision,
                      model_identity=acts.stats["probe set"].model_identity,
                      dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                      model_fingerprint=fingerprint_metadata(model))
    if ranking is not None:
        meta.update(effect_metadata(ranking, data))
    # alpha auto: 0 until choose_alpha_auto sets the choice (the search passes each alpha itself)
    directions = assemble(shape, selected, dirs, sigma, meta, probes, head_rank, source,
                          alpha=0.0 if cfg.alpha == "auto" else float(cfg.alpha))
    if cfg.alpha == "auto":  # on held-out text, never on a question
        clock = time.perf_counter()
        directions, _ = choose_alpha_auto(model, tokenizer, directions, cfg, progress)
        timings["alpha auto"] = time.perf_counter() - clock
    validate(directions, shape)
    summary = fit_summary(cfg, data, prompts, acts, probes, selected, sigma, directions, shape, model_name, timings,
                          collect_all_folds)
    train_ids = json.loads(meta["train_question_ids"])
    return FitResult(directions, probes, selected, head_rank, data.train_questions, data.val_questions,
                     data.test_questions, train_ids, acts.stats, timings, summary)


def fit_summary(cfg: FitConfig, data: FitData, prompts: FitPrompts, acts: FitActivations, probes: ProbeResult,
                selected: torch.Tensor, sigma: torch.Tensor, directions: Directions, shape: ModelShape,
                model_name: str, timings: dict, collect_all_folds: bool) -> dict:
    """The JSON summary: options, counts, cache use, the selected heads and the time of each stage."""
    meta = directions.metadata
    return {
        "model": model_name, "model_identity": meta["model_identity"],
        "options": {"dataset": cfg.source, "num_heads": cfg.num_heads, "method": cfg.method,
                    "random_heads": cfg.random_heads, "head_selection": cfg.head_selection, "val_ratio": cfg.val_ratio, "seed": cfg.seed,
                    "num_folds": cfg.num_folds, "fold": cfg.fold, "contiguous_folds": cfg.contiguous_folds,
                    "prompt_format": cfg.prompt_format, "sigma_data": cfg.sigma_data, "sigma_ddof": cfg.sigma_ddof,
                    "alpha": cfg.alpha, "probe_backend": cfg.probe_backend, "num_questions": cfg.num_questions},
        "counts": {"questions": len(data.questions), "fit_questions": len(data.fit_questions),
                   "probe_train_questions": len(data.train_questions), "probe_val_questions": len(data.val_questions),
                   "test_questions": len(data.test_questions), "probe_prompts": len(prompts.mc_all),
                   "probe_rows": len(prompts.mc_set), "probe_train_rows": len(prompts.train_rows),
                   "probe_val_rows": len(prompts.val_rows), "sigma_prompts": len(prompts.sigma_all),
                   "sigma_rows": len(prompts.sigma_set.rows_of_questions(data.fit_questions)),
                   "probes": shape.num_layers * shape.num_heads, "heads_selected": cfg.num_heads},
        "activations": {k: vars(v) for k, v in acts.stats.items()},
        "collected": "every fold (a cache for the other folds' fits)" if collect_all_folds and data.test_questions
                     else "the training fold's prompts only",
        "probe_iterations": probes.iterations,
        "top_heads": [{"rank": i + 1, "layer": int(l), "head": int(h), "val_accuracy": round(float(probes.accuracy[l, h]), 4),
                       "sigma": round(float(sigma[i]), 6)} for i, (l, h) in enumerate(selected.tolist())],
        "train_question_ids_sha256": meta["train_question_ids_sha256"],
        "alpha": directions.alpha, "alpha_auto": json.loads(meta["alpha_auto"]) if "alpha_auto" in meta else None,
        "effect_check": json.loads(meta["effect_check"]) if "effect_check" in meta else None,
        "timings_s": timings, "package_version": __version__,
    }


@distributed.main_writes_others_wait
def fit_directions(model, tokenizer=None, *, revision: str | None = None, dtype: str = "auto",
                   device: str | None = None, gguf_file: str | None = None,
                   cache_dir: str | os.PathLike | None = None, progress: bool = True, device_map=None,
                   max_memory=None, offload_folder=None, probe_memory: str = "memory",
                   **options) -> Directions:
    """Fit ITI directions in memory and return them; nothing is written (``cache_dir``: an activation cache to read
    and fill, off by default).

    ``model``: a loaded ``PreTrainedModel`` (with ``tokenizer``), or a folder, hub id, ``.gguf`` file or named model.
    ``options``: the fields of ``FitConfig`` (``data_dir``, ``num_folds``, ``fold``, ``num_heads``, ``method``,
    ``alpha`` (a number or ``"auto"``), ...). Save with ``Directions.save``; steer with ``Directions.apply``.
    Under ``accelerate launch`` the ranks share the collection, rank 0 fits, and every rank returns its directions.
    """
    cfg = make_config(**options)
    try:
        result = run_fit(model, tokenizer, cfg, revision=revision, dtype=dtype, device=device, gguf_file=gguf_file,
                         cache_dir=cache_dir, progress=progress, device_map=device_map, max_memory=max_memory,
                         offload_folder=offload_folder, probe_memory=probe_memory)
    except BaseException:
        if distributed.world_size() > 1 and distributed.is_main_process():
            distributed.share_from_main(b"")  # the other ranks wait for the fit: tell them it failed
        raise
    if distributed.world_size() == 1:
        return result.directions
    from .artifact import from_bytes, to_bytes

    shared = distributed.share_from_main(to_bytes(result.directions) if result is not None else None)
    if result is not None:
        return result.directions
    if not shared:
        raise ITIError("rank 0's fit failed (its error is above); this rank has no directions")
    return from_bytes(shared, "<rank 0's fit>")


def companion_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """(heatmap, summary) paths beside a directions file: ``dirs.safetensors`` -> ``dirs.heads.png``, ``dirs.summary.json``."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".safetensors" else out
    return stem.with_name(stem.name + ".heads.png"), stem.with_name(stem.name + ".summary.json")


def write_fit(result: FitResult, out: str | os.PathLike, model_name: str | None = None,
              write_plot: bool = True) -> FitResult:
    """Write the directions file, its heatmap (``write_plot``) and its JSON summary, each atomically."""
    out = Path(out)
    clock = time.perf_counter()
    heatmap_path, summary_path = companion_paths(out)
    result.directions = dataclasses.replace(result.directions, source=str(out))
    result.summary = {"out": str(out), "heatmap": str(heatmap_path) if write_plot else None, **result.summary}
    if write_plot:
        from .plots import heads_heatmap

        name = model_name or result.summary["model"]
        k = len(result.selected)
        random_heads = result.summary["options"]["random_heads"]
        heads_heatmap(result.probes.accuracy, result.selected, heatmap_path,
                      title=f"{Path(name).name or name}: probe validation accuracy, "
                            f"{k} {'random ' if random_heads else ''}selected heads outlined")
    save_directions(result.directions, out)
    result.timings["write"] = time.perf_counter() - clock
    write_json_atomic(summary_path, result.summary)
    result.out, result.summary_path = out, summary_path
    result.heatmap_path = heatmap_path if write_plot else None
    return result


@distributed.main_writes_others_wait  # under accelerate launch: rank 0 writes, the others return once it has
def fit_and_save(model, out: str | os.PathLike, *, tokenizer=None, revision: str | None = None, dtype: str = "auto",
                 device: str | None = None, gguf_file: str | None = None, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True, collect_all_folds: bool = False, progress: bool = True,
                 write_plot: bool = True, device_map=None, max_memory=None, offload_folder=None,
                 probe_memory: str = "memory", **options) -> FitResult | None:
    """``fit-directions``: the fit (activation cache on by default) and its files: ``out``, the heatmap and the summary.

    Activations are collected for the training fold's prompts only, unless ``collect_all_folds``: then every fold's
    prompts are collected and cached, so that fits of the other folds (``validate``, ``sweep``) read them back with
    no forward pass. A complete cache of every fold, when there, is read either way.
    """
    if Path(out).is_dir():
        raise ITIError(f"out={out}: is a folder; give a file name such as dirs.safetensors")
    cfg = make_config(**options)
    cache = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) if use_cache else None
    result = run_fit(model, tokenizer, cfg, revision=revision, dtype=dtype, device=device, gguf_file=gguf_file,
                     cache_dir=cache, collect_all_folds=collect_all_folds, progress=progress, source=str(out),
                     device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
                     probe_memory=probe_memory)
    if result is None:  # a non-main rank under accelerate launch: rank 0 writes
        return None
    return write_fit(result, out, write_plot=write_plot)


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
    check = summary.get("effect_check")
    if check:
        lines.append(f"heads ranked by effect: estimate vs measured one-head effect on {len(check['heads'])} heads, "
                     f"Spearman {check['spearman']:.2f} (p {check['p_value']:.2g})")
    auto = summary.get("alpha_auto")
    if auto:
        lines.append(f"alpha auto: {auto['alpha']:g} (KL budget {auto['kl_budget']:g} nats/token; measured "
                     + ", ".join(f"{m['alpha']:g}: {m['kl']:.3f}" for m in auto["measured"]) + ")")
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items()))
    return "\n".join(lines)
