"""A plain ITI pre-hook built from a directions file's raw tensors: batch 1, explicit absolute positions.

Written without the package's code, so agreement with hf-iti is evidence, not a tautology.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file


def reference_vectors(path, alpha: float, num_heads: int, head_dim: int,
                      keep: set[tuple[int, int]] | None = None) -> dict[int, torch.Tensor]:
    """layer -> [num_heads * head_dim] vector alpha * sigma * direction at each selected head's slice (only the
    (layer, head) pairs in ``keep`` when given)."""
    raw = load_file(str(path))
    vectors = {}
    for key in raw:
        if key.endswith(".heads"):
            layer = int(key.split(".")[1])
            vec = torch.zeros(num_heads, head_dim)
            for i, h in enumerate(raw[key].tolist()):
                if keep is None or (layer, h) in keep:
                    vec[h] = alpha * raw[f"layers.{layer}.sigma"][i] * raw[f"layers.{layer}.directions"][i]
            if vec.any():
                vectors[layer] = vec.reshape(-1)
    return vectors


def top_heads_by_rank(path, k: int) -> set[tuple[int, int]]:
    """The first ``k`` (layer, head) rows of the file's raw ``head_rank`` tensor (best first)."""
    return {(int(layer), int(head)) for layer, head in load_file(str(path))["head_rank"][:k].tolist()}


class ReferenceHook:
    """Adds each layer's vector to the input of ``layers[l].self_attn.o_proj`` at ``self.positions`` (or 'all')."""

    def __init__(self, model, vectors):
        self.positions: set[int] | str = set()
        self.handles = [model.model.layers[l].self_attn.o_proj.register_forward_pre_hook(self._hook(v))
                        for l, v in vectors.items()]

    def _hook(self, vec):
        def hook(module, args):
            x = args[0].clone()
            for t in range(x.shape[1]):
                if self.positions == "all" or t in self.positions:
                    x[:, t] += vec.to(x.dtype)
            return (x,)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def reference_loglikelihood(model, tokenizer, requests, vectors, mode):
    """Sum of continuation log-probs, one request at a time; ``mode`` answer | legacy | all."""
    hook = ReferenceHook(model, vectors)
    out = []
    try:
        for ctx, cont in requests:
            whole = tokenizer(ctx + cont, add_special_tokens=False).input_ids
            c = len(tokenizer(ctx, add_special_tokens=False).input_ids)
            x = len(whole) - c
            first = {"answer": c - 1, "legacy": c + 1}.get(mode)
            hook.positions = "all" if mode == "all" else set(range(first, c + x - 1))
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
            out.append(sum(float(logp[c - 1 + i, whole[c + i]]) for i in range(x)))
    finally:
        hook.remove()
    return out


def reference_generate(model, tokenizer, prompt, vectors, mode, max_new=12, stop="Q:"):
    """Greedy decoding by full recomputation: the KV-cache semantics of ``mode`` as absolute positions."""
    hook = ReferenceHook(model, vectors)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    p = len(ids)
    try:
        for _ in range(max_new):
            if mode == "all":
                hook.positions = "all"
            else:
                first = p - 1 if mode == "last" else p
                hook.positions = set(range(first, len(ids)))
            with torch.no_grad():
                nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
    finally:
        hook.remove()
    text = tokenizer.decode(ids[p:], skip_special_tokens=True)
    return text.split(stop)[0]


def reference_token_loglikelihood(model, requests, vectors):
    """lm-eval token requests ``(key, context_ids, continuation_ids)`` scored one at a time, edited at the
    answer-scoring positions C-1 .. C+X-2."""
    hook = ReferenceHook(model, vectors)
    out = []
    try:
        for (_, ctx, cont) in requests:
            hook.positions = set(range(len(ctx) - 1, len(ctx) + len(cont) - 1))
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([(ctx + cont)[:-1]])).logits[0].float(), -1)
            out.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
    finally:
        hook.remove()
    return out
