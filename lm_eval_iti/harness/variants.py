"""The lm-eval model of an experiment variant (hf, hf-iti, steered, baked) built on an already-loaded model."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from ..errors import ITIError


@contextlib.contextmanager
def variant_lm(variant, model, tokenizer, directions_path: str | None, directions=None, *, batch_size=8,
               work_dir: str | Path | None = None, max_length: int | None = None):
    """Yield (lm, (base_logits_fn, steered_logits_fn) for CE/KL, info) for ``variant`` on the loaded ``model``.

    Hooks and temporary checkpoints are removed on exit, so the next variant gets the model back untouched."""
    from lm_eval.models.huggingface import HFLM

    from .. import side_effects as se

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
        from .model import HFITI

        lm = HFITI(pretrained=model, directions=directions_path, alpha=variant.alpha, num_heads=variant.heads,
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
