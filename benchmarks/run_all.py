"""`make bench`: run every benchmark script here, one after another, and print one table of their figures.

Each script prints, as its last stdout line, {"figures": [{"figure", "ratio", "target", "pass"[, "spread"][, "note"]},
...]}. Timed ratios are min/min over interleaved repeats; spread is (max - min) / min of the per-repeat ratios.
gpu_check.py runs with --small when no CUDA device is present (correctness only on CPU).

``--smoke``: every script on tiny shapes with one repeat (about 7 minutes in all on the 2-core CPU; `make test` does
not run it yet). Its figures show that each script runs, not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine  # noqa: E402


# tiny shapes, one repeat: the smoke mode of each script
SMOKE_ARGS = {
    "baked.py": ["--repeats", "1"],
    "collect.py": ["--prompts", "8", "--batch-size", "4"],
    "gpu_check.py": ["--small", "--repeats", "1"],
    "judges.py": ["--answers", "4", "--latency", "0.001"],
    "memory.py": ["--smoke", "--prompts", "40", "--collect-prompts", "4", "--chunk-size", "2", "--batch-size", "2"],
    "overhead.py": ["--repeats", "1", "--hidden", "64", "--layers", "2"],
    "probes.py": ["--smoke"],
    "real_model.py": ["--questions", "4", "--fit-repeats", "1", "--repeats", "1", "--requests", "4",
                      "--gen-tokens", "2"],
    "sweep_engine.py": ["--questions", "2", "--model", "random"],
}


def scripts() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")


def main(argv: list[str] | None = None) -> int:
    import torch

    smoke = "--smoke" in (sys.argv[1:] if argv is None else argv)
    rows, failures = [], []
    for script in scripts():
        args = [sys.executable, str(script)]
        if smoke:
            args += SMOKE_ARGS.get(script.name, [])
        elif script.name == "gpu_check.py" and not torch.cuda.is_available():
            args.append("--small")
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        lines = [l for l in proc.stdout.splitlines() if l.strip()]
        print("\n".join(l for l in lines[:-1] if not l.startswith("{")), flush=True)
        try:
            figures = json.loads(lines[-1])["figures"]
        except (IndexError, ValueError, KeyError):
            failures.append(f"{script.name}: exit {proc.returncode}, no figures ({proc.stderr.strip().splitlines()[-1:] })")
            continue
        for f in figures:
            result = f.get("note") or ("n/a" if f["pass"] is None else "pass" if f["pass"] else "FAIL")
            spread = "" if f.get("spread") is None else f"{f['spread']:.3f}"
            rows.append((script.name, f["figure"], "-" if f["ratio"] is None else f["ratio"], spread, f["target"], result))
        print(f"   ({elapsed:.0f} s)", flush=True)
    print(f"\nmachine: {machine()}\n")
    header = ("script", "figure", "ratio", "spread", "target", "result")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    for failure in failures:
        print(f"ERROR {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
