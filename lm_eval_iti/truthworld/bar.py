"""The truth-world bar, with the project's own pipeline: ``fit.fit_directions`` (2 folds, defaults except K) and the
``hf-iti`` model scoring the held-out fold.

Per fold i: fit on the other fold; choose alpha on the fitted (training-fold) questions only: the largest myth MC1
whose non-myth MC1 drops by at most 0.05 (smallest alpha on ties); then score the held-out fold unsteered (``hf``),
steered (``hf-iti``) and with random unit directions on the same heads with the same sigma and alpha. The bar holds
when, over both held-out folds: unsteered myth MC1 <= 0.65 with mean P(true) in 0.5 +/- 0.1; steered myth MC1 >= 0.9;
non-myth MC1 drops by at most 0.05; greedy answers state the true colour more often than unsteered; and the random
directions do not reach the steered bar (myth MC1 < 0.9).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..artifact import Directions, save_directions
from ..intervene import Intervener
from .design import ALPHA_GRID, NUM_HEADS
from .evaluate import Scores, mc1_choices, mc_prompt, score
from .generator import answer, export_truthfulqa, load_world

MAX_FACT_DROP = 0.05
MAX_BASE_MC1 = 0.65
P_TRUE_BAND = (0.4, 0.6)
MIN_STEERED_MC1 = 0.9


def random_like(directions: Directions, seed: int) -> Directions:
    """The same heads and sigmas with seeded random unit directions (the control: any shift of this size)."""
    g = torch.Generator().manual_seed(int(seed))
    dirs = {}
    for layer in sorted(directions.heads):
        raw = torch.randn(directions.directions[layer].shape, generator=g, dtype=torch.float64)
        dirs[layer] = (raw / raw.norm(dim=1, keepdim=True)).float()
    meta = {**directions.metadata, "method": "random-same-sigma"}
    return replace(directions, directions=dirs, metadata=meta, source="<random>")


def choose_alpha(model, tokenizer, world, directions: Directions, questions: list[int],
                 grid=ALPHA_GRID) -> tuple[float, list[dict]]:
    """Alpha from the training-fold questions only (in-process scoring; no generation)."""
    base = score(model, tokenizer, world, questions, None, generation=False)
    rows, best = [], None
    for alpha in grid:
        iv = Intervener(model, directions, alpha).install()
        try:
            s = score(model, tokenizer, world, questions, iv, generation=False)
        finally:
            iv.remove()
        ok = base.fact_mc1 - s.fact_mc1 <= MAX_FACT_DROP
        rows.append({"alpha": alpha, "myth_mc1": s.myth_mc1, "fact_mc1": s.fact_mc1, "allowed": ok})
        if ok and (best is None or s.myth_mc1 > best[1]):
            best = (alpha, s.myth_mc1)
    return (best[0] if best else min(grid)), rows


def _hflm(model_dir, directions_path=None, alpha=None):
    from lm_eval.models.huggingface import HFLM

    from ..model import HFITI

    common = dict(pretrained=str(model_dir), batch_size=64, device="cpu", dtype="float32")
    if directions_path is None:
        return HFLM(**common)
    return HFITI(directions=str(directions_path), alpha=alpha, **common)


def lm_eval_scores(lm, world, entities: list[int]) -> Scores:
    """MC1, P(true) and greedy colour through an lm-eval model's own loglikelihood and generate_until."""
    from lm_eval.api.instance import Instance

    reqs, owners = [], []
    for e in entities:
        for c in mc1_choices(world, e):
            reqs.append(Instance("loglikelihood", {}, (mc_prompt(world, e), " " + answer(world, e, c)), len(reqs)))
            owners.append(e)
    lls = np.asarray([r[0] for r in lm.loglikelihood(reqs, disable_tqdm=True)])
    gens = lm.generate_until([Instance("generate_until", {}, (mc_prompt(world, e), {"until": ["Q:"], "max_gen_toks": 8,
                                                                                       "do_sample": False}), i)
                              for i, e in enumerate(entities)], disable_tqdm=True)
    mc1, ptrue, gen = {}, {}, {}
    k = 0
    for e, text in zip(entities, gens):
        n = len(mc1_choices(world, e))
        s = lls[k:k + n]
        k += n
        mc1[e] = float(np.argmax(s) == 0)
        ptrue[e] = float(1 / (1 + np.exp(s[1] - s[0])))
        said = next((w for w in text.replace(".", " ").split() if w in world.colours), "")
        gen[e] = float(said == world.colours[world.truth[e]])
    myth = [e for e in entities if world.is_myth(e)]
    fact = [e for e in entities if not world.is_myth(e)]
    avg = lambda d, es: float(np.mean([d[e] for e in es])) if es else float("nan")  # noqa: E731
    return Scores(avg(mc1, myth), avg(mc1, fact), avg(ptrue, myth), avg(gen, myth), avg(gen, fact), len(myth), len(fact))


def run_bar(model_dir, num_heads: int | None = None, seed: int = 42, work_dir=None, alpha_grid=ALPHA_GRID,
            progress: bool = False) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..fit import fit_directions

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
        folds = []
        for fold in (0, 1):
            fit = fit_directions(model, work / f"fold{fold}.safetensors", tokenizer=tokenizer, data_dir=data_dir,
                                 num_folds=2, fold=fold, num_heads=k, seed=seed, cache_dir=work / "cache",
                                 progress=progress, write_plot=False, batch_size=64)
            train_q = sorted(fit.train_questions + fit.val_questions)
            alpha, alpha_rows = choose_alpha(model, tokenizer, world, fit.directions, train_q, alpha_grid)
            rand_path = save_directions(random_like(fit.directions, seed + fold), work / f"fold{fold}.random.safetensors")
            test = sorted(fit.test_questions)
            base = lm_eval_scores(_hflm(model_dir), world, test)
            steered = lm_eval_scores(_hflm(model_dir, fit.out, alpha), world, test)
            rand = lm_eval_scores(_hflm(model_dir, rand_path, alpha), world, test)
            folds.append({"fold": fold, "alpha": alpha, "alpha_search": alpha_rows,
                          "heads": [list(map(int, p)) for p in fit.selected.tolist()],
                          "best_probe_accuracy": float(fit.probes.accuracy.max()),
                          "test_questions": len(test), "unsteered": base.as_dict(), "steered": steered.as_dict(),
                          "random": rand.as_dict()})
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    return {"model": str(model_dir), "num_heads": k, "seed": seed, "folds": folds, "summary": summarize(folds)}


def _pooled(folds, cond, key, weight):
    w = np.asarray([f[cond][weight] for f in folds], dtype=float)
    v = np.asarray([f[cond][key] for f in folds], dtype=float)
    return float((w * v).sum() / w.sum())


def summarize(folds: list[dict]) -> dict:
    """Both held-out folds pooled (weighted by their question counts) and the bar's checks."""
    get = lambda cond, key: _pooled(folds, cond, key, "n_fact" if key.startswith("fact") else "n_myth")  # noqa: E731
    s = {cond: {key: round(get(cond, key), 4) for key in ("myth_mc1", "fact_mc1", "myth_p_true", "myth_gen_true",
                                                             "fact_gen_true")}
         for cond in ("unsteered", "steered", "random")}
    s["alphas"] = [f["alpha"] for f in folds]
    checks = {
        "unsteered myth MC1 <= 0.65": s["unsteered"]["myth_mc1"] <= MAX_BASE_MC1,
        "unsteered mean P(true) in 0.5 +/- 0.1": P_TRUE_BAND[0] <= s["unsteered"]["myth_p_true"] <= P_TRUE_BAND[1],
        "steered myth MC1 >= 0.9": s["steered"]["myth_mc1"] >= MIN_STEERED_MC1,
        "non-myth MC1 drop <= 0.05": s["unsteered"]["fact_mc1"] - s["steered"]["fact_mc1"] <= MAX_FACT_DROP + 1e-9,
        "greedy states truth more often": s["steered"]["myth_gen_true"] > s["unsteered"]["myth_gen_true"],
        "random directions miss the bar": s["random"]["myth_mc1"] < MIN_STEERED_MC1,
    }
    s["checks"] = checks
    s["bar_holds"] = all(checks.values())
    return s
