"""Shared pieces of the benchmark scripts: a random model of a given shape, interleaved timing, figure output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
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


@dataclass
class Timing:
    """Seconds of each repeat of one callable."""

    times: list[float]

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def interleaved(fns: dict, repeats: int = 5, warmup: int = 1) -> dict[str, Timing]:
    """Seconds per repeat of each callable, run alternately (A B A B ..., the order reversed every other repeat) so
    machine drift hits all alike. Compare them with ``ratio`` (minimum over minimum) and ``spread``."""
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
    return {name: Timing(ts) for name, ts in times.items()}


def ratio(timings: dict[str, Timing], num: str, den: str) -> float:
    """min(num) / min(den): the least-disturbed run of each (noise on a shared machine only ever adds time)."""
    return timings[num].min / timings[den].min


def spread(timings: dict[str, Timing], num: str, den: str) -> float:
    """(max - min) / min of the per-repeat ratios num/den (each repeat's pair ran back to back): how much the ratio
    moved from repeat to repeat on this machine."""
    per_repeat = [a / b for a, b in zip(timings[num].times, timings[den].times)]
    return (max(per_repeat) - min(per_repeat)) / min(per_repeat)


NOISY_SPREAD = 0.25  # per-repeat ratios that moved more than this: the machine was too busy to judge a target


def figure(name: str, ratio: float | None, target: str, passed: bool | None, spread: float | None = None,
           note: str = "") -> dict:
    """One row of the bench table; ``passed=None`` means the target does not apply here (shown as n/a); ``ratio=None``
    with a ``note``: the figure was not measured (shown as "not run: <note>"); a spread above ``NOISY_SPREAD``: the
    target is not judged (shown as "noisy ...")."""
    row = {"figure": name, "ratio": None if ratio is None else round(float(ratio), 4), "target": target,
           "pass": None if passed is None else bool(passed)}
    if spread is not None:
        row["spread"] = round(float(spread), 4)
        if spread > NOISY_SPREAD and passed is not None:  # neither a pass nor a fail can be read off such a run
            row["pass"] = None
            note = note or f"noisy (spread > {NOISY_SPREAD}): rerun on a quiet machine"
    if note:
        row["note"] = note
    return row


def not_run(name: str, target: str, reason: str) -> dict:
    """A figure that could not be measured here, with the reason (e.g. the real model is not installed)."""
    return figure(name, None, target, None, note=f"not run: {reason}")


def emit(figures: list[dict]) -> None:
    """The last stdout line of every benchmark: the JSON that `make bench` collects."""
    print(json.dumps({"figures": figures, "machine": machine()}))
