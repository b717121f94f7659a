"""Interop exports: lm-eval's ``steered`` .pt and a baked Hugging Face model folder.

Both use that the out-projection is affine: ``o_proj(x + shift) = o_proj(x) + W_o·shift``. Adding ``W_o·shift``
at the out-projection *output* (``steered``) or in its *bias* (baked) is therefore ITI at every position
(hf-iti's ``mc_positions=all`` / ``gen_positions=all``), not ITI's answer-only / last-token conventions.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .architectures import adapter_for, module_name, out_projections, project_shift
from .artifact import Directions, file_sha256
from .atomic import atomic_path, write_json_atomic
from .choices import EXPORT_FORMATS  # noqa: F401  (re-exported)
from .errors import ITIError


# W_o·shift needs W_o itself: a quantized weight (bitsandbytes uint8/int8, FP8 with separate scales) is not it
EXACT_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def projected_shifts(model: nn.Module, directions: Directions, alpha: float) -> dict[int, torch.Tensor]:
    """Per intervened layer, W_o·(alpha·sigma·direction) in float32: a hidden-size vector."""
    projections = out_projections(model)
    shifts = directions.shift_vectors(alpha)
    for layer in shifts:
        dtype = projections[layer].weight.dtype
        if dtype not in EXACT_WEIGHT_DTYPES:
            raise ITIError(f"layer {layer}'s attention output projection ({type(projections[layer]).__name__}) holds "
                           f"{str(dtype).replace('torch.', '')} weights (quantized), so W_o·shift cannot be computed "
                           "from them; load the model unquantized (e.g. --dtype float32) to export or bake, or steer "
                           "the quantized model with hf-iti")
    from accelerate.utils import align_module_device

    projected = {}
    for layer, vec in shifts.items():
        with align_module_device(projections[layer]):  # an offloaded W_o (device_map) is moved in for the product
            projected[layer] = project_shift(projections[layer], vec).cpu()
        if not torch.isfinite(projected[layer]).all():  # a NaN vector or bias would be written and exit 0
            raise ITIError(f"alpha={alpha:g}: W_o·shift of layer {layer} is not finite in float32; use a smaller alpha")
    return projected


def steered_config(model: nn.Module, directions: Directions, alpha: float) -> dict:
    """The dict lm-eval's ``steered`` model reads: hookpoint (relative to base_model) -> add W_o·shift."""
    projections = out_projections(model)
    config = {}
    for layer, vec in projected_shifts(model, directions, alpha).items():
        hookpoint = module_name(model.base_model, projections[layer])
        config[hookpoint] = {"steering_vector": vec, "steering_coefficient": 1.0, "action": "add", "bias": None,
                             "head_index": None}
    return config


def export_steered(model: nn.Module, directions: Directions, alpha: float, out: str | os.PathLike) -> Path:
    """Write the ``.pt`` for ``lm_eval --model steered --model_args steer_path=...`` (atomic)."""
    config = steered_config(model, directions, alpha)
    target = Path(out)
    if target.suffix not in (".pt", ".pth"):
        raise ITIError(f"{target}: lm-eval's steered model reads .pt or .pth files; name the output *.pt")
    with atomic_path(target, suffix=".pt") as tmp:
        torch.save(config, tmp)  # steered reads it with torch.load; tensors and plain values only
    return target


@torch.no_grad()
def bake(model: nn.Module, directions: Directions, alpha: float, out_dir: str | os.PathLike, tokenizer=None,
         provenance: dict | None = None) -> Path:
    """Save a model whose out-projection bias holds W_o·shift; it loads with plain transformers.

    Llama family: through ``config.attention_bias`` with explicit zero q/k/v biases. GPT-2, GPT-NeoX, OPT: added to
    their existing bias. Anything else: an ITIError.
    """
    adapter = adapter_for(model)
    shifts = projected_shifts(model, directions, alpha)
    target = Path(out_dir)
    if target.exists() and any(target.iterdir()):
        raise ITIError(f"{target}: output folder exists and is not empty")
    if adapter.bias == "existing":
        baked = model
        projections = out_projections(baked)
        original = {layer: projections[layer].bias.detach().clone() for layer in shifts}
        try:
            for layer, vec in shifts.items():
                bias = projections[layer].bias
                bias.copy_((bias.float() + vec.to(bias.device)).to(bias.dtype))
            _save_folder(baked, tokenizer, target, directions, alpha, provenance)
        finally:
            for layer, bias in original.items():
                projections[layer].bias.copy_(bias)
        return target
    if adapter.bias != "attention_bias":
        raise ITIError(f"cannot bake into {type(model).__name__} (model_type={model.config.model_type!r}): its "
                       "attention output projection has no bias and no config switch adds one; use hf-iti or "
                       "`lm-eval-iti export --to steered` instead")
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.attention_bias = True
    baked = type(model)(config).to(dtype=next(model.parameters()).dtype)
    missing, unexpected = baked.load_state_dict(_full_state_dict(model), strict=False)
    if unexpected or any(not k.endswith(".bias") for k in missing):
        raise ITIError(f"cannot bake {type(model).__name__}: weights do not map onto the biased config "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key in missing:  # the q/k/v/o biases attention_bias created: explicitly zero, o_proj gets the shift below
        dict(baked.named_parameters())[key].zero_()
    projections = out_projections(baked)
    for layer, vec in shifts.items():
        bias = projections[layer].bias
        bias.copy_(vec.to(device=bias.device, dtype=bias.dtype))
    _save_folder(baked.eval(), tokenizer, target, directions, alpha, provenance)
    return target


def _full_state_dict(model: nn.Module) -> dict:
    """The state dict with accelerate-offloaded weights (device_map with cpu/disk) read back in, on the CPU."""
    from accelerate.utils.modeling import get_state_dict_offloaded_model, has_offloaded_params

    if any(has_offloaded_params(m) for m in model.modules()):
        return get_state_dict_offloaded_model(model)
    return model.state_dict()


def _save_folder(model, tokenizer, target: Path, directions: Directions, alpha: float, provenance):
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    info = {"baked_by": "lm-eval-iti", "alpha": alpha, "positions": "all (a bias acts at every position)",
            "directions_metadata": {k: v for k, v in directions.metadata.items() if k != "train_question_ids"},
            "num_heads": directions.num_selected}
    if directions.source and Path(directions.source).is_file():
        info["directions_sha256"] = file_sha256(directions.source)
    info.update(provenance or {})
    write_json_atomic(tmp / "iti_bake.json", info)
    if target.exists():
        target.rmdir()
    os.replace(tmp, target)
