"""Batched activation collection vs a batch-1 loop on the same prompts (random Llama, hidden 512 x 8 layers, CPU).

Prompts: the probe prompts ``Q: {question} A: {answer}`` of the first TruthfulQA v0 questions when ../shared/data is
there, else the same format built from the tiny corpus. Both runs use ``collect_activations`` without the cache; the
batch-1 run is the reference's regime (one prompt per forward, no padding). Also checked: both give the same
activations (fp16 tolerance). Prints the seconds, prompts/s and the ratio; the last line is the JSON figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def prompts(n: int) -> list[str]:
    from lm_eval_iti.prompts import mc_prompt_set

    data = Path(os.environ.get("LM_EVAL_ITI_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    mc = data / "truthfulqa" / "v0"
    if mc.is_dir():
        from lm_eval_iti.data import load_mc

        return mc_prompt_set(load_mc(mc)[: max(1, n // 4)]).prompts[:n]
    from lm_eval_iti.tiny import _CORPUS

    lines = [line for line in _CORPUS.splitlines() if line.startswith("Q:")]
    return [f"{q} A: answer number {i}" for i, q in enumerate(lines * (n // len(lines) + 1))][:n]


def main():
    from lm_eval_iti.collect import collect_activations
    from lm_eval_iti.tiny import build_model, build_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    tok = build_tokenizer()
    model = build_model("llama", seed=0, vocab_size=len(tok), hidden=512, layers=8, heads=8)
    texts = prompts(args.prompts)
    lengths = [len(ids) for ids in tok(texts)["input_ids"]]
    print(f"model: random Llama hidden 512 x 8 layers x 8 heads, fp32, torch threads {torch.get_num_threads()}; "
          f"{len(texts)} prompts, {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f})")

    collect_activations(model, tok, texts[:4], batch_size=4, use_cache=False, progress=False)  # warm-up
    t = time.perf_counter()
    batched = collect_activations(model, tok, texts, batch_size=args.batch_size, use_cache=False, progress=False)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    single = collect_activations(model, tok, texts, batch_size=1, use_cache=False, progress=False)
    t_single = time.perf_counter() - t
    same = torch.allclose(batched.float(), single.float(), atol=2e-3, rtol=1e-2)
    ratio = t_single / t_batched
    print(f"batch {args.batch_size}: {t_batched:.2f} s ({len(texts) / t_batched:.1f} prompts/s)")
    print(f"batch 1: {t_single:.2f} s ({len(texts) / t_single:.1f} prompts/s)")
    print(f"ratio {ratio:.2f}x; same activations: {same}")
    print(json.dumps({"figures": [
        {"figure": f"collect: batch-1 loop / batch {args.batch_size} (Llama 512x8, {len(texts)} prompts; 2-core CPU)",
         "ratio": round(ratio, 2), "target": ">= 4x on CPU", "pass": bool(ratio >= 4 and same)}]}))


if __name__ == "__main__":
    main()
