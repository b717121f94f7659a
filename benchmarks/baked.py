"""Baked model vs hf on the same requests (target ratio 1.00 within noise), and hf-iti in every position mode.

Model: random Llama hidden 512 x 8 layers; 48 heads. All timings interleaved in one process; ratios against hf.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import directions_file, emit, figure, interleaved, machine, random_llama_dir, ratio, spread  # noqa: E402
from overhead import requests  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.export import bake
    from lm_eval_iti.harness.model import HFITI

    model_dir = random_llama_dir(hidden=512, layers=8, heads=8)
    dirs = directions_file(model_dir, num_heads=48)
    baked_dir = Path(tempfile.mkdtemp()) / "baked"
    bake(AutoModelForCausalLM.from_pretrained(str(model_dir)), load_directions(dirs), 15.0, baked_dir,
         tokenizer=AutoTokenizer.from_pretrained(str(model_dir)))
    common = dict(device="cpu", dtype="float32", batch_size=16)
    models = {"hf": HFLM(pretrained=str(model_dir), **common), "baked": HFLM(pretrained=str(baked_dir), **common)}
    for mc, gen in (("answer", "last"), ("all", "generated"), ("all", "all")):
        models[f"hf-iti mc={mc} gen={gen}"] = HFITI(pretrained=str(model_dir), directions=str(dirs), alpha=15,
                                                     mc_positions=mc, gen_positions=gen, **common)
    ll_reqs = [Instance("loglikelihood", None, r, i) for i, r in enumerate(requests(48))]
    gen_reqs = [Instance("generate_until", None, (r[0], {"until": ["never-stop"], "max_gen_toks": 24, "min_new_tokens": 24}), i)
                for i, r in enumerate(requests(8, seed=1))]
    print(f"machine: {machine()}")
    ll = interleaved({k: (lambda m=m: m.loglikelihood(ll_reqs, disable_tqdm=True)) for k, m in models.items()},
                     repeats=args.repeats)
    gen = interleaved({k: (lambda m=m: m.generate_until(gen_reqs, disable_tqdm=True)) for k, m in models.items()},
                      repeats=args.repeats)
    figures = []
    for name in models:
        if name == "hf":
            continue
        for kind, t in (("loglikelihood", ll), ("generation", gen)):
            r, s = ratio(t, name, "hf"), spread(t, name, "hf")
            print(f"{kind:14s} {name:32s} {t[name].min:.3f}s  / hf {t['hf'].min:.3f}s = {r:.3f} (spread {s:.3f})")
            target = "1.00 +/- 0.05" if name == "baked" else "<= 1.05"
            ok = abs(r - 1) <= 0.05 if name == "baked" else r <= 1.05
            figures.append(figure(f"{name}/hf {kind}", r, target, ok, s))
    emit(figures)


if __name__ == "__main__":
    main()
