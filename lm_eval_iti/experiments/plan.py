"""The plan of a ``validate`` or ``sweep`` run: which fold x row jobs it has, what defines each (its resume hash),
and where its result goes. Pure: no model is loaded here (``executor`` runs the jobs on a ``session.ModelSession``).

For each fold i and each row (``baselines.Variant``) there is one job: fit on the other folds, evaluate the row on
fold i, measure CE/KL. Its result is written to ``<run>/folds/fold_<i>_<row>.json`` with a hash of every setting
that defines it; a rerun skips the jobs whose file carries the same hash (an interrupted run resumes) and redoes
those whose settings changed or that lack the per-question data (fold files written before it existed).

The row's instruction reaches only the tasks whose prompt takes it (``INSTRUCTED_TASKS``: TruthfulQA MC and
generation); the binary and transfer tasks keep their own default (``none``) unless ``metadata`` sets
``instruction`` for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import read_json_sealed
from ..choices import ENGINE_MODES
from ..data import load_mc
from ..errors import ITIError
from ..options import config_field, default_of
from . import records
from .baselines import AUTO, Variant, is_control

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
    revision: str | None = config_field("revision")
    gguf_file: str | None = config_field("gguf_file")
    dtype: str = config_field("dtype")
    device: str | None = config_field("device")
    data_dir: str | None = config_field("data_dir")
    dataset: str = config_field("dataset")
    binary_data: str | None = config_field("binary_data")
    num_questions: int | None = config_field("num_questions")
    tasks: tuple[str, ...] = (default_of("tasks"),)
    num_folds: int = config_field("num_folds")
    seed: int = config_field("seed", option="fold_seed")
    contiguous_folds: bool = config_field("contiguous_folds")
    limit: int | float | None = None
    # extra task metadata for every task (judge settings, ...); "instruction" here is the instruction of the tasks
    # that do not take the row's (binary, transfer): the MC/gen tasks always get the row's (INSTRUCTED_TASKS)
    metadata: dict = field(default_factory=dict)
    val_ratio: float = config_field("val_ratio")
    prompt_format: str = config_field("prompt_format")
    sigma_data: str = config_field("sigma_data")
    probe_backend: str = config_field("probe_backend")
    side_effects: bool = config_field("side_effects")
    corpus: str = config_field("corpus")
    num_docs: int = config_field("num_docs")
    num_tokens: int = config_field("num_tokens")
    corpus_seed: int = config_field("corpus_seed")
    detokenize: bool = True
    bootstrap_iters: int = config_field("bootstrap_iters")
    apply_chat_template: bool | str = config_field("apply_chat_template")
    system_instruction: str | None = config_field("system_instruction")
    gen_kwargs: str | None = config_field("gen_kwargs")
    max_length: int | None = config_field("max_length")
    batch_size: int = config_field("batch_size")
    fit_batch_size: int = config_field("fit_batch_size")
    cache_dir: str | None = config_field("cache_dir")
    progress: bool = True
    kl_budget: float = config_field("kl_budget")  # for alpha "auto"
    folds: tuple[int, ...] | None = None  # evaluate only these held-out folds (None: every fold)
    # hooked rows of loglikelihood tasks scored by the shared-prefix engine (harness.engine): auto = when every task
    # is a loglikelihood task; off = every row through lm-eval's hf-iti; on = refuse tasks it cannot score
    engine: str = config_field("engine")
    engine_max_batch_bytes: int = 1 << 30
    device_map: str | dict | None = config_field("device_map")  # accelerate placement (loading.load_model); not part of a run's identity
    max_memory: str | dict | None = config_field("max_memory")
    offload_folder: str | None = config_field("offload_folder")

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


def sha_of(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class RunData:
    """The questions a run folds: where they come from (a subset folder for ``num_questions``) and their sha256."""

    source: str
    binary_data: str | None
    mc_docs: list = field(repr=False)
    questions: list[str] = field(repr=False)
    data_sha256: str


def prepare_data(config: ExperimentConfig, out: Path) -> RunData:
    """Read the run's questions (``num_questions``: the first N of ``data_dir``, written to ``<out>/data``)."""
    if config.num_questions is not None:
        from .subset import write_truthfulqa_subset

        if config.data_dir is None:
            raise ITIError("num_questions= needs data_dir= (a local TruthfulQA folder to take the subset from)")
        sub = write_truthfulqa_subset(config.data_dir, out / "data", config.num_questions, config.binary_data)
        source, binary_data = sub["data_dir"], sub["binary_data"]
    else:
        source = config.data_dir if config.data_dir is not None else config.dataset
        binary_data = config.binary_data
    docs = load_mc(source)
    if len(docs) < config.num_folds:
        raise ITIError(f"num_folds={config.num_folds} is more than the {len(docs)} questions of {source}")
    from ..fit import data_sha256  # the same hash the fits record

    return RunData(source, binary_data, docs, [d["question"] for d in docs], data_sha256(docs))


@dataclass(frozen=True)
class Job:
    """One fold x row: its result file and the hash of every setting that defines it."""

    fold: int
    variant: Variant
    path: Path
    settings_hash: str


@dataclass
class Plan:
    """A run's jobs and everything they share: the settings (hashed), the data, the output folder."""

    config: ExperimentConfig
    variants: list[Variant]
    out: Path
    kind: str
    data: RunData
    settings: dict
    jobs: list[Job]

    def task_metadata(self, fold: int) -> dict:
        """The metadata every task of ``fold`` gets; a row's instruction goes to some only (instruction_metadata)."""
        c = self.config
        meta = dict(c.metadata)
        meta.update(num_folds=c.num_folds, fold=fold, seed=c.seed, contiguous_folds=c.contiguous_folds,
                    data_dir=self.data.source)
        if self.data.binary_data is not None:
            meta["binary_data"] = self.data.binary_data
        return meta

    def fold_hash(self, fold: int, variant: Variant) -> str:
        key = {"settings": self.settings, "variant": variant.describe(), "fold": fold, "format": RESULTS_VERSION}
        if self.engine_candidate(variant):  # an engine row and an lm-eval row are different results
            key["engine"] = self.config.engine
        return sha_of(key)

    def fold_path(self, fold: int, variant: Variant) -> Path:
        return self.out / "folds" / f"fold_{fold}_{variant.name}.json"

    def engine_candidate(self, variant: Variant) -> bool:
        """Sweep grid rows: hooked at a fixed strength, not a control draw nor the row meant for lm-eval itself.
        validate's rows are the published ones: lm-eval scores them, unless engine="on" asks the engine to score
        every hf and hf-iti row (the engine equals hf-iti per request within 1e-4, tests/test_engine.py)."""
        if self.kind == "validate":
            return self.config.engine == "on" and variant.kind in ("hf", "hf-iti")
        return (self.kind == "sweep" and variant.kind == "hf-iti" and variant.alpha != AUTO
                and not is_control(variant) and not variant.extra.get("lm_eval"))

    def saved_result(self, fold: int, variant: Variant) -> dict | None:
        """The fold file of ``variant`` when it can be reused: computed with these settings (its hash) and carrying
        the per-question data (a file from before per-question records is stale: its row is recomputed)."""
        previous = read_record(self.fold_path(fold, variant))
        if not isinstance(previous, dict) or previous.get("settings_hash") != self.fold_hash(fold, variant):
            return None
        if not records.has_records(previous):
            log.info("%s: no per-question data (written by an older version); recomputing it",
                     self.fold_path(fold, variant))
            return None
        return previous

    def pending(self) -> list[Job]:
        """The jobs whose result is not on disk with these settings (what a run, or a resumed run, computes)."""
        return [job for job in self.jobs if self.saved_result(job.fold, job.variant) is None]


def run_settings(config: ExperimentConfig, data: RunData) -> dict:
    """What defines a run's results (hashed): every setting but the ones that only change its speed, the data's
    sha256, and the judge resolved from metadata *and* environment (secret-free): another judge must not resume."""
    from ..judges.config import from_sources

    s = {k: v for k, v in asdict(config).items() if k not in NOT_HASHED}
    s["tasks"] = list(s["tasks"])
    s["data_sha256"] = data.data_sha256
    s["judge"] = from_sources(config.metadata).record()
    return s


def make_plan(config: ExperimentConfig, variants: list[Variant], out_dir: str | os.PathLike,
              kind: str = "validate") -> Plan:
    """The plan of a run in ``out_dir``: every evaluated fold x every row, fold by fold."""
    config.check()
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ITIError(f"two variants share a name: {names}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ITIError(f"out={out_dir}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(config, out)
    plan = Plan(config, list(variants), out, kind, data, run_settings(config, data), [])
    plan.jobs = [Job(fold, v, plan.fold_path(fold, v), plan.fold_hash(fold, v))
                 for fold in (config.folds or range(config.num_folds)) for v in plan.variants]
    return plan


def read_record(path: Path):
    """A saved record, or None (recomputed) when it is missing, unreadable, unsealed or edited since it was written."""
    record, problem = read_json_sealed(path)
    if problem is not None and problem != "missing":
        log.warning("lm-eval-iti: recomputing %s", problem)
    return record


def saved_for(path: Path, key) -> dict | None:
    """The record saved at ``path`` when it was computed for exactly ``key`` (its settings hash), else None."""
    previous = read_record(path)
    return previous if previous is not None and previous.get("settings_hash") == sha_of(key) else None
