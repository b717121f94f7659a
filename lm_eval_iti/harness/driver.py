"""The one task driver: every evaluation of the package (experiments, the demo, the truth world, tests) runs
``lm_eval.simple_evaluate`` through ``run_tasks``; plus the small lm-eval utilities the rest of the package needs
(request builders; lm-eval's argument parser, WikiText detokeniser and CLI are in ``lm_eval_utils``), so nothing
else imports lm_eval.

``summarize`` reads back the metrics, the evaluated question ids and the per-question values (``samples``) from the
per-sample output, i.e. from what lm-eval actually scored, not from re-deriving the split.

``per_task_metadata`` ({task: {key: value}}) gives some tasks metadata that the others must not get: lm-eval merges
the runtime metadata over every task's YAML metadata, so e.g. an ``instruction`` meant for the TruthfulQA MC and
generation tasks would also replace the ``none`` default of the binary and transfer tasks."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

from ..errors import ITIError

log = logging.getLogger(__name__)


def task_manager(tasks: list[str], metadata: dict, include_path: str | Path | None = None,
                 per_task_metadata: dict[str, dict] | None = None):
    """A TaskManager carrying ``metadata`` (and ``per_task_metadata`` over it, for the tasks it names); only the
    packaged tasks (and ``include_path``) are indexed when they hold every task asked for (indexing lm-eval's whole
    task tree takes seconds)."""
    from .plugin import ensure_registered

    ensure_registered()
    from lm_eval.tasks import TaskManager

    extra = {} if include_path is None else {"include_path": str(include_path)}
    manager = TaskManager(include_defaults=False, metadata=dict(metadata), **extra)
    known = set(manager.all_tasks) | set(manager.all_groups)
    if not all(t in known for t in tasks):
        manager = TaskManager(metadata=dict(metadata), **extra)
    if per_task_metadata:
        _scope_metadata(manager, per_task_metadata)
    return manager


def _scope_metadata(manager, per_task: dict[str, dict]) -> None:
    """Merge ``per_task[name]`` into the metadata of task ``name`` only, after lm-eval's own merge of the runtime
    metadata (lm-eval 0.4.13 has no per-task runtime metadata: its TaskFactory merges one dict into every task)."""
    factory = getattr(manager, "_factory", None)
    load = getattr(factory, "_load_full_config", None)
    if load is None:
        raise ITIError("this lm-eval version builds tasks without TaskFactory._load_full_config, so per-task "
                       "metadata (e.g. the instruction of the TruthfulQA MC tasks only) cannot be applied")

    def load_scoped(entry, overrides=None):
        cfg = load(entry, overrides)
        name = cfg.get("task")
        if isinstance(name, str) and name in per_task:  # a group's "task" is its member list: left alone
            cfg["metadata"] = {**cfg["metadata"], **per_task[name]}
        return cfg

    factory._load_full_config = load_scoped


@contextlib.contextmanager
def _quiet_lm_eval(quiet: bool):
    lm_eval_log = logging.getLogger("lm_eval")
    level = lm_eval_log.level
    if quiet:
        lm_eval_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lm_eval_log.setLevel(level)


def evaluate(model, tasks: list[str], metadata: dict | None = None, *, model_args: dict | None = None,
             include_path: str | Path | None = None, quiet: bool = False, guard_fit_questions: bool = True,
             per_task_metadata: dict[str, dict] | None = None, **simple_evaluate_kwargs) -> dict:
    """``lm_eval.simple_evaluate`` on ``tasks`` with the packaged tasks indexed; returns its raw output.

    ``model``: an lm-eval model object (``HFITI``, ``HFLM``, ...) or a registered name with ``model_args``. Under
    an ``HFITI`` object its directions reach the task metadata (as ``directions=`` model args do on the command
    line), so the leak guard of the truthfulqa_iti tasks sees them (``guard_fit_questions=False``: they do not).
    ``quiet``: lm-eval's notices at ERROR only. ``per_task_metadata``: see the module docstring."""
    import lm_eval

    meta = {**(model_args or {}), **(metadata or {})}
    from .model import HFITI
    from .taskfns import InMemoryDirections

    if isinstance(model, HFITI) and guard_fit_questions:
        meta.setdefault("directions", model.directions_path or InMemoryDirections(model.directions))
    with _quiet_lm_eval(quiet):
        out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(tasks),
                                      task_manager=task_manager(list(tasks), meta, include_path,
                                                                per_task_metadata),
                                      **simple_evaluate_kwargs)
    if out is None:
        raise ITIError("lm-eval returned no results (not rank 0?); run experiments in a single process")
    return out


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def task_metrics(results: dict) -> dict[str, dict]:
    """{task: {metric: value, metric_stderr: value}} from lm-eval's ``results`` (filter ``none`` dropped from names;
    NaN/"N/A" become None so that a missing judgment is never a number)."""
    out = {}
    for task, entry in results.items():
        metrics = {}
        for key, value in entry.items():
            if "," not in key:
                continue
            name, filt = key.split(",", 1)
            metrics[name if filt == "none" else key] = _number(value)
        if metrics:
            out[task] = metrics
    return out


def evaluated_question_ids(samples: dict) -> dict[str, list[str]]:
    """{task: sorted unique question ids} from lm-eval's logged samples (the docs carry ``question_id``)."""
    out = {}
    for task, rows in (samples or {}).items():
        docs = [row.get("doc") for row in rows]
        ids = {d["question_id"] for d in docs if isinstance(d, dict) and "question_id" in d}
        out[task] = sorted(ids)
    return out


def summarize(out: dict) -> dict:
    """Metrics, sample counts, evaluated question ids, per-question values and choice log-likelihoods
    (``samples.per_question``, ``samples.choice_loglikelihoods``) and the model's provenance of one ``evaluate``
    output."""
    from .samples import choice_loglikelihoods, per_question

    n_samples = {t: v.get("effective") for t, v in (out.get("n-samples") or {}).items()}
    return {"metrics": task_metrics(out["results"]), "n_samples": n_samples,
            "question_ids": evaluated_question_ids(out.get("samples")),
            "per_question": per_question(out.get("samples")),
            "choice_loglikelihoods": choice_loglikelihoods(out.get("samples")),
            "model_info": {k: v for k, v in (out.get("config") or {}).items()
                           if k in ("model", "iti", "model_dtype", "batch_size", "limit")}}


def run_tasks(lm, tasks: list[str], metadata: dict, *, limit=None, bootstrap_iters: int = 100000,
              apply_chat_template=False, system_instruction: str | None = None, gen_kwargs=None,
              per_task_metadata: dict[str, dict] | None = None) -> dict:
    """One evaluation with per-sample output (the experiments' call); returns ``summarize`` of it. The tasks' leak
    guard stays off: the runner checks the evaluated question ids against its own fit afterwards, and its control
    directions record no training questions."""
    return summarize(evaluate(lm, tasks, metadata, guard_fit_questions=False, limit=limit, log_samples=True,
                              bootstrap_iters=bootstrap_iters, per_task_metadata=per_task_metadata,
                              apply_chat_template=apply_chat_template, system_instruction=system_instruction,
                              gen_kwargs=gen_kwargs))


# requests on an lm-eval model, outside a task ------------------------------------------------------------------
def loglikelihoods(lm, pairs: list[tuple[str, str]]) -> list[float]:
    """log P(continuation | context) of each (context, continuation) through the model's own ``loglikelihood``."""
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in enumerate(pairs)]
    return [float(r[0]) for r in lm.loglikelihood(requests, disable_tqdm=True)]


def generations(lm, prompts: list[str], gen_kwargs: dict) -> list[str]:
    """The model's own ``generate_until`` on each prompt with the same ``gen_kwargs`` (``until``, ``max_gen_toks``)."""
    from lm_eval.api.instance import Instance

    requests = [Instance("generate_until", {}, (p, dict(gen_kwargs)), i) for i, p in enumerate(prompts)]
    return list(lm.generate_until(requests, disable_tqdm=True))


def hf_lm(**kwargs):
    """lm-eval's ``hf`` model (HFLM) with these arguments."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(**kwargs)
