"""hf-iti / hf time ratio on the same requests, interleaved repeats, one process (target <= 1.05 on CPU).

Model: random Llama, hidden 512 x 8 layers x 8 heads, 48 intervened heads. Loglikelihood: 64 requests
(~60-token contexts, multi-token answers) at batch 16. Generation: 8 prompts, 32 greedy new tokens, batch 8.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import directions_file, emit, figure, interleaved, machine, random_llama_dir, ratio, spread  # noqa: E402


def requests(n=64, seed=0):
    import random

    rng = random.Random(seed)
    words = "the of a truth myth answer question model head light focus lens mirror city year party".split()
    out = []
    for i in range(n):
        ctx = "Q: " + " ".join(rng.choice(words) for _ in range(40 + i % 13)) + "?\nA:"
        out.append((ctx, " " + " ".join(rng.choice(words) for _ in range(3 + i % 5))))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_iti.harness.model import HFITI

    model_dir = random_llama_dir(hidden=args.hidden, layers=args.layers, heads=8)
    dirs = directions_file(model_dir, num_heads=48)
    common = dict(pretrained=str(model_dir), device="cpu", dtype="float32")
    hf = HFLM(batch_size=16, **common)
    iti = HFITI(batch_size=16, directions=str(dirs), alpha=15, **common)
    ll_reqs = [Instance("loglikelihood", None, r, i) for i, r in enumerate(requests())]
    gen_reqs = [Instance("generate_until", None, (r[0], {"until": ["never-stop"], "max_gen_toks": 32, "min_new_tokens": 32}), i)
                for i, r in enumerate(requests(8, seed=1))]
    print(f"machine: {machine()}\nmodel: random Llama hidden {args.hidden} x {args.layers} layers, 48 heads edited")

    ll = interleaved({"hf": lambda: hf.loglikelihood(ll_reqs, disable_tqdm=True),
                      "hf-iti": lambda: iti.loglikelihood(ll_reqs, disable_tqdm=True)}, repeats=args.repeats)
    gen = interleaved({"hf": lambda: hf.generate_until(gen_reqs, disable_tqdm=True),
                       "hf-iti": lambda: iti.generate_until(gen_reqs, disable_tqdm=True)}, repeats=args.repeats)
    ll_ratio, gen_ratio = ratio(ll, "hf-iti", "hf"), ratio(gen, "hf-iti", "hf")
    ll_spread, gen_spread = spread(ll, "hf-iti", "hf"), spread(gen, "hf-iti", "hf")
    print(f"loglikelihood: hf {ll['hf'].min:.3f}s  hf-iti {ll['hf-iti'].min:.3f}s  ratio {ll_ratio:.3f} (spread {ll_spread:.3f})")
    print(f"generation:    hf {gen['hf'].min:.3f}s  hf-iti {gen['hf-iti'].min:.3f}s  ratio {gen_ratio:.3f} (spread {gen_spread:.3f})")
    emit([figure("overhead: hf-iti/hf loglikelihood (CPU, bs16)", ll_ratio, "<= 1.05", ll_ratio <= 1.05, ll_spread),
          figure("overhead: hf-iti/hf generation (CPU, bs8, 32 tok)", gen_ratio, "<= 1.05", gen_ratio <= 1.05, gen_spread)])

if __name__ == "__main__":
    main()
