"""Shared pieces of the benchmark scripts: a random model of a given shape, interleaved timing, figure output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def random_llama_dir(hidden=512, layers=8, heads=8, vocab=2048, seed=0, dtype=torch.float32) -> Path:
    """A saved random Llama of the given shape with the offline tokenizer (cached per shape in the temp dir)."""
    from lm_eval_iti.tiny import build_model, build_tokenizer

    out = Path(tempfile.gettempdir()) / f"lm_eval_iti_bench_llama_{hidden}x{layers}x{heads}_{vocab}_{seed}"
    if not (out / "config.json").exists():
        tok = build_tokenizer(out, vocab_size=min(vocab, 512))
        model = build_model("llama", seed=seed, hidden=hidden, layers=layers, heads=heads, vocab_size=max(vocab, len(tok)),
                            dtype=dtype)
        model.config.intermediate_size = hidden * 2
        model.save_pretrained(str(out))
    return out


def directions_file(model_dir: Path, num_heads=48, alpha=15.0, seed=0) -> Path:
    from transformers import AutoModelForCausalLM

    from lm_eval_iti.artifact import save_directions
    from lm_eval_iti.tiny import random_directions

    path = model_dir / f"dirs_{num_heads}_{seed}.safetensors"
    if not path.exists():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
        save_directions(random_directions(model, num_heads=num_heads, seed=seed, alpha=alpha), path)
    return path


def interleaved(fns: dict, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per callable, run alternately (A B A B ...) so machine drift hits both alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        order = list(fns.items()) if r % 2 == 0 else list(reversed(list(fns.items())))
        for name, fn in order:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def figure(name: str, ratio: float, target: str, passed: bool | None) -> dict:
    """One row of the bench table; ``passed=None`` means the target does not apply here (shown as n/a)."""
    return {"figure": name, "ratio": round(float(ratio), 4), "target": target,
            "pass": None if passed is None else bool(passed)}


def emit(figures: list[dict]) -> None:
    """The last stdout line of every benchmark: the JSON that `make bench` collects."""
    print(json.dumps({"figures": figures, "machine": machine()}))
