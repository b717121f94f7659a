"""Heads ranked by their effect on the multiple-choice objective, not by how well a probe reads them (issue 29).

``--head-selection effect`` ranks every head by the first-order effect of steering it alone: the gradient of the
training questions' objective with respect to the head's output (summed over the edited positions), taken along the
head's own unit direction and scaled by its sigma, i.e. d objective / d alpha at alpha = 0 for a one-head ITI shift.
One forward and one backward pass over the objective's questions give it for every head at once.

The objective is the mean over the questions of log MC2: log(sum of P(true answers) / sum of P(all answers)), each
answer's P the product of its token probabilities (lm-eval's MC2 without the exp), scored as the packaged tasks score
without primer or instruction (context ``Q: {question}\\nA:``, continuation `` {answer}``), with the shift at the
positions whose logits score the answer (hf-iti's ``mc_positions=answer``). Only the fit's training questions are
used (a seeded sample of at most ``effect_questions`` of them).

The estimate is checked against the measured effect: a sample of heads is steered one at a time at
``CHECK_ALPHA`` (forward passes, no gradient), and the Spearman rank correlation between estimated and measured
effect per unit alpha is recorded in the directions' metadata (``effect_check``).

Composition is top-K: the K heads with the largest estimated effect are steered together (no greedy re-measurement;
interactions between heads are not modelled).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .architectures import out_projections
from .errors import ITIError
from .intervene import add_at_positions, answer_mask
from .prompts import mc_prompt

CHECK_ALPHA = 1.0  # one sigma: the measured effect that the first-order estimate is checked against
OBJECTIVE = "mean log MC2 over the fit's training questions (context 'Q: {question}\\nA:', continuation ' {answer}')"


@dataclass
class QuestionRequests:
    """One question's scoring requests: every (context + answer) token list, how many tokens score the answer, labels."""

    tokens: list[list[int]]
    answer_lengths: list[int]
    labels: list[int]


def objective_requests(mc_docs: list[dict], questions: list[int], tokenizer) -> list[QuestionRequests]:
    """The MC2 requests of ``questions`` (indices into ``mc_docs``), tokenised as lm-eval tokenises context +
    continuation: the whole string, the context's own tokens marking where the answer starts."""
    out = []
    for q in questions:
        doc = mc_docs[q]
        context = mc_prompt(doc["question"], instruction="none", primer="none")
        n_context = len(tokenizer(context)["input_ids"])
        targets = doc["mc2_targets"]
        tokens, lengths = [], []
        for choice in targets["choices"]:
            whole = tokenizer(context + " " + choice)["input_ids"]
            if len(whole) <= n_context:
                raise ITIError(f"question {q}: the answer {choice[:40]!r} adds no token to its context")
            tokens.append(list(whole))
            lengths.append(len(whole) - n_context)
        out.append(QuestionRequests(tokens, lengths, [int(v) for v in targets["labels"]]))
    return out


def log_mc2(choice_loglikelihoods: torch.Tensor, labels) -> torch.Tensor:
    """log(sum_true P / sum_all P) from per-choice summed log-likelihoods (differentiable)."""
    true = torch.as_tensor(np.asarray(labels, dtype=bool), device=choice_loglikelihoods.device)
    if not bool(true.any()) or bool(true.all()):
        raise ITIError("log MC2 needs true and false answers for every question")
    return torch.logsumexp(choice_loglikelihoods[true], 0) - torch.logsumexp(choice_loglikelihoods, 0)


def _batches(requests: list[QuestionRequests], max_rows: int):
    """Whole questions per batch, about ``max_rows`` rows each."""
    batch, rows = [], 0
    for req in requests:
        if batch and rows + len(req.tokens) > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(req)
        rows += len(req.tokens)
    if batch:
        yield batch


def _objective_of_batch(model, batch: list[QuestionRequests], device, edit: "_Edit") -> torch.Tensor:
    """Sum over the batch's questions of log MC2 (right-padded forward; ``edit.plan`` marks the scoring positions for
    the hooks of ``_layer_shifts``)."""
    seqs = [t for req in batch for t in req.tokens]
    lengths = [n for req in batch for n in req.answer_lengths]
    width = max(len(s) - 1 for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s) - 1] = torch.tensor(s[:-1])
        attn[i, :len(s) - 1] = 1
    plan = answer_mask([len(s) - 1 for s in seqs], lengths, width, device=device)
    edit.plan = plan
    try:
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
    finally:
        edit.plan = None
    logp = torch.log_softmax(logits.float(), -1)
    lls = []
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        inplen = len(s) - 1
        target = torch.tensor(s[-n:], device=logp.device)
        lls.append(logp[i, inplen - n:inplen].gather(1, target[:, None]).sum())
    total, k = logits.new_zeros((), dtype=torch.float32), 0
    for req in batch:
        total = total + log_mc2(torch.stack(lls[k:k + len(req.tokens)]), req.labels)
        k += len(req.tokens)
    return total


@dataclass
class _Edit:
    """The scoring positions of the current forward (None: edit nothing), read by the hooks of ``_layer_shifts``."""

    plan: torch.Tensor | None = None


@contextlib.contextmanager
def _layer_shifts(model, shifts: dict[int, torch.Tensor]):
    """Add ``shifts[layer]`` ([H*d], may require grad) to each layer's output-projection input at the positions of the
    yielded ``_Edit``'s plan."""
    projections = out_projections(model)
    handles = []
    edit = _Edit()

    def make(vector):
        def hook(module, args):
            if edit.plan is None:
                return None
            return (add_at_positions(args[0], vector, edit.plan),) + tuple(args[1:])
        return hook

    for layer, vector in shifts.items():
        handles.append(projections[layer].register_forward_pre_hook(make(vector)))
    try:
        yield edit
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _frozen(model):
    """No parameter gradients (only the shifts'), the model in eval mode; both restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def objective_gradients(model, requests: list[QuestionRequests], num_layers: int, width: int, *, device=None,
                        max_rows: int = 32, progress: bool = False) -> tuple[torch.Tensor, float, int]:
    """(gradient [L, H*d] float64 of the mean log MC2 w.r.t. a shift added to every layer's output-projection input at
    the scoring positions, the objective at no shift, forward passes)."""
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    shifts = {layer: torch.zeros(width, device=device, requires_grad=True) for layer in range(num_layers)}
    total, passes = 0.0, 0
    batches = list(_batches(requests, max_rows))
    with _frozen(model), _layer_shifts(model, shifts) as edit:
        for batch in tqdm(batches, desc="effect: gradients", disable=not progress, unit="batch"):
            value = _objective_of_batch(model, batch, device, edit) / len(requests)
            value.backward()
            total += float(value.detach())
            passes += 1
    grads = torch.stack([shifts[layer].grad.detach().double().cpu() if shifts[layer].grad is not None
                         else torch.zeros(width, dtype=torch.float64) for layer in range(num_layers)])
    return grads, total, passes


@torch.no_grad()
def measured_objective(model, requests: list[QuestionRequests], shifts: dict[int, torch.Tensor], *, device=None,
                       max_rows: int = 32) -> float:
    """The mean log MC2 with fixed ``shifts`` ({layer: [H*d]}) added at the scoring positions (forward only)."""
    device = device or next(model.parameters()).device
    total = 0.0
    with _frozen(model), _layer_shifts(model, {k: v.to(device) for k, v in shifts.items()}) as edit:
        for batch in _batches(requests, max_rows):
            total += float(_objective_of_batch(model, batch, device, edit))
    return total / len(requests)


def first_order_effect(gradients: torch.Tensor, unit: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """float64 [L, H]: sigma * <gradient of the head, unit direction> (d objective / d alpha for a one-head shift
    alpha * sigma * unit). gradients [L, H*d] or [L, H, d]; unit [L, H, d]; sigma [L, H]."""
    L, H, d = unit.shape
    g = gradients.reshape(L, H, d).double()
    return sigma.double() * (g * unit.double()).sum(-1)


def check_heads(effect: torch.Tensor, live: torch.Tensor, count: int, seed: int) -> list[tuple[int, int]]:
    """The heads whose effect is measured: the top half by estimated effect, the rest seeded random live heads."""
    L, H = effect.shape
    flat_live = np.flatnonzero(live.reshape(-1).numpy())
    count = min(int(count), len(flat_live))
    order = [int(i) for i in np.argsort(-effect.reshape(-1).numpy(), kind="stable") if live.reshape(-1)[i]]
    top = order[:(count + 1) // 2]
    rest = [i for i in np.random.default_rng([int(seed), 29]).permutation(flat_live).tolist() if i not in top]
    return [(i // H, i % H) for i in top + rest[:count - len(top)]]


@dataclass
class EffectRanking:
    effect: torch.Tensor  # [L, H] float64, -inf where the head has no direction
    objective: float  # unsteered mean log MC2 on the questions
    questions: int
    passes: int  # forward (+ backward) passes of the gradient
    seconds: float
    check: dict = field(default_factory=dict)
    question_indices: list[int] = field(default_factory=list)  # into the MC data


def effect_ranking(model, tokenizer, mc_docs: list[dict], questions: list[int], unit: torch.Tensor,
                   sigma: torch.Tensor, live: torch.Tensor, *, check_count: int = 8, seed: int = 0,
                   progress: bool = False) -> EffectRanking:
    """Estimate every head's effect (``first_order_effect``) on ``questions`` and check it on ``check_count`` heads
    against the measured one-head effect at ``CHECK_ALPHA`` (Spearman rank correlation)."""
    from scipy.stats import spearmanr

    L, H, d = unit.shape
    clock = time.perf_counter()
    requests = objective_requests(mc_docs, questions, tokenizer)
    grads, base, gradient_passes = objective_gradients(model, requests, L, H * d, progress=progress)
    passes = gradient_passes
    effect = first_order_effect(grads, unit, sigma)
    effect = torch.where(live, effect, torch.full_like(effect, -float("inf")))
    check = {}
    if check_count > 0:
        heads = check_heads(effect, live, check_count, seed)
        measured = []
        for layer, head in heads:
            vector = torch.zeros(H * d, dtype=torch.float32)
            vector[head * d:(head + 1) * d] = CHECK_ALPHA * sigma[layer, head].float() * unit[layer, head].float()
            measured.append((measured_objective(model, requests, {layer: vector}) - base) / CHECK_ALPHA)
        estimated = [float(effect[l, h]) for l, h in heads]
        rho, p = spearmanr(estimated, measured) if len(heads) > 2 else (float("nan"), float("nan"))
        check = {"alpha": CHECK_ALPHA, "heads": [list(h) for h in heads], "estimated": estimated,
                 "measured": measured, "spearman": float(rho), "p_value": float(p)}
        passes += len(heads) * gradient_passes  # one forward per batch and checked head
    return EffectRanking(effect, base, len(requests), passes, round(time.perf_counter() - clock, 3), check,
                         list(questions))
