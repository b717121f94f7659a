"""Batched torch probes vs the reference's sklearn loop on activations shaped like one Llama-7B TruthfulQA fold.

Shape: 32 layers x 32 heads = 1,024 probes, head_dim 128, 4,700 training rows and 1,180 validation rows (fp16, raw,
anisotropic scales like real out-projection inputs), labels ~40% true, a planted direction of varying strength per
head so validation accuracies spread from chance to ~0.9. The sklearn loop runs single-threaded, as the reference did
(LogisticRegression(random_state=42, max_iter=1000), one head after another); the batched solver uses every thread.

Prints: seconds of each, the speed ratio, mean |accuracy difference| and top-48 overlap; last line the JSON figures.
Options: --heads N to time the sklearn loop on the first N heads only and extrapolate (quick runs).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def synthetic_fold(layers=32, heads=32, head_dim=128, n_train=4700, n_val=1180, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    y = (torch.rand(n, generator=g) < 0.4).float()
    scales = torch.exp(0.8 * torch.randn(layers, heads, head_dim, generator=g)) * 0.2
    acts = torch.randn(n, layers, heads, head_dim, generator=g) * scales
    direction = torch.randn(layers, heads, head_dim, generator=g)
    direction /= direction.norm(dim=-1, keepdim=True)
    strength = torch.rand(layers, heads, generator=g) ** 3 * 2.5  # most heads weak, a few strong
    acts += (2 * y - 1)[:, None, None, None] * (strength[..., None] * direction * scales.mean(-1, keepdim=True))
    return acts.half(), y.long().numpy(), list(range(n_train)), list(range(n_train, n))


def main():
    from threadpoolctl import threadpool_limits

    from lm_eval_iti.probes import fit_probes, fit_probes_sklearn
    from lm_eval_iti.select import rank_heads

    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=0, help="time sklearn on this many heads and extrapolate (0: all)")
    ap.add_argument("--k", type=int, default=48)
    ap.add_argument("--smoke", action="store_true", help="a tiny shape (2 x 4 heads, d 16, 250 rows): runs, not figures")
    args = ap.parse_args()

    acts, y, train, val = (synthetic_fold(layers=2, heads=4, head_dim=16, n_train=200, n_val=50) if args.smoke
                           else synthetic_fold())
    args.k = min(args.k, acts.shape[1] * acts.shape[2])
    L, H = acts.shape[1:3]
    print(f"activations {list(acts.shape)} fp16, {len(train)} train rows, {len(val)} val rows, "
          f"torch threads {torch.get_num_threads()}")

    fit_probes(acts[:64, :1, :2], y[:64], list(range(48)), list(range(48, 64)))  # warm-up (kernels, allocator)
    t = time.perf_counter()
    batched = fit_probes(acts, y, train, val)
    t_batched = time.perf_counter() - t
    print(f"batched torch: {t_batched:.2f} s (Newton iterations: at most {batched.iterations})")

    subset = acts if not args.heads else acts.reshape(acts.shape[0], L * H, 1, -1)[:, :args.heads]
    with threadpool_limits(limits=1):
        t = time.perf_counter()
        ref = fit_probes_sklearn(subset, y, train, val, seed=42)
        t_ref = time.perf_counter() - t
    probes_timed = subset.shape[1] * subset.shape[2]
    t_ref_full = t_ref * (L * H) / probes_timed
    note = "" if probes_timed == L * H else f" (timed on {probes_timed} heads, extrapolated)"
    print(f"sklearn loop (1 thread): {t_ref_full:.2f} s{note}; lbfgs iterations at most {ref.iterations}")

    acc_b = batched.accuracy.reshape(-1)[:probes_timed]
    acc_r = ref.accuracy.reshape(-1)
    mad = float((acc_b - acc_r).abs().mean())
    maxd = float((acc_b - acc_r).abs().max())
    ratio = t_ref_full / t_batched
    figures = [
        {"figure": "probes: sklearn loop / batched torch (1,024 heads, d=128, 4,700 rows; 2-core CPU)",
         "ratio": round(ratio, 2), "target": ">= 30x", "pass": ratio >= 30},
        {"figure": "probes: mean |val accuracy difference| batched vs sklearn", "ratio": round(mad, 5),
         "target": "<= 0.01", "pass": mad <= 0.01},
    ]
    if probes_timed == L * H:
        top_b = {tuple(p) for p in rank_heads(batched.accuracy)[:args.k].tolist()}
        top_r = {tuple(p) for p in rank_heads(ref.accuracy)[:args.k].tolist()}
        overlap = len(top_b & top_r) / args.k
        print(f"top-{args.k} overlap: {overlap:.3f}")
        figures.append({"figure": f"probes: top-{args.k} overlap batched vs sklearn", "ratio": round(overlap, 4),
                        "target": ">= 0.9", "pass": overlap >= 0.9})
    print(f"speed ratio: {ratio:.1f}x; mean |acc diff| {mad:.5f}, max {maxd:.4f}")
    print(json.dumps({"figures": figures}))


if __name__ == "__main__":
    main()
