"""A 15-point sweep (alpha {0,5,10,15,20} x K {16,32,48}) of TruthfulQA MC1+MC2 on fold 0 of 2: the shared-prefix
engine against per-point lm-eval hf-iti, same process, same questions (target: engine >= 10x faster on CPU).

Model: SmolLM2-135M-Instruct (the packaged GGUF, dequantized to fp32) when installed, else a random Llama hidden
512 x 8 layers x 8 heads. Directions: 48 random heads of the model's shape (the cost depends on neither the heads nor
alpha). Both sides score the first --questions questions of fold 0 (lm-eval ``--limit``) through the same
``simple_evaluate`` driver and tasks:
  per-point: one hf-iti lm-eval run per grid point, alpha 0 once (no edit whatever K: what ``sweep --engine off``
             does), i.e. 1 + 4 x 3 = 13 runs;
  engine:    ``harness.engine.score_points`` for all 15 points (one scoring pass, then lm-eval's metrics per point).
Per-point lm-eval over a whole fold takes hours on 2 cores, hence the subset (--questions raises it). The two sides'
metrics are checked to agree (MC1 identical, MC2 within 1e-4) before any figure is printed.

Floor: the forward passes that cannot be shared, each common prefix and each question's own prefix once plus every
choice's scored positions x every steered point, timed as the engine runs them (synchronised timers around exactly
those model calls). engine / floor is what the rest costs: lm-eval's request building and metrics for 15 points,
cache forks, the per-row shift hooks, log-softmax. Timings are single runs (--repeats for more) on a shared machine:
indicative.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, figure, machine, not_run, random_llama_dir  # noqa: E402

ALPHAS, KS = (0.0, 5.0, 10.0, 15.0, 20.0), (16, 32, 48)
TASKS = ["truthfulqa_iti_mc1", "truthfulqa_iti_mc2"]
SPEEDUP_TARGET = 10.0


def shared_data() -> Path:
    return Path(os.environ.get("LM_EVAL_ITI_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load(model_choice: str):
    """(model, tokenizer, description) of SmolLM2 when installed (and not --model random), else the random Llama."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.errors import ITIError

    if model_choice != "random":
        try:
            from lm_eval_iti.gguf import require_gguf_package, resolve_model
            from lm_eval_iti.loading import load_model

            require_gguf_package()
            resolve_model("smollm2-135m-instruct")
            model, tok = load_model("smollm2-135m-instruct", dtype="float32", device="cpu", progress=False)
            return model, tok, "SmolLM2-135M-Instruct (fp32)"
        except ITIError as exc:
            print(f"SmolLM2 not available ({exc}); using the random Llama")
    folder = random_llama_dir(hidden=512, layers=8, heads=8)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(str(folder)), "random Llama 512 x 8 layers (fp32)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=10, help="questions of fold 0 scored by both sides")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each side (min is reported)")
    ap.add_argument("--model", choices=("auto", "random"), default="auto")
    args = ap.parse_args()
    settings = [(a, k) for a in ALPHAS for k in KS]
    speed_name = f"sweep engine: per-point lm-eval / engine (15 points, MC1+MC2, {args.questions} q)"
    floor_name = "sweep engine: engine / its floor (unshareable forwards)"
    v0 = shared_data() / "truthfulqa" / "v0"
    if not v0.is_dir():
        reason = f"TruthfulQA v0 not found at {v0}"
        emit([not_run(speed_name, f">= {SPEEDUP_TARGET:g}", reason), not_run(floor_name, "report", reason)])
        return

    from lm_eval_iti.artifact import load_directions, save_directions
    from lm_eval_iti.harness.driver import run_tasks
    from lm_eval_iti.harness.engine import score_points
    from lm_eval_iti.harness.model import HFITI
    from lm_eval_iti.tiny import random_directions

    model, tok, described = load(args.model)
    print(f"machine: {machine()}\nmodel: {described}; {args.questions} questions of fold 0/2, tasks {', '.join(TASKS)}")
    work = Path(tempfile.mkdtemp(prefix="lm_eval_iti_sweep_bench_"))
    path = save_directions(random_directions(model, num_heads=max(KS), seed=0, alpha=15.0), work / "dirs.safetensors")
    directions = load_directions(path)
    metadata = {"data_dir": str(v0), "num_folds": 2, "fold": 0, "seed": 42}
    common = dict(limit=args.questions, bootstrap_iters=0)

    def per_point():
        out = {}
        for alpha, k in settings:
            if alpha == 0 and k != KS[0]:
                out[(alpha, k)] = out[(alpha, KS[0])]  # alpha 0 edits nothing: evaluated once, as sweep does
                continue
            lm = HFITI(pretrained=model, tokenizer=tok, directions=str(path), alpha=alpha, num_heads=k, batch_size=16)
            try:
                out[(alpha, k)] = run_tasks(lm, TASKS, metadata, **common)["metrics"]
            finally:
                lm.intervener.remove()
        return out

    def engine():
        holder = []
        evaluations = score_points(model, tok, TASKS, metadata, directions, settings, batch_size=16,
                                   engine_lm=holder, **common)
        return {s: e["metrics"] for s, e in zip(settings, evaluations)}, holder[0].stats[0]

    engine_times, lm_eval_times, forward_times = [], [], []
    for _ in range(args.repeats):
        clock = time.perf_counter()
        by_engine, stats = engine()
        engine_times.append(time.perf_counter() - clock)
        forward_times.append(stats["forward_seconds"])
        clock = time.perf_counter()
        by_lm_eval = per_point()
        lm_eval_times.append(time.perf_counter() - clock)
    worst = 0.0
    for s in settings:
        assert by_engine[s]["truthfulqa_iti_mc1"]["acc"] == by_lm_eval[s]["truthfulqa_iti_mc1"]["acc"], s
        worst = max(worst, abs(by_engine[s]["truthfulqa_iti_mc2"]["acc"] - by_lm_eval[s]["truthfulqa_iti_mc2"]["acc"]))
    assert worst <= 1e-4, worst
    engine_s, lm_eval_s, floor_s = min(engine_times), min(lm_eval_times), min(forward_times)
    speedup, over_floor = lm_eval_s / engine_s, engine_s / floor_s
    print(f"per-point lm-eval {lm_eval_s:.1f}s (13 runs) | engine {engine_s:.1f}s, of which forwards {floor_s:.1f}s "
          f"({stats['prefix_tokens']} prefix tokens, {stats['suffix_rows']} scored rows / {stats['suffix_tokens']} "
          f"tokens in {stats['batches']} batches, common prefix {stats['common_prefix']} tokens, "
          f"{stats['prefixes']} distinct prefixes) | agreement: MC1 identical, MC2 within {worst:.1e}")
    print(f"speed-up {speedup:.1f}x (target >= {SPEEDUP_TARGET:g}); engine = {over_floor:.2f} x its floor")
    note = f"{described}; single runs on a shared machine: indicative"
    emit([figure(speed_name, speedup, f">= {SPEEDUP_TARGET:g}", speedup >= SPEEDUP_TARGET),
          figure(floor_name, over_floor, "report", None, note=note)])


if __name__ == "__main__":
    main()
