"""The truth-world bar, with the project's own pipeline: ``fit.fit_and_save`` (2 folds, defaults except K and sigma
data, both from ``design.py``) and the ``hf-iti`` model scoring the held-out fold.

Per fold i: fit on the other fold; choose alpha on the fitted (training-fold) questions and on fresh documents about
training-fold entities only: the largest myth MC1 among the alphas whose side effects stay within bounds (non-myth MC1
down by at most 0.05, mean log P(true answer) on non-myth questions down by at most ``MAX_FACT_LOGP_DROP`` nats, mean
per-token KL(unsteered || steered) on the documents at most ``MAX_DOC_KL`` nats; smallest alpha on ties). Then score the
held-out fold unsteered (``hf``) and steered (``hf-iti``), and four controls at the same alpha:
  random       ``RANDOM_DRAWS`` seeded random unit directions on the same heads with the same sigma;
  orthogonal   as many random unit directions orthogonal (per head) to the fitted ones;
  random heads ``RANDOM_HEAD_DRAWS`` draws of K random heads with the method's own mass-mean directions and sigma
               (``fit_and_save(random_heads=True)`` cannot be used: its one draw, tied to the fold seed, can hit a
               head whose two class means are identical, whose direction is then undefined);
  colour prior a context-free colour preference counted on the training fold (no model at all).
The bar holds when, over both held-out folds pooled: unsteered myth MC1 <= 0.65 with mean P(true) in 0.5 +/- 0.1;
steered myth MC1 >= 0.9 and above the 95th percentile of the random draws and of the orthogonal draws; the random
heads and the colour prior stay well below it (by at least ``MIN_CONTROL_GAP``); the held-out side effects stay
within the alpha-selection bounds; greedy answers state the true colour more often than unsteered.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..artifact import Directions
from ..intervene import Intervener
from .design import ALPHA_GRID, NUM_HEADS, SIGMA_DATA
from .evaluate import Scores, document_logprobs, document_side_effects, mc1_choices, mc_prompt, score
from .generator import answer, export_truthfulqa, fresh_documents, load_world

MAX_BASE_MC1 = 0.65
P_TRUE_BAND = (0.4, 0.6)
MIN_STEERED_MC1 = 0.9
MAX_FACT_DROP = 0.05  # non-myth MC1 (kept, but it barely moves: three distractors of ~4% each)
MAX_FACT_LOGP_DROP = 0.25  # nats (P(true) down by at most 22%): mean log P(true answer) on non-myth questions
MAX_DOC_KL = 0.1  # nats per token (a fifth of the documents' own cross-entropy, ~0.45): KL(unsteered || steered)
MIN_CONTROL_GAP = 0.2  # random heads and the colour prior: at least this far below the steered myth MC1
RANDOM_DRAWS = 20
RANDOM_HEAD_DRAWS = 10
DOCUMENTS = 64  # fresh documents per side-effect measurement
DOCUMENT_SEED = 9001


def random_like(directions: Directions, seed: int) -> Directions:
    """The same heads and sigmas with seeded random unit directions (the control: any shift of this size)."""
    g = torch.Generator().manual_seed(int(seed))
    dirs = {}
    for layer in sorted(directions.heads):
        raw = torch.randn(directions.directions[layer].shape, generator=g, dtype=torch.float64)
        dirs[layer] = (raw / raw.norm(dim=1, keepdim=True)).float()
    meta = {**directions.metadata, "method": "random-same-sigma"}
    return replace(directions, directions=dirs, metadata=meta, source="<random>")


def orthogonal_like(directions: Directions, seed: int) -> Directions:
    """Seeded random unit directions with each head's fitted direction projected out (same heads and sigmas): a
    shift of the same size that carries no component along the truth direction."""
    g = torch.Generator().manual_seed(int(seed))
    dirs = {}
    for layer in sorted(directions.heads):
        fitted = directions.directions[layer].double()
        fitted = fitted / fitted.norm(dim=1, keepdim=True)
        raw = torch.randn(fitted.shape, generator=g, dtype=torch.float64)
        raw = raw - (raw * fitted).sum(1, keepdim=True) * fitted
        dirs[layer] = (raw / raw.norm(dim=1, keepdim=True)).float()
    meta = {**directions.metadata, "method": "random-orthogonal-same-sigma"}
    return replace(directions, directions=dirs, metadata=meta, source="<orthogonal>")


def head_directions_and_sigma(model, tokenizer, world, questions: list[int], seed: int = 0,
                              sigma_data: str = SIGMA_DATA):
    """For EVERY head: the method's mass-mean direction [L, H, d] from the training-fold statements at their final
    ``.`` (fit-directions' probe set: the truth vs the mc2 wrong answer, ``Q: q A: a``), and sigma [L, H] along it,
    as fit-directions measures it: over those statements (``sigma_data="mc"``) or over every answer of the CSV
    followed by another training-fold question (``"gen_end_q"``)."""
    from ..select import compute_sigma, mass_mean_directions
    from .generator import question, statement
    from .train import head_activations_at_last_token

    if sigma_data not in ("mc", "gen_end_q"):
        raise ValueError(f"sigma_data={sigma_data!r}: expected 'mc' or 'gen_end_q'")
    rng = np.random.default_rng([seed, 13])
    prompts, labels, followed = [], [], []
    for e in questions:
        wrong = world.myth[e] if world.is_myth(e) else world.distractors[e][0]
        for colour, label in ((world.truth[e], 1), (wrong, 0)):
            prompts.append(statement(world, e, colour))
            labels.append(label)
        if sigma_data == "gen_end_q":
            nxt = question(world, questions[int(rng.integers(len(questions)))])
            every_answer = [world.truth[e]] + ([world.myth[e]] if world.is_myth(e) else []) + world.distractors[e]
            followed += [f"{statement(world, e, colour)} Q: {nxt}" for colour in every_answer]  # the CSV's order
    acts = head_activations_at_last_token(model, tokenizer, prompts)  # [N, L, H, d]
    n, L, H, d = acts.shape
    raw = mass_mean_directions(acts.reshape(n, L * H, d), labels)  # [L*H, d]
    norms = raw.norm(dim=1)
    unit = torch.where(norms[:, None] > 0, raw / norms.clamp_min(1e-30)[:, None], torch.zeros_like(raw)).float()
    if sigma_data == "mc":
        sigma_acts = acts.reshape(n, L * H, d)
    else:
        sigma_acts = head_activations_at_last_token(model, tokenizer, followed).reshape(len(followed), L * H, d)
    sigma = compute_sigma(sigma_acts, unit)
    return unit.view(L, H, d), sigma.view(L, H), (norms > 1e-9 * norms.max()).view(L, H)


def random_heads_like(directions: Directions, unit: torch.Tensor, sigma: torch.Tensor, live: torch.Tensor,
                      seed: int) -> Directions:
    """As many seeded random heads as ``directions`` has (among heads whose mass-mean direction exists), each with
    the method's own direction and sigma (from ``head_directions_and_sigma``)."""
    L, H = live.shape
    candidates = np.flatnonzero(live.flatten().numpy())
    pick = sorted(np.random.default_rng([seed, 17]).permutation(candidates)[:directions.num_selected].tolist())
    chosen = directions_on_heads(unit, sigma, [(i // H, i % H) for i in pick])
    meta = {**directions.metadata, "method": "mass-mean", "random_heads": "true"}
    return replace(directions, heads=chosen.heads, directions=chosen.directions, sigma=chosen.sigma, metadata=meta,
                   probe_accuracy=None, head_rank=None, source="<random heads>")


def directions_on_heads(unit: torch.Tensor, sigma: torch.Tensor, heads: list[tuple[int, int]],
                        metadata: dict | None = None) -> Directions:
    """Directions for the given (layer, head) pairs, taken from per-head tensors ``unit`` [L, H, d], ``sigma`` [L, H]."""
    num_layers, num_heads, head_dim = unit.shape
    by_layer: dict[int, list[int]] = {}
    for layer, head in sorted(heads):
        by_layer.setdefault(layer, []).append(head)
    return Directions(num_layers, num_heads, head_dim,
                      {layer: torch.tensor(hs, dtype=torch.int64) for layer, hs in by_layer.items()},
                      {layer: unit[layer, hs].clone() for layer, hs in by_layer.items()},
                      {layer: sigma[layer, hs].clone() for layer, hs in by_layer.items()}, metadata=dict(metadata or {}))


def colour_prior(world, train_questions: list[int], test_questions: list[int]) -> dict:
    """MC1 of a context-free colour preference counted on the training fold only: colour c scores
    log((times c is the true mc1 choice + 1) / (times c is a false mc1 choice + 1)); a held-out question's choice is
    its best-scoring colour (ties share the credit)."""
    true_n, false_n = Counter(), Counter()
    for e in train_questions:
        choices = mc1_choices(world, e)
        true_n[choices[0]] += 1
        false_n.update(choices[1:])
    pref = {c: np.log((true_n[c] + 1) / (false_n[c] + 1)) for c in range(len(world.colours))}
    credit = {}
    for e in test_questions:
        s = np.asarray([pref[c] for c in mc1_choices(world, e)])
        best = np.flatnonzero(s == s.max())
        credit[e] = float(0 in best) / len(best)
    myth = [e for e in test_questions if world.is_myth(e)]
    fact = [e for e in test_questions if not world.is_myth(e)]
    return {"myth_mc1": float(np.mean([credit[e] for e in myth])) if myth else float("nan"),
            "fact_mc1": float(np.mean([credit[e] for e in fact])) if fact else float("nan"),
            "n_myth": len(myth), "n_fact": len(fact)}


def score_shifted(model, tokenizer, world, questions, directions, alpha, generation=False) -> Scores:
    iv = Intervener(model, directions, alpha).install()
    try:
        return score(model, tokenizer, world, questions, iv, generation=generation)
    finally:
        iv.remove()


class DocumentCheck:
    """KL / cross-entropy of the shift on fresh documents about ``pool`` entities (unsteered pass computed once)."""

    def __init__(self, model, tokenizer, world, pool: list[int], count: int = DOCUMENTS, seed: int = DOCUMENT_SEED):
        self.model, self.tokenizer = model, tokenizer
        self.texts = [d.text for d in fresh_documents(world, count, seed, pool)]
        self.targets = [tokenizer(t)["input_ids"] for t in self.texts]
        self.base = document_logprobs(model, tokenizer, self.texts)

    def __call__(self, directions: Directions, alpha: float) -> dict:
        iv = Intervener(self.model, directions, alpha).install()
        try:
            steered = document_logprobs(self.model, self.tokenizer, self.texts, iv)
        finally:
            iv.remove()
        return document_side_effects(self.base, steered, self.targets)


def side_effects_ok(base: Scores, steered: Scores, docs: dict) -> dict:
    return {"fact_mc1": base.fact_mc1 - steered.fact_mc1 <= MAX_FACT_DROP + 1e-9,
            "fact_logp_true": base.fact_logp_true - steered.fact_logp_true <= MAX_FACT_LOGP_DROP,
            "doc_kl": docs["kl"] <= MAX_DOC_KL}


def choose_alpha(model, tokenizer, world, directions: Directions, questions: list[int],
                 grid=ALPHA_GRID) -> tuple[float, list[dict]]:
    """Alpha from the training-fold questions and fresh documents about training-fold entities only (in-process
    scoring; no generation): the largest myth MC1 whose side effects stay within bounds, smallest alpha on ties."""
    base = score(model, tokenizer, world, questions, None, generation=False)
    docs = DocumentCheck(model, tokenizer, world, questions)
    rows, best = [], None
    for alpha in grid:
        s = score_shifted(model, tokenizer, world, questions, directions, alpha)
        eff = docs(directions, alpha)
        within = side_effects_ok(base, s, eff)
        ok = all(within.values())
        rows.append({"alpha": alpha, "myth_mc1": s.myth_mc1, "fact_mc1": s.fact_mc1,
                     "fact_logp_true": round(s.fact_logp_true, 4),
                     "fact_logp_true_unsteered": round(base.fact_logp_true, 4),
                     "doc_kl": round(eff["kl"], 4), "allowed": ok})
        if ok and (best is None or s.myth_mc1 > best[1]):
            best = (alpha, s.myth_mc1)
    return (best[0] if best else min(grid)), rows


def controls(model, tokenizer, world, directions: Directions, alpha: float, test: list[int], fold: int,
             draws: int = RANDOM_DRAWS) -> dict:
    """Held-out myth MC1 of the random and orthogonal draws (seeded by fold and draw number)."""
    rand = [score_shifted(model, tokenizer, world, test, random_like(directions, 1000 * fold + i), alpha).myth_mc1
            for i in range(draws)]
    orth = [score_shifted(model, tokenizer, world, test, orthogonal_like(directions, 100_000 + 1000 * fold + i),
                        alpha).myth_mc1 for i in range(draws)]
    return {"random_myth_mc1": rand, "orthogonal_myth_mc1": orth}


def _hflm(model_dir, directions_path=None, alpha=None):
    from ..harness.driver import hf_lm

    common = dict(pretrained=str(model_dir), batch_size=64, device="cpu", dtype="float32")
    if directions_path is None:
        return hf_lm(**common)
    from ..harness.model import HFITI

    return HFITI(directions=str(directions_path), alpha=alpha, **common)


def lm_eval_scores(lm, world, entities: list[int]) -> Scores:
    """MC1, P(true) and greedy colour through an lm-eval model's own loglikelihood and generate_until."""
    from ..harness.driver import generations, loglikelihoods

    pairs = [(mc_prompt(world, e), " " + answer(world, e, c)) for e in entities for c in mc1_choices(world, e)]
    lls = np.asarray(loglikelihoods(lm, pairs))
    gens = generations(lm, [mc_prompt(world, e) for e in entities],
                       {"until": ["Q:"], "max_gen_toks": 8, "do_sample": False})
    mc1, ptrue, gen, logp = {}, {}, {}, {}
    k = 0
    for e, text in zip(entities, gens):
        n = len(mc1_choices(world, e))
        s = lls[k:k + n]
        k += n
        mc1[e] = float(np.argmax(s) == 0)
        ptrue[e] = float(1 / (1 + np.exp(s[1] - s[0])))
        logp[e] = float(s[0])
        said = next((w for w in text.replace(".", " ").split() if w in world.colours), "")
        gen[e] = float(said == world.colours[world.truth[e]])
    myth = [e for e in entities if world.is_myth(e)]
    fact = [e for e in entities if not world.is_myth(e)]
    avg = lambda d, es: float(np.mean([d[e] for e in es])) if es else float("nan")  # noqa: E731
    return Scores(avg(mc1, myth), avg(mc1, fact), avg(ptrue, myth), avg(gen, myth), avg(gen, fact), len(myth),
                  len(fact), avg(logp, fact))


def held_out_controls(model, tokenizer, world, fit, alpha: float, fold: int, draws: int = RANDOM_DRAWS) -> dict:
    """Everything but the lm-eval scores on ``fit``'s held-out fold at ``alpha``: side effects on fresh documents,
    the random and orthogonal draws, random heads with the method's directions and the colour prior."""
    test = sorted(fit.test_questions)
    train_q = sorted(fit.train_questions + fit.val_questions)
    docs = DocumentCheck(model, tokenizer, world, test)(fit.directions, alpha)
    ctrl = controls(model, tokenizer, world, fit.directions, alpha, test, fold, draws)
    unit, sigma, live = head_directions_and_sigma(model, tokenizer, world, train_q, seed=fold)
    heads = [random_heads_like(fit.directions, unit, sigma, live, 1000 * fold + i) for i in range(RANDOM_HEAD_DRAWS)]
    ctrl["random_heads_myth_mc1"] = [score_shifted(model, tokenizer, world, test, d, alpha).myth_mc1 for d in heads]
    ctrl["random_heads"] = [[[layer, int(h)] for layer in sorted(d.heads) for h in d.heads[layer].tolist()]
                            for d in heads]
    return {"documents": {k: round(v, 4) if isinstance(v, float) else v for k, v in docs.items()}, **ctrl,
            "colour_prior": colour_prior(world, train_q, test)}


def run_fold(model, tokenizer, world, model_dir, data_dir, work: Path, fold: int, k: int, seed: int, alpha_grid,
             progress: bool = False, draws: int = RANDOM_DRAWS, head_selection: str = "probe") -> dict:
    from ..fit import fit_and_save

    common = dict(tokenizer=tokenizer, data_dir=data_dir, num_folds=2, fold=fold, num_heads=k, seed=seed,
                  cache_dir=work / "cache", progress=progress, write_plot=False, batch_size=64, sigma_data=SIGMA_DATA,
                  head_selection=head_selection)
    fit = fit_and_save(model, work / f"fold{fold}.safetensors", **common)
    train_q = sorted(fit.train_questions + fit.val_questions)
    alpha, alpha_rows = choose_alpha(model, tokenizer, world, fit.directions, train_q, alpha_grid)
    test = sorted(fit.test_questions)
    base = lm_eval_scores(_hflm(model_dir), world, test)
    steered = lm_eval_scores(_hflm(model_dir, fit.out, alpha), world, test)
    return {"fold": fold, "alpha": alpha, "alpha_search": alpha_rows,
            "heads": [list(map(int, p)) for p in fit.selected.tolist()],
            "best_probe_accuracy": float(fit.probes.accuracy.max()),
            "head_probe_accuracy": [round(float(fit.probes.accuracy[l, h]), 4) for l, h in fit.selected.tolist()],
            "effect_check": fit.summary.get("effect_check"),
            "sigma": [round(float(v), 4) for layer in sorted(fit.directions.sigma)
                      for v in fit.directions.sigma[layer].tolist()],
            "test_questions": len(test), "unsteered": base.as_dict(), "steered": steered.as_dict(),
            **held_out_controls(model, tokenizer, world, fit, alpha, fold, draws)}


def run_bar(model_dir, num_heads: int | None = None, seed: int = 42, work_dir=None, alpha_grid=ALPHA_GRID,
            progress: bool = False, draws: int = RANDOM_DRAWS, head_selection: str = "probe") -> dict:
    """The bar on ``model_dir``; ``head_selection``: how the fit ranks heads (``effect``: by measured effect on the
    training questions, issue 29); thresholds and controls are the same either way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    k = num_heads or NUM_HEADS
    world = load_world(model_dir)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tmp_ctx = tempfile.TemporaryDirectory(prefix="truthworld-bar-") if work_dir is None else None
    work = Path(work_dir or tmp_ctx.name)
    try:
        data_dir = export_truthfulqa(world, work / "data")
        folds = [run_fold(model, tokenizer, world, model_dir, data_dir, work, fold, k, seed, alpha_grid, progress,
                          draws, head_selection) for fold in (0, 1)]
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    return {"model": str(model_dir), "num_heads": k, "seed": seed, "head_selection": head_selection, "folds": folds,
            "summary": summarize(folds)}


def _pooled(folds, get, weight):
    w = np.asarray([weight(f) for f in folds], dtype=float)
    v = np.asarray([get(f) for f in folds], dtype=float)
    return float((w * v).sum() / w.sum())


def _distribution(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": round(float(v.mean()), 4), "p95": round(float(np.percentile(v, 95)), 4),
            "min": round(float(v.min()), 4), "max": round(float(v.max()), 4), "draws": len(v)}


def summarize(folds: list[dict]) -> dict:
    """Both held-out folds pooled (weighted by their question counts) and the bar's checks."""
    n_myth = lambda f: f["unsteered"]["n_myth"]  # noqa: E731
    n_fact = lambda f: f["unsteered"]["n_fact"]  # noqa: E731
    weight = lambda key: n_fact if key.startswith("fact") else n_myth  # noqa: E731
    s = {cond: {key: round(_pooled(folds, lambda f, c=cond, k=key: f[c][k], weight(key)), 4)
                for key in ("myth_mc1", "fact_mc1", "myth_p_true", "myth_gen_true", "fact_gen_true", "fact_logp_true")}
         for cond in ("unsteered", "steered")}
    for name in ("random", "orthogonal"):  # draw i of fold 0 pooled with draw i of fold 1
        per_draw = [_pooled(folds, lambda f, i=i: f[f"{name}_myth_mc1"][i], n_myth)
                    for i in range(min(len(f[f"{name}_myth_mc1"]) for f in folds))]
        s[name] = _distribution(per_draw)
    per_draw = [_pooled(folds, lambda f, i=i: f["random_heads_myth_mc1"][i], n_myth)
                for i in range(min(len(f["random_heads_myth_mc1"]) for f in folds))]
    s["random_heads"] = _distribution(per_draw)
    s["colour_prior"] = {"myth_mc1": round(_pooled(folds, lambda f: f["colour_prior"]["myth_mc1"], n_myth), 4)}
    tokens = lambda f: f["documents"]["tokens"]  # noqa: E731
    s["documents"] = {key: round(_pooled(folds, lambda f, k=key: f["documents"][k], tokens), 4)
                      for key in ("ce_unsteered", "ce_steered", "kl")}
    s["alphas"] = [f["alpha"] for f in folds]
    s["best_probe_accuracy"] = [round(f["best_probe_accuracy"], 4) for f in folds]
    base, steered = s["unsteered"], s["steered"]
    checks = {
        f"unsteered myth MC1 <= {MAX_BASE_MC1}": base["myth_mc1"] <= MAX_BASE_MC1,
        "unsteered mean P(true) in 0.5 +/- 0.1": P_TRUE_BAND[0] <= base["myth_p_true"] <= P_TRUE_BAND[1],
        f"steered myth MC1 >= {MIN_STEERED_MC1}": steered["myth_mc1"] >= MIN_STEERED_MC1,
        "steered above the random draws' 95th percentile": steered["myth_mc1"] > s["random"]["p95"],
        "steered above the orthogonal draws' 95th percentile": steered["myth_mc1"] > s["orthogonal"]["p95"],
        f"random heads >= {MIN_CONTROL_GAP} below steered":
            s["random_heads"]["mean"] <= steered["myth_mc1"] - MIN_CONTROL_GAP,
        f"colour prior >= {MIN_CONTROL_GAP} below steered":
            s["colour_prior"]["myth_mc1"] <= steered["myth_mc1"] - MIN_CONTROL_GAP,
        f"non-myth MC1 drop <= {MAX_FACT_DROP}": base["fact_mc1"] - steered["fact_mc1"] <= MAX_FACT_DROP + 1e-9,
        f"non-myth mean log P(true) drop <= {MAX_FACT_LOGP_DROP} nats":
            base["fact_logp_true"] - steered["fact_logp_true"] <= MAX_FACT_LOGP_DROP,
        f"document KL <= {MAX_DOC_KL} nats/token": s["documents"]["kl"] <= MAX_DOC_KL,
        "greedy states truth more often": steered["myth_gen_true"] > base["myth_gen_true"],
    }
    s["checks"] = checks
    s["bar_holds"] = all(checks.values())
    return s
