"""The experiment engine behind ``validate`` and ``sweep``: folds x variants, fits, evaluation, CE/KL, resume.

For each fold i and each variant: fit on the other folds (``fit.fit_and_save`` with ``num_folds``/``fold`` and the same
seed, on the one loaded model: the activation cache makes every fit after the first free of forward passes), then
evaluate the variant on fold i through lm-eval (the tasks' fold metadata), check that no evaluated question is in
the directions file's recorded ``train_question_ids``, and measure CE/KL. Each fold x variant result is written to
``<run>/folds/fold_<i>_<variant>.json`` as soon as it is done, with a hash of every setting that defines it; a rerun
skips those whose hash matches (an interrupted run resumes), and redoes those whose settings changed or that lack
the per-question data (fold files written before it existed). Every run writes ``per_question.csv`` and
``per_question_choices.jsonl`` from its fold results (``records``).

The row's instruction reaches only the tasks whose prompt takes it (``INSTRUCTED_TASKS``: TruthfulQA MC and
generation); the binary and transfer tasks keep their own default (``none``) unless ``metadata`` sets
``instruction`` for them.

The hooked grid rows of a sweep over loglikelihood tasks are scored by the
shared-prefix engine (``harness.engine``: lm-eval builds the requests and computes the metrics, every such row of a
fold in one pass); each fold result and table row records ``scored_by`` ("engine" or "lm-eval"). ``engine="off"``
scores every row through lm-eval's hf-iti, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import __version__
from ..atomic import read_json_sealed, write_json_atomic, write_json_sealed, write_text_atomic
from ..choices import ENGINE_MODES
from ..data import HUB_ID, load_mc
from ..errors import ITIError
from ..loading import execution_device
from . import aggregate as agg
from . import records
from .baselines import AUTO, SELECT, SELECT_COLUMNS, Variant, curve_point, is_control

log = logging.getLogger(__name__)
RESULTS_FORMAT = "lm-eval-iti/experiment"
RESULTS_VERSION = 1
# settings that change how fast a run is, not what it computes: left out of the resume hash
NOT_HASHED = ("device", "batch_size", "fit_batch_size", "cache_dir", "progress", "folds", "engine",
              "engine_max_batch_bytes", "device_map", "max_memory", "offload_folder")

# The tasks whose prompt takes the row's instruction (harness/taskfns.py: their default is "default"). lm-eval merges
# runtime metadata over every task's own, so the instruction goes to these tasks only (driver's per_task_metadata):
# truthfulqa_iti_binary, nq_open_iti and trivia_qa_iti default to "none" and keep it.
INSTRUCTED_TASKS = ("truthfulqa_iti_mc1", "truthfulqa_iti_mc2", "truthfulqa_iti_mc3", "truthfulqa_iti_gen")


def instruction_metadata(instruction: str) -> dict[str, dict]:
    """The per-task metadata that gives a row's instruction to the tasks that take one."""
    return {task: {"instruction": instruction} for task in INSTRUCTED_TASKS}


@dataclass
class ExperimentConfig:
    model: str
    revision: str | None = None
    gguf_file: str | None = None
    dtype: str = "auto"
    device: str | None = None
    data_dir: str | None = None
    dataset: str = HUB_ID
    binary_data: str | None = None
    num_questions: int | None = None
    tasks: tuple[str, ...] = ("truthfulqa_iti",)
    num_folds: int = 2
    seed: int = 42
    contiguous_folds: bool = False
    limit: int | float | None = None
    # extra task metadata for every task (judge settings, ...); "instruction" here is the instruction of the tasks
    # that do not take the row's (binary, transfer): the MC/gen tasks always get the row's (INSTRUCTED_TASKS)
    metadata: dict = field(default_factory=dict)
    val_ratio: float = 0.2
    prompt_format: str = "qa"
    sigma_data: str = "gen_end_q"
    probe_backend: str = "torch"
    side_effects: bool = True
    corpus: str = "wikitext"
    num_docs: int = 100
    num_tokens: int = 128
    corpus_seed: int = 0
    detokenize: bool = True
    bootstrap_iters: int = 100000
    apply_chat_template: bool | str = False
    system_instruction: str | None = None
    gen_kwargs: str | None = None
    max_length: int | None = None
    batch_size: int = 8
    fit_batch_size: int = 16
    cache_dir: str | None = None
    progress: bool = True
    kl_budget: float = 0.2  # for alpha "auto" (side_effects.DEFAULT_KL_BUDGET)
    folds: tuple[int, ...] | None = None  # evaluate only these held-out folds (None: every fold)
    # hooked rows of loglikelihood tasks scored by the shared-prefix engine (harness.engine): auto = when every task
    # is a loglikelihood task; off = every row through lm-eval's hf-iti; on = refuse tasks it cannot score
    engine: str = "auto"
    engine_max_batch_bytes: int = 1 << 30
    device_map: str | dict | None = None  # accelerate placement (loading.load_model); not part of a run's identity
    max_memory: str | dict | None = None
    offload_folder: str | None = None

    def check(self) -> None:
        if self.num_folds < 2:
            raise ITIError(f"num_folds={self.num_folds}: need at least 2 folds (fit on the others, test on one)")
        if not self.tasks:
            raise ITIError("tasks=: give at least one task")
        if self.folds is not None and (not self.folds or any(not 0 <= f < self.num_folds for f in self.folds)):
            raise ITIError(f"folds {list(self.folds)}: each must be between 0 and num_folds - 1 = {self.num_folds - 1}")
        if self.engine not in ENGINE_MODES:
            raise ITIError(f"engine={self.engine!r} is not one of {', '.join(ENGINE_MODES)}")
        if self.engine_max_batch_bytes <= 0:
            raise ITIError(f"engine_max_batch_bytes={self.engine_max_batch_bytes} must be positive")
        if self.limit is not None and self.limit <= 0:
            raise ITIError(f"limit={self.limit} must be positive")
        reserved = {"num_folds", "fold", "seed", "contiguous_folds", "data_dir", "binary_data"}
        clash = sorted(reserved & set(self.metadata))
        if clash:
            raise ITIError(f"metadata={clash[0]}: set by the experiment itself (use its own option instead)")
        if "instruction" in self.metadata:  # a typo fails now, not after the first fit
            from ..prompts import check_instruction

            check_instruction(self.metadata["instruction"])
        for key in ("api_key", "judge_api_key", "openai_api_key"):
            if key in self.metadata:
                raise ITIError(f"metadata={key}: keys are read from the environment only, never from options")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Experiment:
    """``Experiment(config, variants, out_dir, kind).run()`` -> the results dict (also written to ``out_dir``)."""

    def __init__(self, config: ExperimentConfig, variants: list[Variant], out_dir: str | os.PathLike,
                 kind: str = "validate"):
        config.check()
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ITIError(f"two variants share a name: {names}")
        self.config = config
        self.variants = variants
        self.out = Path(out_dir)
        if self.out.exists() and not self.out.is_dir():
            raise ITIError(f"out={out_dir}: exists and is not a folder")
        self.kind = kind
        self._model = None
        self._tokenizer = None
        self._fits: dict = {}
        self._engine_ok: bool | None = None
        self._engine_results: dict[tuple[int, str], dict] = {}
        self._docs = None
        self._corpus_info = None
        self._kl_meter = None
        self._resolved: dict = {}
        self._base_logits: dict = {}  # CE/KL: the unedited logits of each document batch, computed once per run
        self._base_side_effects = None
        self._view = None  # (fold, fit spec, controls.FitView): the activations the control rows are built from
        self.evaluations = 0  # variants evaluated in this process (resume skips do not count)
        self.fits_run: list[dict] = []

    # data ---------------------------------------------------------------------------------------------------------
    def _prepare_data(self) -> None:
        c = self.config
        if c.num_questions is not None:
            from .subset import write_truthfulqa_subset

            if c.data_dir is None:
                raise ITIError("num_questions= needs data_dir= (a local TruthfulQA folder to take the subset from)")
            sub = write_truthfulqa_subset(c.data_dir, self.out / "data", c.num_questions, c.binary_data)
            self.source = sub["data_dir"]
            self.binary_data = sub["binary_data"]
        else:
            self.source = c.data_dir if c.data_dir is not None else c.dataset
            self.binary_data = c.binary_data
        docs = load_mc(self.source)
        self.mc_docs = docs  # the answer style and length strata of comparisons
        if len(docs) < c.num_folds:
            raise ITIError(f"num_folds={c.num_folds} is more than the {len(docs)} questions of {self.source}")
        self.questions = [d["question"] for d in docs]
        from ..fit import data_sha256  # the same hash the fits record

        self.data_sha256 = data_sha256(docs)

    def task_metadata(self, fold: int) -> dict:
        """The metadata every task of ``fold`` gets; a row's instruction goes to some only (instruction_metadata)."""
        c = self.config
        meta = dict(c.metadata)
        meta.update(num_folds=c.num_folds, fold=fold, seed=c.seed, contiguous_folds=c.contiguous_folds,
                    data_dir=self.source)
        if self.binary_data is not None:
            meta["binary_data"] = self.binary_data
        return meta

    def settings(self) -> dict:
        s = {k: v for k, v in asdict(self.config).items() if k not in NOT_HASHED}
        s["tasks"] = list(s["tasks"])
        s["data_sha256"] = self.data_sha256
        # the judge resolved from metadata *and* environment (secret-free): another judge must not resume old folds
        from ..judges.config import from_sources

        s["judge"] = from_sources(self.config.metadata).record()
        return s

    def fold_hash(self, fold: int, variant: Variant) -> str:
        key = {"settings": self.settings(), "variant": variant.describe(), "fold": fold, "format": RESULTS_VERSION}
        if self.engine_candidate(variant):  # an engine row and an lm-eval row are different results
            key["engine"] = self.config.engine
        return _sha(key)

    # the shared-prefix engine ---------------------------------------------------------------------------------
    def engine_enabled(self) -> bool:
        """--engine auto: only when every task is a loglikelihood task; on: refuse the others; off: never."""
        if self._engine_ok is None:
            c = self.config
            if c.engine == "off":
                self._engine_ok = False
            else:
                from ..harness.engine import loglikelihood_only

                others = loglikelihood_only(list(c.tasks), self.task_metadata(0))
                if others and c.engine == "on":
                    raise ITIError(f"engine=on: the engine scores loglikelihood tasks only, and "
                                   f"{', '.join(others)} is not one; use engine=auto or off")
                self._engine_ok = not others
        return self._engine_ok

    def engine_candidate(self, variant: Variant) -> bool:
        """Sweep grid rows: hooked at a fixed strength, not a control draw nor the row meant for lm-eval itself.
        validate's rows are the published ones: lm-eval scores them, unless engine="on" asks the engine to score
        every hf and hf-iti row (the engine equals hf-iti per request within 1e-4, tests/test_engine.py)."""
        if self.kind == "validate":
            return self.config.engine == "on" and variant.kind in ("hf", "hf-iti")
        return (self.kind == "sweep" and variant.kind == "hf-iti" and variant.alpha != AUTO
                and not is_control(variant) and not variant.extra.get("lm_eval"))

    def uses_engine(self, variant: Variant) -> bool:
        return self.engine_candidate(variant) and self.engine_enabled()

    def engine_evaluation(self, fold: int, variant: Variant) -> dict:
        """The run_tasks-style evaluation of ``variant`` on ``fold``; the first request scores, in one engine call,
        every engine row of the fold that shares its positions and instruction (and, in a sweep, its fit) and is not
        on disk yet (validate: ``_engine_validate_group``, each row with its own directions and alpha)."""
        key = (fold, variant.name)
        if key not in self._engine_results:
            if self.kind == "validate":
                self._engine_validate_group(fold, variant)
                return self._engine_results.pop(key)
            from ..harness.engine import score_points

            c = self.config
            model, tokenizer = self.model()
            group = [v for v in self.variants if self.uses_engine(v) and v.fit == variant.fit
                     and v.mc_positions == variant.mc_positions and v.instruction == variant.instruction
                     and (v is variant or self.saved_result(fold, v) is None)]
            directions = self.fit(fold, variant.fit)["directions"]
            evaluations = score_points(model, tokenizer, list(c.tasks), self.task_metadata(fold),
                                       directions, [(v.alpha if v.kind != "hf" else 0.0, v.heads) for v in group],
                                       per_task_metadata=instruction_metadata(variant.instruction),
                                       mc_positions=variant.mc_positions, limit=c.limit,
                                       bootstrap_iters=c.bootstrap_iters, apply_chat_template=c.apply_chat_template,
                                       system_instruction=c.system_instruction, max_length=c.max_length,
                                       batch_size=c.batch_size, max_batch_bytes=c.engine_max_batch_bytes)
            for v, evaluation in zip(group, evaluations):
                self._engine_results[(fold, v.name)] = evaluation
        return self._engine_results.pop(key)

    def _engine_validate_group(self, fold: int, variant: Variant) -> None:
        """Score, in one engine call, every engine row of validate on ``fold`` that shares ``variant``'s positions
        and instruction and is not on disk yet, each at its own resolved alpha and K with its own directions (ITI,
        the control draws, random heads, probe weights, the unedited rows): one forward per prompt serves every row,
        which is what makes a table of controls affordable."""
        from .. import prefix_scoring
        from ..harness.engine import score_points

        c = self.config
        model, tokenizer = self.model()
        names = [v for v in self.variants if self.uses_engine(v) and v.mc_positions == variant.mc_positions
                 and v.instruction == variant.instruction
                 and (v is variant or self.saved_result(fold, v) is None)]
        points, labels = [], []
        for v in names:
            resolved, fit = self.resolve(fold, v)[:2]
            alpha = 0.0 if resolved.kind == "hf" else float(resolved.alpha)
            directions = fit["directions"] if fit is not None else None
            points += prefix_scoring.make_points(directions, [(alpha, resolved.heads)])
            labels.append((alpha, resolved.heads))
        evaluations = score_points(model, tokenizer, list(c.tasks), self.task_metadata(fold),
                                   None, labels, points=points, mc_positions=variant.mc_positions, limit=c.limit,
                                   per_task_metadata=instruction_metadata(variant.instruction),
                                   bootstrap_iters=c.bootstrap_iters, apply_chat_template=c.apply_chat_template,
                                   system_instruction=c.system_instruction, max_length=c.max_length,
                                   batch_size=c.batch_size, max_batch_bytes=c.engine_max_batch_bytes)
        for v, evaluation in zip(names, evaluations):
            evaluation["model_info"] = dict(evaluation["model_info"], engine_rows_in_call=len(names))
            self._engine_results[(fold, v.name)] = evaluation

    def fold_path(self, fold: int, variant: Variant) -> Path:
        return self.out / "folds" / f"fold_{fold}_{variant.name}.json"

    def saved_result(self, fold: int, variant: Variant) -> dict | None:
        """The fold file of ``variant`` when it can be reused: computed with these settings (its hash) and carrying
        the per-question data (a file from before per-question records is stale: its row is recomputed)."""
        previous = _read_json(self.fold_path(fold, variant))
        if not isinstance(previous, dict) or previous.get("settings_hash") != self.fold_hash(fold, variant):
            return None
        if not records.has_records(previous):
            log.info("%s: no per-question data (written by an older version); recomputing it",
                     self.fold_path(fold, variant))
            return None
        return previous

    def judged_result(self, fold: int, variant: Variant, saved: dict) -> dict | None:
        """``saved`` with the judgments an outage left out made now from its kept answers (judges.folds), written
        back; None when it lacks judgments and kept no answers, so it must be evaluated again."""
        from ..judges.folds import complete_fold

        completed = complete_fold(saved, self.config.metadata)
        if completed is not None and completed is not saved:
            write_json_sealed(self.fold_path(fold, variant), completed)
        return completed

    # model, fits, corpus (loaded lazily: a fully resumed run loads nothing) ----------------------------------------
    def model(self):
        if self._model is None:
            from ..fit import load_model

            c = self.config
            self._model, self._tokenizer = load_model(c.model, c.revision, c.dtype, c.device, c.progress,
                                                        gguf_file=c.gguf_file, device_map=c.device_map,
                                                        max_memory=c.max_memory, offload_folder=c.offload_folder)
        return self._model, self._tokenizer

    def fit(self, fold: int, spec) -> dict:
        key = (fold, spec)
        if key in self._fits:
            return self._fits[key]
        from ..artifact import file_sha256, load_directions
        from ..fit import fit_and_save

        c = self.config
        model, tokenizer = self.model()
        path = self.out / "directions" / f"fold_{fold}_{spec.name}.safetensors"
        result = fit_and_save(model, path, tokenizer=tokenizer, **self._fit_options(fold, spec),
                                probe_backend=c.probe_backend, cache_dir=c.cache_dir, revision=c.revision,
                                progress=c.progress, collect_all_folds=self._collect_all_folds())
        directions = load_directions(path)
        recorded = json.loads(directions.metadata["train_question_ids"])
        record = {"fold": fold, "fit": spec.name, "path": str(path), "sha256": file_sha256(path),
                  "train_question_ids_sha256": directions.metadata.get("train_question_ids_sha256", ""),
                  "num_train_questions": len(recorded), "forward_passes": result.forward_passes,
                  "method": spec.method, "random_heads": spec.random_heads, "num_heads": spec.num_heads}
        self.fits_run.append(record)
        self._fits[key] = {"record": record, "directions": directions, "train_ids": set(recorded)}
        return self._fits[key]

    def _fit_options(self, fold: int, spec) -> dict:
        """The options (fit.FitConfig fields) of ``spec``'s fit on ``fold``: what fit_and_save and fit_view share."""
        c = self.config
        local = c.data_dir is not None or c.num_questions is not None
        source = {"data_dir": self.source} if local else {"dataset": self.source}
        return dict(source, num_heads=spec.num_heads, method=spec.method, random_heads=spec.random_heads,
                    val_ratio=c.val_ratio, seed=c.seed, num_folds=c.num_folds, fold=fold,
                    contiguous_folds=c.contiguous_folds, prompt_format=c.prompt_format, sigma_data=c.sigma_data,
                    batch_size=c.fit_batch_size)

    def _collect_all_folds(self) -> bool:
        # one cache that every evaluated fold's fit reads (a single-fold run needs only its own)
        return self.config.folds is None or len(self.config.folds) > 1

    def fit_view(self, fold: int, spec):
        """The activations, labels and answers ``spec``'s fit on ``fold`` was computed from (controls.fit_view), read
        from the activation cache the fit filled; only the latest fold's is kept in memory (rows run fold by fold)."""
        if self._view is None or self._view[:2] != (fold, spec):
            from .controls import fit_view

            c = self.config
            model, tokenizer = self.model()
            clock = time.perf_counter()
            view = fit_view(model, tokenizer, self._fit_options(fold, spec), revision=c.revision,
                            cache_dir=c.cache_dir, collect_all_folds=self._collect_all_folds(), progress=c.progress)
            view.seconds = round(time.perf_counter() - clock, 3)
            self._view = (fold, spec, view)
        return self._view[2]

    def corpus(self):
        if self._docs is None:
            from .side_effects import corpus_docs

            c = self.config
            _, tokenizer = self.model()
            self._docs, self._corpus_info = corpus_docs(tokenizer, c.corpus, c.num_docs, c.num_tokens,
                                                        c.corpus_seed, c.detokenize)
        return self._docs

    def control(self, fold: int, fit: dict, variant: Variant) -> dict:
        """A control row's directions, built from the fold's ITI fit (``variant.extra["control"]``): random directions
        on its heads with its sigmas (random-matched), or, from the activations that fit read (no forward pass),
        random heads, label-shuffled or style directions (``controls``); saved beside the fits."""
        from ..artifact import file_sha256, save_directions

        clock = time.perf_counter()
        directions, view = self._control_directions(fold, fit, variant)
        path = self.out / "directions" / f"fold_{fold}_{variant.name}.safetensors"
        save_directions(directions, path)
        record = dict(fit["record"], path=str(path), sha256=file_sha256(path), fit=f"{fit['record']['fit']}-{variant.name}",
                      control_of=fit["record"]["path"], control=variant.extra["control"],
                      control_seed=variant.extra.get("control_seed"),
                      control_seconds=round(time.perf_counter() - clock, 3),
                      # the activations came from the cache: the forward passes reading them made (0 after the fit)
                      control_forward_passes=view.forward_passes if view is not None else 0)
        return {"record": record, "directions": directions, "train_ids": fit["train_ids"]}

    def _control_directions(self, fold: int, fit: dict, variant: Variant):
        """(directions, the FitView they were built from or None) of a control row on ``fold``; every draw is seeded
        by (run seed, fold, draw[, layer]), so no vector or head set is shared between folds or draws."""
        from . import controls
        from ..select import matched_random_directions

        family, draw, seed = variant.extra["control"], int(variant.extra.get("control_seed", 0)), self.config.seed
        if family == "random-matched":
            return matched_random_directions(fit["directions"], draw, variant.extra.get("orthogonal", False),
                                             fold=fold, run_seed=seed), None
        view = self.fit_view(fold, variant.fit)
        if family == "random-heads":
            return controls.random_head_directions(fit["directions"], view, fold=fold, draw=draw, run_seed=seed), view
        if family == "label-shuffled":
            return controls.label_shuffled_directions(fit["directions"], view, fold=fold, draw=draw,
                                                      run_seed=seed), view
        if family == "style":
            return controls.style_directions(fit["directions"], view), view
        raise ITIError(f"{variant.name}: unknown control {family!r}")

    def auto_alpha(self, fold: int) -> dict:
        """The fold's alpha by the KL budget, measured on the main ITI fit of the fold (saved, reused on resume)."""
        from .side_effects import alpha_for_kl_budget

        # the main ITI row ("iti") when there is one, else the first hooked row with alpha auto
        main = min((v for v in self.variants if v.kind == "hf-iti" and v.alpha == AUTO), key=lambda v: v.name != "iti")
        key = {"settings": self.settings(), "fit": main.fit.name, "heads": main.heads, "fold": fold}
        path = self.out / "folds" / f"fold_{fold}_alpha_auto.json"
        previous = _saved_for(path, key)
        if previous is not None:
            return previous
        c = self.config
        model, tokenizer = self.model()
        directions = self.fit(fold, main.fit)["directions"]
        directions = directions.top_k(main.heads) if main.heads else directions
        choice = alpha_for_kl_budget(model, tokenizer, directions, kl_budget=c.kl_budget, corpus=c.corpus,
                                     num_tokens=c.num_tokens, batch_size=c.batch_size, progress=c.progress,
                                     held_out_from=(c.num_docs, c.corpus_seed))
        choice.update(settings_hash=_sha(key), fit=main.fit.name)
        write_json_sealed(path, choice)
        return choice

    def kl_meter(self):
        """One held-out text sample (not the reported CE/KL sample) for every KL the run chooses by."""
        if self._kl_meter is None:
            from .side_effects import AUTO_NUM_DOCS, KLMeter

            c = self.config
            model, tokenizer = self.model()
            self._kl_meter = KLMeter(model, tokenizer, c.corpus, AUTO_NUM_DOCS, c.num_tokens,
                                     batch_size=c.batch_size, held_out_from=(c.num_docs, c.corpus_seed),
                                     what="KL budget")
        return self._kl_meter

    def kl_match(self, fold: int, variant: Variant, control: dict) -> dict:
        """The alpha at which the control's directions cost the KL that the fold's ITI row (same fit, alpha and K,
        already resolved in ``variant``) costs on the KL sample; saved to ``folds/fold_<i>_<name>_kl_match.json``."""
        from .side_effects import alpha_for_kl_target

        key = {"settings": self.settings(), "variant": variant.describe(), "fold": fold,
               "control_sha256": control["record"]["sha256"]}
        path = self.out / "folds" / f"fold_{fold}_{variant.name}_kl_match.json"
        previous = _saved_for(path, key)
        if previous is not None:
            return previous
        meter = self.kl_meter()
        fitted = self.fit(fold, variant.fit)["directions"]
        fitted = fitted.top_k(variant.heads) if variant.heads else fitted
        target = meter(fitted, variant.alpha)
        mine = control["directions"].top_k(variant.heads) if variant.heads else control["directions"]
        match = alpha_for_kl_target(meter, mine, target, start=float(variant.alpha))
        match.update(settings_hash=_sha(key), iti_alpha=variant.alpha, iti_num_heads=variant.heads)
        write_json_sealed(path, match)
        return match

    def nested_selection(self, fold: int) -> dict:
        """alpha and K for outer ``fold``, chosen on its training questions only: they become a local data folder
        with ``inner_folds`` folds of their own; for each inner fold, directions are fitted on the other inner folds
        and the grid is scored on it by the engine (``by``'s task); the best mean over inner folds wins (ties: the
        first in grid order, smaller alpha and K first). Saved to ``folds/fold_<i>_select.json`` (reused on resume)."""
        from ..artifact import load_directions
        from ..fit import fit_and_save
        from ..folds import fold_assignment
        from ..harness.engine import score_points
        from .aggregate import fold_columns
        from .subset import write_truthfulqa_subset

        main = next(v for v in self.variants if v.alpha == SELECT and "select" in v.extra)
        spec = main.extra["select"]
        key = {"settings": self.settings(), "variant": main.describe(), "fold": fold}
        path = self.out / "folds" / f"fold_{fold}_select.json"
        previous = _saved_for(path, key)
        if previous is not None:
            return previous
        c = self.config
        model, tokenizer = self.model()
        assignment = fold_assignment(self.questions, c.num_folds, c.seed, c.contiguous_folds)
        held_out = {q.strip() for q, f in zip(self.questions, assignment) if f == fold}
        training = {q.strip() for q, f in zip(self.questions, assignment) if f != fold}
        work = self.out / "select" / f"fold_{fold}"
        sub = write_truthfulqa_subset(self.source, work / "data", None, self.binary_data, keep=training)
        grid = [(a, k) for a in spec["alphas"] for k in spec["num_heads"]]
        task = SELECT_COLUMNS[spec["by"]]
        from ..folds import question_id

        held_out_ids = {question_id(q) for q in held_out}
        scores, inner_records = [[] for _ in grid], []
        kl_per_point, unedited = [[] for _ in grid], []
        for inner in range(spec["inner_folds"]):
            directions_path = work / "directions" / f"inner_{inner}.safetensors"
            fit_and_save(model, directions_path, tokenizer=tokenizer, data_dir=sub["data_dir"],
                           num_heads=main.fit.num_heads, method=main.fit.method, random_heads=main.fit.random_heads,
                           val_ratio=c.val_ratio, seed=c.seed, num_folds=spec["inner_folds"], fold=inner,
                           contiguous_folds=c.contiguous_folds, prompt_format=c.prompt_format,
                           sigma_data=c.sigma_data, batch_size=c.fit_batch_size, cache_dir=c.cache_dir,
                           probe_backend=c.probe_backend, revision=c.revision, progress=c.progress,
                           collect_all_folds=True, write_plot=False)
            directions = load_directions(directions_path)
            budget = spec.get("kl_budget")
            kls = [self.kl_meter()(directions.top_k(k), a) for a, k in grid] if budget else [None] * len(grid)
            allowed = [i for i, kl in enumerate(kls) if kl is None or kl <= budget]
            metadata = dict(c.metadata, num_folds=spec["inner_folds"], fold=inner, seed=c.seed,
                            contiguous_folds=c.contiguous_folds, data_dir=sub["data_dir"])
            if sub["binary_data"] is not None:
                metadata["binary_data"] = sub["binary_data"]
            if not allowed:
                raise ITIError(f"fold {fold}: every (alpha, K) of the selection grid costs more than the KL budget "
                               f"{budget:g} on inner fold {inner} (smallest {min(kls):.3g}); add smaller alphas or K")
            # alpha 0 first: the unedited reference of the inner fold (recorded, never chosen)
            evaluations = score_points(model, tokenizer, [task], metadata, directions,
                                       [(0.0, None)] + [grid[i] for i in allowed],
                                       mc_positions=main.mc_positions, limit=c.limit, bootstrap_iters=0,
                                       per_task_metadata=instruction_metadata(main.instruction),
                                       apply_chat_template=c.apply_chat_template,
                                       system_instruction=c.system_instruction, max_length=c.max_length,
                                       batch_size=c.batch_size, max_batch_bytes=c.engine_max_batch_bytes)
            evaluated = set(evaluations[0]["question_ids"].get(task, []))
            fitted = set(json.loads(directions.metadata["train_question_ids"]))
            if evaluated & held_out_ids or evaluated & fitted:
                raise ITIError(f"fold {fold}: nested selection scored a held-out or fitted question (inner fold "
                               f"{inner}); the folds of fit and tasks disagree")
            unedited.append(fold_columns({"metrics": evaluations[0]["metrics"]})[spec["by"]][0])
            scored = dict(zip(allowed, evaluations[1:]))
            for i in range(len(grid)):  # a point over the KL budget is not scored: it cannot be chosen
                value = fold_columns({"metrics": scored[i]["metrics"]})[spec["by"]][0] if i in scored else None
                scores[i].append(value)
                kl_per_point[i].append(kls[i])
            inner_records.append({"inner_fold": inner, "evaluated_questions": len(evaluated),
                                  "fit_questions": len(fitted), "directions": str(directions_path)})
        means = [sum(s) / len(s) if s and None not in s else None for s in scores]
        if all(m is None for m in means):
            raise ITIError(f"fold {fold}: nested selection found no {spec['by']} value to choose by"
                           + (f" within the KL budget {spec['kl_budget']:g} on every inner fold"
                              if spec.get("kl_budget") else ""))
        best = max((i for i, m in enumerate(means) if m is not None), key=lambda i: (means[i], -i))
        record = {"settings_hash": _sha(key), "fold": fold, "by": spec["by"], "task": task,
                  "alpha": grid[best][0], "num_heads": grid[best][1], "inner_folds": inner_records,
                  "scored_by": "engine", "training_questions": len(training), "kl_budget": spec.get("kl_budget"),
                  "kl_sample": self.kl_meter().describe() if spec.get("kl_budget") else None,
                  "unedited": {"per_inner_fold": unedited, "mean": sum(unedited) / len(unedited)},
                  "grid": [{"alpha": a, "num_heads": k, "per_inner_fold": s, "mean": m, "kl_per_inner_fold": kl,
                            "kl_mean": sum(kl) / len(kl) if kl and None not in kl else None}
                           for (a, k), s, m, kl in zip(grid, scores, means, kl_per_point)]}
        write_json_sealed(path, record)
        return record

    # one fold x variant ---------------------------------------------------------------------------------------------
    def resolve(self, fold: int, variant: Variant):
        """(variant with its fold's alpha and K, its fit or control (None for an unedited row), the alpha-auto,
        selection and KL-match records); every record is saved, so resolving again reads them back."""
        key = (fold, variant.name)
        if key in self._resolved:
            return self._resolved[key]
        fit = self.fit(fold, variant.fit) if variant.fit is not None and variant.alpha != 0 else None
        if fit is not None and is_control(variant):
            fit = self.control(fold, fit, variant)
        auto = selected = kl_matched = None
        if variant.alpha == AUTO:
            auto = self.auto_alpha(fold)
            variant = replace(variant, alpha=auto["alpha"])
        elif variant.alpha == SELECT:
            selected = self.nested_selection(fold)
            variant = replace(variant, alpha=selected["alpha"], heads=selected["num_heads"])
        if variant.extra.get("match_kl"):
            kl_matched = self.kl_match(fold, variant, fit)
            variant = replace(variant, alpha=kl_matched["alpha"])
        if "curve_scale" in variant.extra:  # a curve point: the row's own resolved alpha, scaled
            variant = replace(variant, alpha=float(variant.alpha) * float(variant.extra["curve_scale"]))
        self._resolved[key] = (variant, fit, auto, selected, kl_matched)
        return self._resolved[key]

    def run_one(self, fold: int, variant: Variant) -> dict:
        from ..harness.driver import run_tasks
        from ..harness.variants import variant_lm
        from ..judges.glue import keep_judged
        from .side_effects import measure

        c = self.config
        model, tokenizer = self.model()
        described, settings_hash = variant.describe(), self.fold_hash(fold, variant)
        variant, fit, auto, selected, kl_matched = self.resolve(fold, variant)
        clock = time.perf_counter()
        # before variant_lm: the engine adds each point's shift itself and refuses a model with hf-iti's hooks
        evaluation = self.engine_evaluation(fold, variant) if self.uses_engine(variant) else None
        work = self.out / "directions"
        work.mkdir(parents=True, exist_ok=True)
        with variant_lm(variant, model, tokenizer, fit["record"]["path"] if fit else None,
                        fit["directions"] if fit else None, batch_size=c.batch_size, work_dir=work,
                        max_length=c.max_length) as (lm, logits_fns, lm_info):
            judged: list[dict] = []  # the judged answers, kept so that a rerun can finish an outage's judging
            if evaluation is None:
                with keep_judged() as judged:
                    evaluation = run_tasks(lm, list(c.tasks), self.task_metadata(fold),
                                           per_task_metadata=instruction_metadata(variant.instruction),
                                           limit=c.limit, bootstrap_iters=c.bootstrap_iters,
                                           apply_chat_template=c.apply_chat_template,
                                           system_instruction=c.system_instruction, gen_kwargs=c.gen_kwargs)
                evaluation["model_info"] = dict(evaluation["model_info"], scored_by="lm-eval")
            self.evaluations += 1
            evaluated = set().union(*evaluation["question_ids"].values()) if evaluation["question_ids"] else set()
            leak = {"evaluated_questions": len(evaluated), "checked_against": None, "overlap": None}
            if fit is not None:
                overlap = evaluated & fit["train_ids"]
                leak = {"evaluated_questions": len(evaluated), "checked_against": fit["record"]["path"],
                        "directions_train_questions": len(fit["train_ids"]), "overlap": len(overlap)}
                if overlap:
                    raise ITIError(f"fold {fold} ({variant.name}): {len(overlap)} evaluated question(s) are in the "
                                   f"training questions of {fit['record']['path']} (e.g. {sorted(overlap)[0]}); "
                                   "the folds of fit and tasks disagree")
            side = None
            if c.side_effects:
                docs = self.corpus()
                base_fn, steered_fn = logits_fns
                if variant.kind == "hf":  # no edit: steered == base; measured once per run
                    if self._base_side_effects is None:
                        self._base_side_effects = measure(base_fn, base_fn, docs, c.batch_size,
                                                          device=execution_device(model),
                                                          progress=c.progress, desc="CE/KL base",
                                                          base_cache=self._base_logits)
                    side = dict(self._base_side_effects)
                else:
                    side = measure(base_fn, steered_fn, docs, c.batch_size, device=execution_device(model),
                                   progress=c.progress, desc=f"CE/KL fold {fold} {variant.name}",
                                   base_cache=self._base_logits)
                side = {k: v for k, v in side.items() if k != "per_doc"}
        return {
            "format": RESULTS_FORMAT, "fold": fold, "num_folds": c.num_folds, "variant": described,
            "alpha_used": variant.alpha, "alpha_auto": auto, "scored_by": evaluation["model_info"]["scored_by"],
            "num_heads_used": variant.heads or (variant.fit.num_heads if variant.fit else None),
            "selection": selected, "kl_match": kl_matched,
            "settings_hash": settings_hash, "metrics": evaluation["metrics"],
            "n_samples": evaluation["n_samples"], "question_ids": evaluation["question_ids"], "leak_check": leak,
            "per_question": evaluation["per_question"], "choice_loglikelihoods": evaluation["choice_loglikelihoods"],
            "judge_answers": judged,
            "directions": fit["record"] if fit else None, "model_info": dict(evaluation["model_info"], **lm_info),
            "side_effects": side, "seconds": round(time.perf_counter() - clock, 2), "package_version": __version__,
        }

    # the whole run -----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        self._prepare_data()
        c = self.config
        fold_results: dict[str, list[dict]] = {v.name: [] for v in self.variants}
        resumed = []
        jobs = [(fold, v) for fold in (c.folds or range(c.num_folds)) for v in self.variants]
        for fold, variant in tqdm(jobs, desc=f"{self.kind}: folds x variants", disable=not c.progress, unit="eval"):
            path = self.fold_path(fold, variant)
            previous = self.saved_result(fold, variant)
            if previous is not None:
                previous = self.judged_result(fold, variant, previous)
            if previous is not None:
                fold_results[variant.name].append(previous)
                resumed.append(path.name)
                continue
            result = self.run_one(fold, variant)
            write_json_sealed(path, result)
            fold_results[variant.name].append(result)
        results = self.summarise(fold_results, resumed)
        # from the fold results, so a resumed row's records come from its fold file
        results["per_question"] = records.write_records(self.out, fold_results)
        results.update(self.comparisons(fold_results, results["rows"]))
        results["draw_summaries"] = agg.summarise_draws(results["rows"])
        if self.kind == "validate":
            from .plots import pareto

            figure = pareto(results, self.out / "pareto.png", title=f"{c.model}: MC gain against KL")
            results["plots"] = {"pareto": str(figure) if figure else None}
        write_json_atomic(self.out / "results.json", results)
        write_text_atomic(self.out / "table.md", table_markdown(results))
        return results

    def comparisons(self, fold_results: dict[str, list[dict]], rows: list[dict]) -> dict:
        """results.json's ``comparisons`` (``comparisons.table_comparisons`` of the main table and, apart, of the
        curve table), from the per-question records, and ITI's gain by answer style and length (``strata_gains``)."""
        from . import comparisons as cmp
        from .answer_style import question_strata

        clock = time.perf_counter()
        scores = cmp.scores_from_lines(records.question_lines(fold_results))
        names = [r["variant"] for r in rows]
        curves = [n for n in names if curve_point(n)]
        found = cmp.table_comparisons(scores, [n for n in names if n not in curves], table="main")
        if curves:
            found += cmp.table_comparisons(scores, curves, table="curves")
        strata = question_strata(self.mc_docs)
        gains = cmp.strata_gains(scores, strata)
        counts = {split: {s: list(strata[split].values()).count(s) for s in sorted(set(strata[split].values()))}
                  for split in ("style", "length")}
        return {"comparisons": found, "strata_gains": gains,
                "comparison_settings": dict(cmp.settings(), seconds=round(time.perf_counter() - clock, 2),
                                            strata_questions=counts, median_words=strata["median_words"])}

    def summarise(self, fold_results: dict[str, list[dict]], resumed: list[str]) -> dict:
        c = self.config
        rows, directions = [], []
        settings = self.settings()
        for v in self.variants:
            folds = fold_results[v.name]
            alpha = v.alpha if v.alpha not in (AUTO, SELECT) else \
                f"{v.alpha}: " + "/".join(format(f["alpha_used"], "g") for f in folds)
            if v.extra.get("match_kl"):
                alpha = "KL-matched: " + "/".join(format(f["alpha_used"], ".3g") for f in folds)
            k = v.num_heads if v.alpha != SELECT else "select: " + "/".join(str(f["num_heads_used"]) for f in folds)
            metrics = agg.aggregate_variant(folds)
            rows.append({"model": c.model, "method": v.label, "α": alpha, "K": k, "variant": v.name,
                         "kind": v.kind, "positions": v.positions, "instruction": v.instruction,
                         **row_definition(v, folds, metrics, settings),
                         "scored_by": "/".join(sorted({f.get("scored_by", "lm-eval") for f in folds})) or None,
                         "metrics": metrics})
            for f in folds:
                if f.get("directions"):
                    directions.append(dict(f["directions"], variant=v.name))
        fits = {}
        for d in directions:
            fits.setdefault((d["fold"], d["fit"]), {k: d[k] for k in ("fold", "fit", "path", "sha256",
                                                                        "train_question_ids_sha256",
                                                                        "num_train_questions", "forward_passes")})
        leak = [{"fold": f["fold"], "variant": v, **f["leak_check"]} for v, fs in fold_results.items() for f in fs]
        return {
            "format": RESULTS_FORMAT, "format_version": RESULTS_VERSION, "kind": self.kind,
            "settings": dict(settings, data_source=self.source, binary_data_used=self.binary_data),
            "variants": [v.describe() for v in self.variants],
            "rows": rows,
            # the per-question data stays in the fold files and per_question*.{csv,jsonl} (results["per_question"])
            "folds": {name: [records.without_records(f) for f in fs] for name, fs in fold_results.items()},
            "directions_files": sorted(fits.values(), key=lambda d: (d["fold"], d["fit"])),
            "fits_this_process": self.fits_run,
            "leak_check": {"overlap_total": sum(x["overlap"] or 0 for x in leak), "per_fold": leak},
            "side_effects_corpus": self._corpus_info,
            "resumed_from_disk": resumed,
            "evaluations_this_process": self.evaluations,
            "package_version": __version__, "lm_eval_version": _lm_eval_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def row_definition(variant: Variant, folds: list[dict], metrics: dict, settings: dict) -> dict:
    """The table's columns that say what defines a row besides method, alpha and K: the edited MC/gen positions, the
    judges (id@revision) where the row was judged, the data's sha256 (short) and how many questions it scored."""
    edits = {"hf": "none", "hf-iti": f"{variant.mc_positions}/{variant.gen_positions}"}.get(variant.kind, "every/every")
    judged = any((metrics.get(c) or {}).get("mean") is not None for c in ("True", "Info"))
    questions = sum(len(set().union(*(f.get("question_ids") or {}).values())) for f in folds if f.get("question_ids"))
    return {"mc/gen": edits, "judge": judge_label(settings.get("judge") or {}) if judged else None,
            "data": str(settings.get("data_sha256", ""))[:12] or None, "N": questions or None}


def judge_label(record: dict) -> str | None:
    """"truth-judge@rev" (one judge for both) or "truth: a@r; info: b@r" from a judge record (judges.config)."""
    if record.get("backend", "none") == "none":
        return None
    names = [(record.get(f"{k}_judge") or "?") + (f"@{record[f'{k}_revision']}" if record.get(f"{k}_revision") else "")
             for k in ("truth", "info")]
    return names[0] if names[0] == names[1] else f"truth: {names[0]}; info: {names[1]}"


def _saved_for(path: Path, key) -> dict | None:
    """The record saved at ``path`` when it was computed for exactly ``key`` (its settings hash), else None."""
    previous = _read_json(path)
    return previous if previous is not None and previous.get("settings_hash") == _sha(key) else None


def _read_json(path: Path):
    """A saved record, or None (recomputed) when it is missing, unreadable, unsealed or edited since it was written."""
    record, problem = read_json_sealed(path)
    if problem is not None and problem != "missing":
        log.warning("lm-eval-iti: recomputing %s", problem)
    return record


def _lm_eval_version() -> str:
    try:
        from importlib.metadata import version

        return version("lm-eval")
    except Exception:  # not installed as a distribution
        return ""


def table_markdown(results: dict) -> str:
    """The run's table (rows = variants, Δ against the baseline with its CI and p), ITI against each family of
    control draws, ITI's gain by answer style and length, the curve rows, and the token semantics of each method."""
    rows = results["rows"]
    s = results["settings"]
    limit = f", limit {s['limit']}" if s.get("limit") else ""
    evaluated = sorted({f["fold"] for fs in results["folds"].values() for f in fs})
    only = f", evaluated on held-out fold {', '.join(map(str, evaluated))} only" if len(evaluated) < s["num_folds"] else ""
    head = (f"{results['kind']} of {s['model']}: {s['num_folds']} folds (seed {s['seed']}"
            f"{', contiguous' if s['contiguous_folds'] else ''}){only}, tasks {', '.join(s['tasks'])}{limit}\n\n")
    found = results.get("comparisons") or []
    main_found = [c for c in found if c.get("table") == "main"]
    curve_found = [c for c in found if c.get("table") == "curves"]
    draws = agg.draws_markdown(agg.summarise_draws(rows))
    if draws:
        draws = "\nRandom controls over their draws (mean ± sample sd [min, max]):\n\n" + draws
    families = agg.families_markdown(main_found)
    if families:
        families = ("\nITI against each family of control draws (gain = row − baseline; rank p = (1 + draws with gain "
                    "≥ ITI's) / (1 + draws), unadjusted; Δ = ITI − the draws' per-question mean):\n\n" + families)
    strata = agg.strata_markdown(results.get("strata_gains") or [])
    if strata:
        strata = ("\nITI's gain over the baseline by the style and length of each question's true MC1 answer "
                  "(descriptive: not in the Holm family):\n\n" + strata)
    selections = [f["selection"] for f in results["folds"].get("iti", []) if f.get("selection")]
    grid = selection_markdown(selections)
    curve_rows = [r for r in rows if curve_point(str(r.get("variant", "")))]
    main_rows = [r for r in rows if r not in curve_rows]
    curves = ("\nThe same rows at other multiples of their own alpha (`--curve-scales`; the curves of pareto.png):\n\n"
              + agg.markdown_table(curve_rows, deltas=_deltas(curve_found)) + comparisons_note(curve_found)
              ) if curve_rows else ""
    return (head + agg.markdown_table(main_rows, deltas=_deltas(main_found)) + comparisons_note(main_found) + draws
            + families + strata + curves + grid + agg.judge_note(rows) + "\nPositions edited:\n"
            + agg.positions_legend(main_rows))


def _deltas(found: list[dict]) -> dict:
    from .comparisons import by_row

    return by_row(found)


def comparisons_note(found: list[dict]) -> str:
    """What the Δ columns and † of a table mean, with the size of its Holm family."""
    if not found:
        return ""
    size = found[0].get("holm_family", 0)
    return ("\nΔ: row − baseline over the questions both scored, pooled over folds; [95% CI]: bootstrap over questions "
            "within folds; p: McNemar exact where both rows score 0/1 per question (MC1, True, Info, True&Info), else "
            f"sign-flip permutation. † survives Holm at 0.05 across the {size} comparisons of this table (every row against the "
            "baseline except single control draws, and ITI against each family of draws).\n")


def selection_markdown(selections: list[dict]) -> str:
    """The nested-selection grids (training folds only): per outer fold, every (alpha, K) with its KL on the KL sample
    and its inner-fold score; points over the KL budget were not scored; the chosen point is marked."""
    if not selections:
        return ""
    by = selections[0]["by"]
    lines = [f"\nNested selection of alpha and K on each outer fold's training questions ({by}, mean over "
             f"{len(selections[0]['inner_folds'])} inner folds; KL in nats/token on held-out WikiText):\n",
             "| outer fold | α | K | KL | inner " + by + " | − unedited | chosen |", "|---|---|---|---|---|---|---|"]
    for s in selections:
        base = (s.get("unedited") or {}).get("mean")
        budget = s.get("kl_budget")
        lines.append(f"| {s['fold']} | 0 |  | 0 | {base:.4f} |  |  |" if base is not None else "")
        for g in s["grid"]:
            kl = "" if g.get("kl_mean") is None else f"{g['kl_mean']:.4f}"
            if g["mean"] is None:
                score = f"over budget {budget:g}" if budget is not None and g.get("kl_mean") is not None else ""
                gain = ""
            else:
                score = f"{g['mean']:.4f}"
                gain = f"{g['mean'] - base:+.4f}" if base is not None else ""
            chosen = "**yes**" if (g["alpha"], g["num_heads"]) == (s["alpha"], s["num_heads"]) else ""
            lines.append(f"| {s['fold']} | {g['alpha']:g} | {g['num_heads']} | {kl} | {score} | {gain} | {chosen} |")
    return "\n".join(line for line in lines if line) + "\n"
