"""The GPU check script runs end to end on CPU with its small shape (correctness figures only, no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_small_runs_and_its_correctness_figures_hold(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--small", "--repeats", "1",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = {f["figure"]: f for f in json.loads(out.read_text())["figures"]}
    last_line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {f["figure"] for f in last_line["figures"]} == set(figures)
    for part in ("(a) hf-iti/hf loglikelihood bs16", "(a) hf-iti/hf generation bs16", "(b) collection",
                 "(c) probes sklearn loop"):
        assert any(part in name for name in figures), part
    # correctness figures (not timings): batched probes agree with sklearn, bf16 exports agree with hf-iti
    assert figures["gpu_check (c) probes mean |acc diff|"]["pass"]
    assert figures["gpu_check (d) bf16 hf-iti(all) vs steered: max rel diff"]["pass"]
    assert figures["gpu_check (d) bf16 hf-iti(all) vs baked: max rel diff"]["pass"]
