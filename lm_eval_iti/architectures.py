"""Where the heads are: per architecture, the attention output projection whose input is the concatenated heads.

To add an architecture, add one ``Adapter`` to ``ADAPTERS`` keyed by ``config.model_type``: the path of the
decoder-layer list from the causal-LM module, the path of the output projection inside one layer, and how
``bake`` folds a shift into its bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ITIError


@dataclass(frozen=True)
class ModelShape:
    """What a directions file must agree with: the model's attention geometry."""

    num_layers: int
    num_heads: int
    head_dim: int
    architecture: str = ""
    model: str = ""


@dataclass(frozen=True)
class Adapter:
    layers_path: str  # from the *ForCausalLM module
    out_proj_path: str  # inside one decoder layer
    bias: str | None  # "attention_bias": config flag adds o/q/k/v biases; "existing": add to the bias it has


_LLAMA_LIKE = Adapter("model.layers", "self_attn.o_proj", "attention_bias")
_NO_BIAS_LLAMA_LIKE = Adapter("model.layers", "self_attn.o_proj", None)

ADAPTERS: dict[str, Adapter] = {
    "llama": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    # Gemma 3: q/k norms, scaled embeddings, sliding-window layers and soft-capping all act before the o_proj input
    # or after the attention output, so the shift at the o_proj input is Llama's
    "gemma3_text": _LLAMA_LIKE,
    # the multimodal wrapper: the same text decoder under model.language_model. Its attention_bias switch lives in
    # config.text_config, which bake does not reach: bake refuses, hf-iti and the steered export work
    "gemma3": Adapter("model.language_model.layers", "self_attn.o_proj", None),
    "olmo2": _LLAMA_LIKE,
    "mistral": _NO_BIAS_LLAMA_LIKE,
    "qwen2": _NO_BIAS_LLAMA_LIKE,
    "phi3": _NO_BIAS_LLAMA_LIKE,
    "gpt2": Adapter("transformer.h", "attn.c_proj", "existing"),
    "gpt_neox": Adapter("gpt_neox.layers", "attention.dense", "existing"),
    "opt": Adapter("model.decoder.layers", "self_attn.out_proj", "existing"),
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def adapter_for(model: nn.Module) -> Adapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ITIError(
            f"unsupported architecture {type(model).__name__} (model_type={model_type!r}); supported: "
            f"{', '.join(sorted(ADAPTERS))}. To add it, register an Adapter for it in lm_eval_iti/architectures.py"
        )
    return ADAPTERS[model_type]


def out_projections(model: nn.Module) -> list[nn.Module]:
    """The attention output projection of every decoder layer, in layer order."""
    adapter = adapter_for(model)
    try:
        layers = _get(model, adapter.layers_path)
        return [_get(layer, adapter.out_proj_path) for layer in layers]
    except AttributeError as exc:
        raise ITIError(f"{type(model).__name__}: expected decoder layers at '{adapter.layers_path}' with "
                       f"'{adapter.out_proj_path}' inside ({exc})") from None


def out_proj_in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if weight is not None and type(module).__name__ == "Conv1D":  # GPT-2: weight is [in, out]
        return int(weight.shape[0])
    raise ITIError(f"unsupported output projection type {type(module).__name__}")


def model_shape(model: nn.Module) -> ModelShape:
    """num_layers, num_heads and head_dim of the out-projection input; checked against the module itself."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    projections = out_projections(model)
    num_heads = int(cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
    width = out_proj_in_features(projections[0])
    if num_heads * head_dim != width:
        raise ITIError(f"{type(model).__name__}: num_heads*head_dim = {num_heads}*{head_dim} does not match the "
                       f"out-projection input width {width}")
    name = getattr(model.config, "_name_or_path", "") or ""
    return ModelShape(len(projections), num_heads, int(head_dim), type(model).__name__, name)


def module_name(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ITIError(f"module {type(target).__name__} not found under {type(root).__name__}")


@torch.no_grad()
def project_shift(module: nn.Module, shift: torch.Tensor) -> torch.Tensor:
    """W_o · shift for a Linear or Conv1D out-projection, in float32 (the bias cancels: f(x) - f(0))."""
    weight = module.weight.detach().float()
    shift = shift.float().to(weight.device)
    if isinstance(module, nn.Linear):
        return weight @ shift
    return shift @ weight  # Conv1D stores [in, out]


def execution_device(model) -> torch.device:
    """Where to put inputs and side computations: the device of the input embeddings, or the CPU when accelerate
    has offloaded them (their weights then sit on the meta device and are moved in at each forward)."""
    embeddings = model.get_input_embeddings()
    device = embeddings.weight.device
    if device.type != "meta":
        return device
    hooked = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)  # accelerate's AlignDevicesHook
    return torch.device(hooked if not isinstance(hooked, int) else f"cuda:{hooked}") if hooked is not None \
        else torch.device("cpu")
