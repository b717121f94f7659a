"""Measure the truth world: MC1 and P(true) by log-likelihood, greedy generation, with or without an ITI shift.

Scoring mirrors lm-eval's multiple-choice requests: context ``Q: {question}\\nA:``, continuation `` {answer}``; an
Intervener edits exactly the positions whose logits score the continuation (hf-iti's ``mc_positions=answer``).
Greedy generation edits the last prompt position and every generated one (hf-iti's ``gen_positions=last``).
These in-process functions exist for speed (alpha selection, seeds); ``tests/test_truthworld.py`` checks them
against hf-iti itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..intervene import ALL, Intervener, answer_mask
from .generator import World, answer, question

MC_CONTEXT = "Q: {question}\nA:"


def mc_prompt(world: World, entity: int) -> str:
    return MC_CONTEXT.format(question=question(world, entity))


def mc1_choices(world: World, entity: int) -> list[int]:
    """Colour indices of the mc1 choices, true first (same lists as generator.mc_rows)."""
    if world.is_myth(entity):
        return [world.truth[entity], world.myth[entity]] + world.distractors[entity][:2]
    return [world.truth[entity]] + world.distractors[entity][:3]


@torch.no_grad()
def choice_loglikelihoods(model, tokenizer, world: World, entities: list[int], intervener: Intervener | None = None,
                          batch_size: int = 128) -> list[np.ndarray]:
    """Per entity, the summed log-likelihood of each mc1 choice (true first)."""
    requests = []  # (entity, tokens of ctx+cont, len ctx, len cont)
    for e in entities:
        ctx = tokenizer(mc_prompt(world, e))["input_ids"]
        for c in mc1_choices(world, e):
            whole = tokenizer(mc_prompt(world, e) + " " + answer(world, e, c))["input_ids"]
            requests.append((e, whole, len(ctx), len(whole) - len(ctx)))
    scores = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start:start + batch_size]
        width = max(len(r[1]) - 1 for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attn = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, (_, whole, _, _) in enumerate(chunk):
            ids[i, :len(whole) - 1] = torch.tensor(whole[:-1])
            attn[i, :len(whole) - 1] = 1
        inplens = [len(r[1]) - 1 for r in chunk]
        contlens = [r[3] for r in chunk]
        plan = answer_mask(inplens, contlens, width)
        if intervener is not None:
            with intervener.editing(plan):
                logits = model(input_ids=ids, attention_mask=attn).logits
        else:
            logits = model(input_ids=ids, attention_mask=attn).logits
        logp = torch.log_softmax(logits.float(), -1)
        for i, (_, whole, n_ctx, n_cont) in enumerate(chunk):
            target = torch.tensor(whole[n_ctx:])
            rows = logp[i, n_ctx - 1:n_ctx - 1 + n_cont]
            scores.append(float(rows.gather(1, target[:, None]).sum()))
    out, k = [], 0
    for e in entities:
        n = len(mc1_choices(world, e))
        out.append(np.asarray(scores[k:k + n]))
        k += n
    return out


@torch.no_grad()
def greedy_colours(model, tokenizer, world: World, entities: list[int], intervener: Intervener | None = None,
                   new_tokens: int = 7, batch_size: int = 128) -> list[str]:
    """The colour word each greedy answer states (the first colour word of the greedy answer), '' if none.

    Recomputes the whole sequence each step (no cache); editing positions from the last prompt token on is then
    the same as hf-iti's ``gen_positions=last`` with a KV cache (prefill: last position; decode: each new token).
    """
    colours = set(world.colours)
    out: list[str] = []
    for start in range(0, len(entities), batch_size):
        chunk = entities[start:start + batch_size]
        prompts = [tokenizer(mc_prompt(world, e))["input_ids"] for e in chunk]
        plen = len(prompts[0])
        if any(len(p) != plen for p in prompts):
            raise ValueError("truth-world prompts must all have the same length")
        ids = torch.tensor(prompts)
        for _ in range(new_tokens):
            plan = torch.zeros_like(ids, dtype=torch.bool)
            plan[:, plen - 1:] = True
            if intervener is not None:
                with intervener.editing(plan):
                    logits = model(input_ids=ids).logits
            else:
                logits = model(input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        for row in ids[:, plen:].tolist():
            words = tokenizer.convert_ids_to_tokens(row)
            said = [w for w in words if w in colours]
            out.append(said[0] if said else "")
    return out


@dataclass
class Scores:
    myth_mc1: float
    fact_mc1: float
    myth_p_true: float  # mean over myth entities of P(true) / (P(true) + P(myth))
    myth_gen_true: float  # share of greedy answers stating the true colour (myth entities)
    fact_gen_true: float
    n_myth: int
    n_fact: int
    fact_logp_true: float = float("nan")  # mean over non-myth entities of log P(true answer | question)

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def score(model, tokenizer, world: World, entities: list[int], intervener: Intervener | None = None,
          generation: bool = True) -> Scores:
    lls = choice_loglikelihoods(model, tokenizer, world, entities, intervener)
    myth = [i for i, e in enumerate(entities) if world.is_myth(e)]
    fact = [i for i, e in enumerate(entities) if not world.is_myth(e)]
    mc1 = np.asarray([float(np.argmax(s) == 0) for s in lls])  # ties: argmax picks the first (true) choice
    p_true = np.asarray([1 / (1 + np.exp(s[1] - s[0])) for s in lls])
    gen_true = np.full(len(entities), np.nan)
    if generation:
        said = greedy_colours(model, tokenizer, world, entities, intervener)
        gen_true = np.asarray([float(s == world.colours[world.truth[e]]) for s, e in zip(said, entities)])
    logp_true = np.asarray([s[0] for s in lls])
    mean = lambda a, idx: float(np.mean(a[idx])) if idx else float("nan")  # noqa: E731
    return Scores(mean(mc1, myth), mean(mc1, fact), mean(p_true, myth), mean(gen_true, myth), mean(gen_true, fact),
                  len(myth), len(fact), mean(logp_true, fact))


@torch.no_grad()
def document_logprobs(model, tokenizer, texts: list[str], intervener: Intervener | None = None,
                      batch_size: int = 64) -> list[torch.Tensor]:
    """Per document, the next-token log-probabilities [T-1, V] at its real tokens; the shift (if any) is added at
    every position, as hf-iti does while generating (``gen_positions=all``)."""
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], padding=True, return_tensors="pt")
        if intervener is not None:
            with intervener.editing(ALL):  # right padding: the padded tail never reaches a real token
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        else:
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        logp = torch.log_softmax(logits.double(), -1)
        for i, n in enumerate(enc["attention_mask"].sum(1).tolist()):
            out.append(logp[i, :n - 1])
    return out


def document_side_effects(base: list[torch.Tensor], steered: list[torch.Tensor], targets: list[list[int]]) -> dict:
    """Cross-entropy (nats/token) of the documents' own next tokens without and with the shift, and the mean
    per-token KL(unsteered || steered) over the whole next-token distribution."""
    ce_base, ce_steered, kl, tokens = 0.0, 0.0, 0.0, 0
    for b, s, t in zip(base, steered, targets):
        idx = torch.as_tensor(t[1:])[:, None]
        ce_base -= float(b.gather(1, idx).sum())
        ce_steered -= float(s.gather(1, idx).sum())
        kl += float((b.exp() * (b - s)).sum())
        tokens += len(t) - 1
    return {"ce_unsteered": ce_base / tokens, "ce_steered": ce_steered / tokens, "kl": kl / tokens, "tokens": tokens}
