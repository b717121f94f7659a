"""``make demo``: the whole pipeline on the truth world in a few minutes on a laptop CPU, fully offline.

Steps: export the world's questions (TruthfulQA's own files) -> fit-directions on fold 0's training questions ->
alpha chosen on those training questions (with the bar's side-effect bounds) -> lm-eval with ``hf`` and ``hf-iti`` on
the held-out fold's truth-world tasks -> the bar's controls on the held-out fold (20 random and 20 orthogonal draws,
random heads with the method's directions, the colour prior, side effects) -> a before/after table, a controls table,
the probe-accuracy heatmap and an alpha curve (held-out MC1 vs alpha, with random directions of the same sigma as the
control) in the output folder.
Without a shipped checkpoint (a broken install) it falls back to a tiny random Llama and says so: the pipeline
still runs, but a random model has no truth feature, so no improvement is expected then.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json_atomic, write_text_atomic
from ..intervene import Intervener
from . import CHECKPOINT_DIR
from .bar import RANDOM_DRAWS, score_shifted, choose_alpha, held_out_controls, random_like
from .design import ALPHA_GRID, NUM_HEADS, SIGMA_DATA, WORLD
from .evaluate import score
from .generator import build_world, export_truthfulqa, load_world

TASK_DIR = Path(__file__).resolve().parent / "tasks"
TASKS = ("truthworld_mc1_myth", "truthworld_mc1_fact", "truthworld_gen_myth", "truthworld_gen_fact")
METRIC = {"truthworld_mc1_myth": "acc", "truthworld_mc1_fact": "acc", "truthworld_gen_myth": "states_truth",
          "truthworld_gen_fact": "states_truth"}


def checkpoint_available(path: Path = CHECKPOINT_DIR) -> bool:
    return (path / "model.safetensors").is_file() and (path / "world.json").is_file()


def _prepare_model(out: Path, log):
    """(model folder, world, is_fallback)."""
    if checkpoint_available():
        return CHECKPOINT_DIR, load_world(CHECKPOINT_DIR), False
    from ..tiny import save_tiny

    log("WARNING: the shipped truth-world checkpoint is missing; falling back to a tiny RANDOM Llama "
        "(the pipeline runs, but no truth feature exists, so expect no improvement)")
    folder = save_tiny(out / "fallback-model", "llama", seed=0, layers=4, heads=8, hidden=128)
    world = build_world(WORLD)
    return folder, world, True


def _lm_eval(model_name: str, model_args: dict, meta: dict) -> dict:
    from ..harness.driver import evaluate

    # quiet: the demo prints its own summary; lm-eval's per-task notices are noise here
    res = evaluate(model_name, list(TASKS), meta, model_args=model_args, include_path=TASK_DIR, quiet=True,
                   batch_size=64, device="cpu", log_samples=False, bootstrap_iters=0)
    return {t: float(res["results"][t][f"{METRIC[t]},none"]) for t in TASKS}


def alpha_curve(model, tokenizer, world, directions, questions, alphas, seed: int = 0) -> dict:
    rand = random_like(directions, seed)
    rows = {"alpha": [], "myth_mc1": [], "fact_mc1": [], "random_myth_mc1": [], "random_fact_mc1": []}
    for alpha in alphas:
        got = []
        for d in (directions, rand):
            iv = Intervener(model, d, alpha).install() if alpha else None
            try:
                got.append(score(model, tokenizer, world, questions, iv, generation=False))
            finally:
                if iv is not None:
                    iv.remove()
        rows["alpha"].append(alpha)
        rows["myth_mc1"].append(got[0].myth_mc1)
        rows["fact_mc1"].append(got[0].fact_mc1)
        rows["random_myth_mc1"].append(got[1].myth_mc1)
        rows["random_fact_mc1"].append(got[1].fact_mc1)
    return rows


def plot_alpha_curve(curve: dict, chosen: float, path: Path, title: str) -> Path:
    from ..plots import new_figure, save_figure

    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curve["alpha"], curve["myth_mc1"], "o-", label="myth MC1 (ITI)")
    ax.plot(curve["alpha"], curve["fact_mc1"], "s-", label="non-myth MC1 (ITI)")
    ax.plot(curve["alpha"], curve["random_myth_mc1"], "o--", color="grey", label="myth MC1 (random dirs, same sigma)")
    ax.axvline(chosen, color="k", lw=0.8, ls=":", label=f"alpha chosen on training fold = {chosen:g}")
    ax.set_xlabel("alpha")
    ax.set_ylabel("held-out MC1")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def run_demo(out: str | Path, log=print) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..fit import fit_and_save

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model_dir, world, fallback = _prepare_model(out, log)
    data_dir = export_truthfulqa(world, out / "data")
    log(f"[1/6] truth world: {len(world.entities)} questions ({len(world.myth_entities)} with a myth) -> {data_dir}")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    fit_kwargs = dict(tokenizer=tokenizer, data_dir=data_dir, num_folds=2, fold=0, num_heads=NUM_HEADS, seed=42,
                      cache_dir=out / "cache", progress=False, batch_size=64, sigma_data=SIGMA_DATA)
    fit = fit_and_save(model, out / "directions.safetensors", **fit_kwargs)
    log(f"[2/6] fit-directions (fold 0 of 2, K={NUM_HEADS}): best head probe accuracy "
        f"{float(fit.probes.accuracy.max()):.3f}; heatmap {fit.heatmap_path}")
    train_q = sorted(fit.train_questions + fit.val_questions)
    alpha, search = choose_alpha(model, tokenizer, world, fit.directions, train_q)
    log(f"[3/6] alpha chosen on the training fold (within the side-effect bounds): {alpha:g}")
    meta = {"data_dir": str(data_dir), "num_folds": 2, "fold": 0, "seed": 42}
    base = _lm_eval("hf", {"pretrained": str(model_dir), "dtype": "float32"}, meta)
    iti = _lm_eval("hf-iti", {"pretrained": str(model_dir), "dtype": "float32", "directions": str(fit.out),
                              "alpha": alpha}, meta)
    log("[4/6] lm-eval on the held-out fold (hf vs hf-iti)")
    test = sorted(fit.test_questions)
    ctrl = held_out_controls(model, tokenizer, world, fit, alpha, fold=0)
    plain = score(model, tokenizer, world, test, None, generation=False)
    shifted = score_shifted(model, tokenizer, world, test, fit.directions, alpha)
    log(f"[5/6] controls on the held-out fold ({RANDOM_DRAWS} random and {RANDOM_DRAWS} orthogonal draws, "
        "random heads, colour prior, side effects)")
    curve = alpha_curve(model, tokenizer, world, fit.directions, test, [0.0] + list(ALPHA_GRID))
    curve_path = plot_alpha_curve(curve, alpha, out / "alpha_curve.png",
                                  ("RANDOM fallback model: " if fallback else "truth world: ")
                                  + f"held-out fold, K={NUM_HEADS} heads")
    log(f"[6/6] alpha curve -> {curve_path}")
    lines = [f"{'task (held-out fold 0)':<26} {'hf':>7} {'hf-iti':>7}"]
    for t in TASKS:
        lines.append(f"{t:<26} {base[t]:>7.3f} {iti[t]:>7.3f}")
    rand, orth = np.asarray(ctrl["random_myth_mc1"]), np.asarray(ctrl["orthogonal_myth_mc1"])
    heads = np.asarray(ctrl["random_heads_myth_mc1"])
    docs = ctrl["documents"]
    row = lambda label, *vals: f"{label:<56} " + " ".join(f"{v:>6.3f}" for v in vals)  # noqa: E731
    lines += ["", f"{'myth MC1, held-out fold 0, alpha ' + format(alpha, 'g'):<56} value",
              row("unsteered / steered (hf / hf-iti)", base["truthworld_mc1_myth"], iti["truthworld_mc1_myth"]),
              row(f"random directions, {len(rand)} draws: mean / p95", rand.mean(), np.percentile(rand, 95)),
              row(f"orthogonal directions, {len(orth)} draws: mean / p95", orth.mean(), np.percentile(orth, 95)),
              row(f"random heads, method directions, {len(heads)} draws: mean / p95", heads.mean(),
                  np.percentile(heads, 95)),
              row("colour prior (training-fold counts)", ctrl["colour_prior"]["myth_mc1"]),
              "", "side effects (unsteered -> steered)",
              row("non-myth mean log P(true answer)", plain.fact_logp_true, shifted.fact_logp_true),
              row("fresh documents: cross-entropy (nats/token)", docs["ce_unsteered"], docs["ce_steered"]),
              row("fresh documents: KL(unsteered || steered)", docs["kl"])]
    table = "\n".join(lines)
    summary = {"model": str(model_dir), "fallback_random_model": fallback, "num_heads": NUM_HEADS, "alpha": alpha,
               "alpha_search_on_training_fold": search, "hf": base, "hf-iti": iti, "controls": ctrl,
               "fact_logp_true": {"unsteered": plain.fact_logp_true, "steered": shifted.fact_logp_true},
               "alpha_curve": curve, "heatmap": str(fit.heatmap_path), "alpha_curve_png": str(curve_path),
               "directions": str(fit.out), "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / "demo.json", summary)
    write_text_atomic(out / "table.txt", table + "\n")
    log("")
    log(table)
    log(f"\nwrote {out}/demo.json, table.txt, alpha_curve.png, {Path(fit.heatmap_path).name} "
        f"({summary['seconds']} s)")
    return summary
