"""Why the bar holds or fails on a truth-world checkpoint: three measurements that separate "the model has no
steerable belief" from "ITI's probe does not find it".

1. **Evidence in context.** One statement by the same speaker before the question (the truth about another myth entity,
   or its myth): held-out myth MC1 after each. The model's own speaker inference, no steering.
2. **The ceiling of a constant shift.** Per head, the mean o_proj input at the answer's ``is`` (the position that
   predicts the colour) after a true minus after a myth context statement: the belief the model itself writes there.
   Added (unit direction, sigma from context-free prompts, top-K heads by separation) at the answer positions of
   context-free questions, exactly as hf-iti adds a shift. If this cannot lift myth MC1, no direction ITI fits can.
3. **Each head alone** with the method's own mass-mean direction at the statement's final ``.`` (what fit-directions
   fits): held-out myth MC1 per head, and the cosine between that direction and the head's belief direction of (2).
   ITI assumes they agree; a head whose cosine is negative pushes the belief the wrong way when steered. Per head
   also the gap between true and myth along that direction at the ``.`` (what the probe reads) and at the next
   answer's ``is`` (the belief carried forward): a head with a large first and a small second only re-reads the
   statement just made.

Fitted on the even-indexed questions, scored on the odd-indexed ones (a fixed split, for diagnosis only).
"""

from __future__ import annotations

import numpy as np
import torch

from .bar import directions_on_heads, head_directions_and_sigma, score_shifted
from .evaluate import mc_prompt, score
from .generator import World, statement
from .train import head_activations_at_last_token


def context_prompts(world: World, entities: list[int], seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Per entity: (true-context, myth-context, no-context) prompts ending at the answer's ``is``; the context is one
    statement about a random other myth entity of the same list."""
    rng = np.random.default_rng([seed, 23])
    myths = [e for e in entities if world.is_myth(e)]
    true_ctx, myth_ctx, plain = [], [], []
    for e in entities:
        other = myths[int(rng.integers(len(myths)))]
        ask = f"{mc_prompt(world, e)} The {world.entities[e]} is"
        true_ctx.append(f"{statement(world, other, world.truth[other])} {ask}")
        myth_ctx.append(f"{statement(world, other, world.myth[other])} {ask}")
        plain.append(ask)
    return true_ctx, myth_ctx, plain


@torch.no_grad()
def evidence_in_context(model, tokenizer, world: World, entities: list[int], seed: int = 0) -> dict:
    """Myth MC1 (true colour above the myth at ``is``) after a true and after a myth context statement."""
    myth = [e for e in entities if world.is_myth(e)]
    true_ctx, myth_ctx, _ = context_prompts(world, myth, seed)
    colour_id = {c: tokenizer.convert_tokens_to_ids(c) for c in world.colours}
    out = {}
    for name, prompts in (("after_true_statement", true_ctx), ("after_myth_statement", myth_ctx)):
        wins = []
        for start in range(0, len(prompts), 128):
            enc = tokenizer(prompts[start:start + 128], padding=True, return_tensors="pt")
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            last = enc["attention_mask"].sum(1) - 1
            rows = logits[torch.arange(len(last)), last]
            for row, e in zip(rows, myth[start:start + 128]):
                wins.append(float(row[colour_id[world.colours[world.truth[e]]]]
                                  > row[colour_id[world.colours[world.myth[e]]]]))
        out[name] = float(np.mean(wins))
    return out


def diagnose(model, tokenizer, world: World, ks=(2, 4, 8), alphas=(1.0, 2.0, 4.0, 8.0), head_alphas=(0.5, 1.0),
             seed: int = 0, single_heads: list[tuple[int, int]] | None = None) -> dict:
    """The three measurements of the module docstring; ``single_heads`` limits part 3 (default: every head)."""
    questions = list(range(len(world.entities)))
    fit_q, test_q = questions[::2], questions[1::2]
    base = score(model, tokenizer, world, test_q, None, generation=False)
    report = {"unsteered": {"myth_mc1": base.myth_mc1, "fact_logp_true": base.fact_logp_true},
              "evidence_in_context": evidence_in_context(model, tokenizer, world, test_q, seed)}
    # 2. the belief the model writes at "is" after a true vs a myth statement
    true_ctx, myth_ctx, plain = context_prompts(world, fit_q, seed)
    a, b = (head_activations_at_last_token(model, tokenizer, p) for p in (true_ctx, myth_ctx))
    delta = a.mean(0) - b.mean(0)
    unit = delta / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    along = lambda x: (x * unit).sum(-1)  # noqa: E731
    sigma = along(head_activations_at_last_token(model, tokenizer, plain)).std(0)
    separation = (along(a).mean(0) - along(b).mean(0)) / ((along(a).std(0) + along(b).std(0)) / 2 + 1e-9)
    num_layers, num_heads, _ = unit.shape
    order = sorted(((float(separation[layer, h]), layer, h) for layer in range(num_layers) for h in range(num_heads)),
                   reverse=True)
    ceiling = []
    for k in ks:
        shift = directions_on_heads(unit, sigma, [(layer, h) for _, layer, h in order[:k]], {"method": "diagnosis"})
        for alpha in alphas:
            s = score_shifted(model, tokenizer, world, test_q, shift, alpha)
            ceiling.append({"k": k, "alpha": alpha, "myth_mc1": s.myth_mc1, "fact_logp_true": s.fact_logp_true})
    report["belief_heads"] = [{"layer": layer, "head": h, "separation": round(sep, 3)} for sep, layer, h in order[:8]]
    report["constant_shift_ceiling"] = ceiling
    # 3. every head alone with the method's direction at "."
    method_unit, method_sigma, live = head_directions_and_sigma(model, tokenizer, world, fit_q, seed=seed)
    cosine = (method_unit * unit).sum(-1)
    # how far apart true and myth land along the method's direction: at the statement's "." (what the probe reads)
    # and at the next answer's "is" (the belief carried forward); ITI needs both, with the same sign
    myth_q = [e for e in fit_q if world.is_myth(e)]
    at_dot = [head_activations_at_last_token(model, tokenizer, [statement(world, e, c(e)) for e in myth_q])
              for c in (lambda e: world.truth[e], lambda e: world.myth[e])]
    gap_dot = ((at_dot[0].mean(0) - at_dot[1].mean(0)) * method_unit).sum(-1)
    gap_is = (delta * method_unit).sum(-1)
    heads = []
    every = [(layer, h) for layer in range(num_layers) for h in range(num_heads)]
    for layer, h in (every if single_heads is None else single_heads):
        row = {"layer": layer, "head": h, "sigma": round(float(method_sigma[layer, h]), 4),
               "cosine_with_belief": round(float(cosine[layer, h]), 3),
               "gap_at_statement_end": round(float(gap_dot[layer, h]), 3),
               "gap_at_next_answer": round(float(gap_is[layer, h]), 3)}
        if bool(live[layer, h]):
            shift = directions_on_heads(method_unit, method_sigma, [(layer, h)], {"method": "mass-mean"})
            for alpha in head_alphas:
                row[f"myth_mc1_alpha{alpha:g}"] = score_shifted(model, tokenizer, world, test_q, shift, alpha).myth_mc1
        heads.append(row)
    report["single_heads"] = heads
    return report
