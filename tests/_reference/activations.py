"""The input of each attention out-projection at the last position of one unpadded prompt, read with forward hooks
(not the package's pre-hooks) on modules found by this file's own map, not by lm_eval_iti.architectures."""

from __future__ import annotations

import torch


def out_projections(model) -> list:
    """Each layer's attention output projection (Llama-style o_proj, GPT-2 c_proj)."""
    if hasattr(model, "transformer"):  # GPT-2
        return [block.attn.c_proj for block in model.transformer.h]
    return [layer.self_attn.o_proj for layer in model.model.layers]


def reference_activation(model, tok, prompt):
    """[num_layers, num_heads, head_dim] activations at position -1 of ``prompt``."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    seen = []
    handles = [p.register_forward_hook(lambda m, args, out: seen.append(args[0][0, -1].clone()))
               for p in out_projections(model)]
    try:
        with torch.no_grad():
            model(**tok(prompt, return_tensors="pt"))
    finally:
        for h in handles:
            h.remove()
    return torch.stack(seen).view(len(seen), heads, head_dim)
