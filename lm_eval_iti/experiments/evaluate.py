"""lm-eval glue of the experiments: build the lm-eval model of a variant on an already-loaded model, run the tasks
through ``lm_eval.simple_evaluate`` and read back the metrics and the evaluated question ids (from the per-sample
output, i.e. from what lm-eval actually scored, not from re-deriving the split)."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from pathlib import Path

from ..errors import ITIError

log = logging.getLogger(__name__)


def task_manager(tasks: list[str], metadata: dict):
    """A TaskManager carrying ``metadata``; only the packaged tasks are indexed when they are all that is asked for
    (indexing lm-eval's whole task tree takes seconds)."""
    from ..plugin import ensure_registered

    ensure_registered()
    from lm_eval.tasks import TaskManager

    ours = TaskManager(include_defaults=False, metadata=dict(metadata))
    known = set(ours.all_tasks) | set(ours.all_groups)
    if all(t in known for t in tasks):
        return ours
    return TaskManager(metadata=dict(metadata))


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


def run_tasks(lm, tasks: list[str], metadata: dict, *, limit=None, bootstrap_iters: int = 100000,
              apply_chat_template=False, system_instruction: str | None = None, gen_kwargs=None) -> dict:
    """One ``simple_evaluate`` with per-sample output; returns metrics, sample counts and evaluated question ids."""
    import lm_eval

    tm = task_manager(tasks, metadata)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit, log_samples=True,
                                  bootstrap_iters=bootstrap_iters, apply_chat_template=apply_chat_template,
                                  system_instruction=system_instruction, gen_kwargs=gen_kwargs)
    if out is None:
        raise ITIError("lm-eval returned no results (not rank 0?); run experiments in a single process")
    n_samples = {t: v.get("effective") for t, v in (out.get("n-samples") or {}).items()}
    return {"metrics": task_metrics(out["results"]), "n_samples": n_samples,
            "question_ids": evaluated_question_ids(out.get("samples")),
            "model_info": {k: v for k, v in (out.get("config") or {}).items()
                           if k in ("model", "iti", "model_dtype", "batch_size", "limit")}}


@contextlib.contextmanager
def variant_lm(variant, model, tokenizer, directions_path: str | None, directions=None, *, batch_size=8,
               work_dir: str | Path | None = None, max_length: int | None = None):
    """Yield (lm, (base_logits_fn, steered_logits_fn) for CE/KL, info) for ``variant`` on the loaded ``model``.

    Hooks and temporary checkpoints are removed on exit, so the next variant gets the model back untouched."""
    from lm_eval.models.huggingface import HFLM

    from . import side_effects as se

    common = dict(tokenizer=tokenizer, batch_size=batch_size)
    if max_length:
        common["max_length"] = max_length
    if variant.kind == "hf":
        base = se.model_logits(model)
        yield HFLM(pretrained=model, **common), (base, base), {}
        return
    if directions_path is None or directions is None:
        raise ITIError(f"variant {variant.name}: needs a directions file")
    if variant.kind == "hf-iti":
        from ..model import HFITI

        lm = HFITI(pretrained=model, directions=directions_path, alpha=variant.alpha, heads=variant.heads,
                   mc_positions=variant.mc_positions, gen_positions=variant.gen_positions, **common)
        try:
            yield lm, se.hooked_logits(model, lm.intervener), {"iti": lm.iti_info()}
        finally:
            lm.intervener.remove()
        return
    used = directions.top_k(variant.heads) if variant.heads else directions
    if variant.kind == "steered":
        from lm_eval.models.hf_steered import SteeredModel

        from ..export import export_steered

        pt = Path(work_dir) / f"{Path(directions_path).stem}.a{variant.alpha:g}.steered.pt"
        export_steered(model, used, variant.alpha, pt)  # our own file: lm-eval's steered model torch.loads it
        lm = SteeredModel(pretrained=model, steer_path=str(pt), **common)
        yield lm, (se.model_logits(model), se.lm_eval_logits(lm)), {"steer_path": str(pt)}
        return
    if variant.kind == "baked":
        from transformers import AutoModelForCausalLM

        from ..export import bake

        tmp = Path(tempfile.mkdtemp(prefix=".baked-", dir=str(work_dir) if work_dir else None))
        try:
            folder = bake(model, used, variant.alpha, tmp / "model", tokenizer=tokenizer)
            device = next(model.parameters()).device
            baked = AutoModelForCausalLM.from_pretrained(str(folder), dtype=next(model.parameters()).dtype)
            baked = baked.to(device).eval()
            lm = HFLM(pretrained=baked, **common)
            yield lm, (se.model_logits(model), se.model_logits(baked)), {"baked": "temporary checkpoint, deleted"}
            del lm, baked
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    raise ITIError(f"variant {variant.name}: unknown kind {variant.kind!r}")
