"""Peak memory of collection and of the probe stage at 70B head geometry (80 layers x 64 heads x 128 dims).

The model is a random Llama with that attention geometry but hidden size 64 (q/o projections 64 <-> 8192), so its
weights are small while every activation has the real 70B shape: 80 x 64 x 128 = 655,360 values per prompt (1.31 MB
in fp16). Each phase runs in a fresh subprocess; a thread samples the resident set size (RSS) every 2 ms and the phase
reports its peak above the RSS it started with (glibc's mmap threshold is fixed and the heap trimmed first, so freed
memory is not counted). Compared with the formulas of docs/multi-device.md:

  collection (per process): model + chunk_size x P x 2 + batch x P x 8 (fp32 rows captured, then stacked) + forward
      working set
      (+ N x P x 2 when the tensor is assembled, probe_memory="memory")
  probes, memory mode: N x P x 2 (the activations) + group working set (<= max_bytes) + Hessians + L x H x d x 4
  probes, stream mode: block (N x layers x H x d x 2, <= max(block_bytes, layers one group spans)) + one chunk's slice
      + group working set + Hessians + L x H x d x 4
where P = L x H x d. Both probe modes' results are compared (they must be identical).

Options: --prompts N (probe rows, default 400), --collect-prompts N (default 48), --skip-probes (collection only).
Last line: the JSON figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

L, H, D = 80, 64, 128
if "--smoke" in sys.argv:  # tiny geometry: the script runs, its figures mean nothing
    L, H, D = 4, 4, 16
P = L * H * D
MB = 1e6


class PeakRSS:
    """Samples /proc/self/statm in a thread; ``peak - start`` is what a phase added at most."""

    def __init__(self, interval=0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.start = self._rss()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        try:  # hand freed heap back to the OS, so the phase starts from what is really in use
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.peak = self.start = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def added(self) -> int:
        return self.peak - self.start


def geometry_model():
    from lm_eval_iti.tiny import build_model

    model = build_model("llama", seed=0, hidden=64, layers=L, heads=H, vocab_size=512, head_dim=D,
                        num_key_value_heads=min(8, H), intermediate_size=128)
    return model


def phase_collect(args, mode):
    from lm_eval_iti.collect import collect_activations
    from lm_eval_iti.tiny import build_tokenizer

    model, tok = geometry_model(), build_tokenizer()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    prompts = [f"Q: question number {i} about the world? A: answer {i}." for i in range(args.collect_prompts)]
    collect_activations(model, tok, prompts[:args.batch_size], batch_size=args.batch_size, use_cache=False,
                        identity="bench", progress=False)  # warm-up: one-time allocations are not a phase's cost
    with tempfile.TemporaryDirectory() as cache, PeakRSS() as rss:
        acts = collect_activations(model, tok, prompts, batch_size=args.batch_size, chunk_size=args.chunk_size,
                                   cache_dir=cache, identity="bench", progress=False, stream=mode == "stream")
        del acts
    n = args.collect_prompts
    formula = args.chunk_size * P * 2 + args.batch_size * P * 8 + (n * P * 2 if mode == "memory" else 0)
    return {"weights_bytes": weights, f"collect_added_{mode}": rss.added, f"formula_{mode}_excl_forward": formula}


def _write_cache(root: Path, n: int, chunk: int):
    from lm_eval_iti.collect import ActivationCache

    meta = {"layout": "1", "model_identity": "bench", "tokens_sha256": f"n{n}", "dtype": "float16",
            "site": "attn_out_proj_input", "shape": [L, H, D], "num_prompts": n, "chunk_size": chunk}
    cache = ActivationCache.open(root, meta)
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(n, generator=g) < 0.4).long()
    direction = torch.randn(L, H, D, generator=g)
    direction /= direction.norm(dim=-1, keepdim=True)
    strength = torch.rand(L, H, 1, generator=g) ** 3 * 3
    for i in range(cache.num_chunks):
        rows = cache.chunk_rows(i)
        if not cache.has_chunk(i):
            x = torch.randn(len(rows), L, H, D, generator=g)
            x += (2 * y[rows.start:rows.stop] - 1)[:, None, None, None] * strength * direction
            cache.write_chunk(i, x.half())
    return cache, y.numpy()


def phase_probes(args, mode):
    from lm_eval_iti.probes import fit_probes

    cache, y = _write_cache(Path(args.cache), args.prompts, args.chunk_size)
    n_train = int(args.prompts * 0.8)
    train, val = list(range(n_train)), list(range(n_train, args.prompts))
    with PeakRSS() as rss:
        acts = cache.load() if mode == "memory" else cache.layers()
        result = fit_probes(acts, y, train, val, max_bytes=args.max_bytes)
    from safetensors.torch import save_file  # never a pickle, even for the bench's own files

    save_file({"coef": result.coef.contiguous(), "accuracy": result.accuracy.contiguous(),
               "intercept": result.intercept.contiguous()}, str(Path(args.cache) / f"probes_{mode}.safetensors"))
    return {f"probes_added_{mode}": rss.added, f"probes_seconds_{mode}": result.seconds, **(
        {"largest_block_bytes": result.info["largest_block_bytes"], "layer_reads": result.info["layer_reads"]}
        if mode == "stream" else {})}


def _sub(args, phase):
    cmd = [sys.executable, __file__, "--phase", phase, "--prompts", str(args.prompts), "--collect-prompts",
           str(args.collect_prompts), "--cache", args.cache, "--chunk-size", str(args.chunk_size), "--batch-size",
           str(args.batch_size), "--max-bytes", str(args.max_bytes)] + (["--smoke"] if args.smoke else [])
    # a fixed mmap threshold: glibc's adaptive one would keep freed blocks of up to 32 MB in the heap, so the RSS
    # would show what was once allocated rather than what a phase holds
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--collect-prompts", type=int, default=48)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-bytes", type=int, default=256 << 20)
    parser.add_argument("--phase", default=None)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--skip-probes", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a 4 x 4 x 16 geometry (read at import)")
    args = parser.parse_args()
    if args.phase in ("collect-stream", "collect-memory"):
        print(json.dumps(phase_collect(args, args.phase.split("-")[1])))
        return
    if args.phase in ("memory", "stream"):
        print(json.dumps(phase_probes(args, args.phase)))
        return
    with tempfile.TemporaryDirectory() as cache:
        args.cache = cache
        figures = {"geometry": [L, H, D], "bytes_per_prompt_fp16": P * 2, "probe_rows": args.prompts,
                   "chunk_size": args.chunk_size, "batch_size": args.batch_size, "max_bytes": args.max_bytes}
        figures.update(_sub(args, "collect-stream"))
        figures.update(_sub(args, "collect-memory"))
        if not args.skip_probes:
            figures.update(_sub(args, "memory"))
            figures.update(_sub(args, "stream"))
            from safetensors.torch import load_file

            a, b = (load_file(str(Path(cache) / f"probes_{mode}.safetensors")) for mode in ("memory", "stream"))
            figures["probe_results_identical"] = all(torch.equal(a[k], b[k]) for k in a)
            figures["activations_bytes"] = args.prompts * P * 2
    for key, value in figures.items():
        shown = f"{value / MB:,.1f} MB" if key.endswith(("_bytes", "_stream", "_memory", "forward")) and \
            isinstance(value, int) and key != "max_bytes" else value
        print(f"{key:>32}: {shown}")
    print(json.dumps(figures))
    emit(bench_rows(figures))


def bench_rows(figures: dict) -> list[dict]:
    """The `make bench` rows: measured peaks against the docs' formulas, and the two probe modes' agreement."""
    from _common import figure

    rows = [figure("memory: collection RSS added, stream / formula (70B geometry, forward excluded)",
                   figures["collect_added_stream"] / figures["formula_stream_excl_forward"], "report", None),
            figure("memory: collection RSS added, memory mode / formula",
                   figures["collect_added_memory"] / figures["formula_memory_excl_forward"], "report", None)]
    if "probe_results_identical" in figures:
        rows.append(figure("memory: probe stage RSS added, stream / memory mode",
                           figures["probes_added_stream"] / figures["probes_added_memory"], "report", None))
        rows.append(figure("memory: stream and memory probes give identical results",
                           None if not figures["probe_results_identical"] else 1.0, "identical",
                           figures["probe_results_identical"]))
    return rows


if __name__ == "__main__":
    main()
