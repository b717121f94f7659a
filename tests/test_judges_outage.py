"""End to end through the stock ``lm_eval`` CLI: truthfulqa_iti_gen on a tiny random model, judged by a local
OpenAI-compatible server that injects 429s, 500s, timeouts and garbage bodies, and then goes down for good.

Until the outage the numbers equal a fault-free computation; after it the generations survive (samples file), the
affected metrics are NaN with the failure count and one warning, and ``lm-eval-iti judge`` completes the metrics
from the saved samples and the cache, without generating again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import shared_data
from _reference.judge_metrics import expected_from_samples
from _reference.judge_server import FAULTS

LIMIT = 6
JUDGE_METRICS = ("truth", "info", "truth_info", "truth_and_info", "judge_failures", "judge_undecided")


def _first_attempt_fault(key: str, attempt: int):
    """Every prompt's first attempt meets one of the four faults (429, 500, a timeout, a garbage body)."""
    return FAULTS[int(hashlib.sha256(key.encode()).hexdigest(), 16) % 4] if attempt == 0 else None


def _lm_eval(tmp_path: Path, name: str, tiny_model_dir, meta: dict, env: dict) -> subprocess.CompletedProcess:
    lm_eval_bin = str(Path(sys.executable).parent / "lm_eval")
    cmd = [lm_eval_bin, "--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32",
           "--tasks", "truthfulqa_iti_gen", "--device", "cpu", "--batch_size", "6", "--limit", str(LIMIT),
           "--metadata", json.dumps(meta), "--output_path", str(tmp_path / name), "--log_samples"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)


def _read_run(folder: Path) -> tuple[dict, list[dict]]:
    [results] = list(folder.rglob("results_*.json"))
    [samples] = list(folder.rglob("samples_truthfulqa_iti_gen_*.jsonl"))
    lines = [json.loads(x) for x in samples.read_text().splitlines() if x.strip()]
    return json.loads(results.read_text())["results"]["truthfulqa_iti_gen"], sorted(lines, key=lambda s: s["doc_id"])


@pytest.mark.slow
def test_outage_keeps_generations_and_lm_eval_iti_judge_completes_them(fake_server, tmp_path, tiny_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    for name in list(env):
        if name.startswith("LM_EVAL_ITI_JUDGE"):
            del env[name]
    fake_server.slow_seconds = 0.6
    base = {"data_dir": str(shared_data("truthfulqa", "v0")), "judge": "openai", "truth_judge": "truth-judge",
            "info_judge": "info-judge", "judge_base_url": fake_server.url, "judge_timeout": 0.3,
            "judge_backoff": 0.01, "judge_retries": 2, "judge_concurrency": 2,
            "judge_check": False}  # the judge check has its own tests (test_judges_check.py)

    # 1. faults on every first attempt, no outage: the metrics equal the fault-free computation
    fake_server.plan = lambda endpoint, key, attempt: _first_attempt_fault(key, attempt)
    clean = _lm_eval(tmp_path, "clean", tiny_model_dir, {**base, "judge_cache": str(tmp_path / "clean.sqlite")}, env)
    assert clean.returncode == 0, clean.stderr[-3000:]
    clean_res, clean_samples = _read_run(tmp_path / "clean")
    expected = expected_from_samples(clean_samples)
    assert len(clean_samples) == LIMIT
    for m in JUDGE_METRICS:
        assert math.isclose(clean_res[f"{m},none"], expected[m]), m
    assert clean_res["judge_undecided,none"] == 0 and "JUDGE OUTAGE" not in clean.stderr
    assert {_first_attempt_fault(k[2], 0) for k in fake_server.attempts} == set(FAULTS)  # all four injected

    # 2. the same faults, then a permanent outage after 9 answered requests: 6 truth, 3 of the 6 info judgments
    answered, lock = [], threading.Lock()

    def plan(endpoint, key, attempt):
        with lock:
            fault = _first_attempt_fault(key, attempt)
            if fault is None and len(answered) >= 9:
                fake_server.down = True
                return "500"
            if fault is None:
                answered.append(key)
            return fault

    fake_server.attempts.clear()
    fake_server.plan = plan
    cache = tmp_path / "outage.sqlite"
    down = _lm_eval(tmp_path, "outage", tiny_model_dir, {**base, "judge_cache": str(cache)}, env)
    assert down.returncode == 0, down.stderr[-3000:]
    assert fake_server.down and len(answered) == 9
    res, samples = _read_run(tmp_path / "outage")
    # the generations survived, identical to the fault-free run's (greedy decoding)
    assert [s["filtered_resps"] for s in samples] == [s["filtered_resps"] for s in clean_samples]
    # the truth judge finished before the outage: its metric equals the fault-free one; info did not: NaN
    assert math.isclose(res["truth,none"], expected["truth"])
    for m in ("info", "truth_info", "truth_and_info"):
        assert math.isnan(res[f"{m},none"]), m
    assert res["judge_failures,none"] == LIMIT - 3
    assert [s["truth"]["label"] for s in samples] == [t for t, _ in expected["labels"]]
    judged_info = [(s["info"]["label"], i) for s, (_, i) in zip(samples, expected["labels"])
                   if s["info"]["label"] is not None]
    assert len(judged_info) == 3 and all(a == b for a, b in judged_info)  # the judged ones equal fault-free
    assert sum("outage" in s["info"].get("failure", "") for s in samples) == LIMIT - 3
    warnings = [line for line in down.stderr.splitlines() if "JUDGE OUTAGE" in line]
    assert len(warnings) == 1 and "HTTP 500" in warnings[0] and "lm-eval-iti judge" in warnings[0]
    [unjudged] = list((tmp_path / "unjudged").glob("truthfulqa_iti_gen-*.jsonl"))  # next to the judgment cache
    assert len(unjudged.read_text().splitlines()) == LIMIT

    # 3. the server is back: lm-eval-iti judge completes the metrics from the samples file and the cache
    fake_server.down, fake_server.plan = False, (lambda endpoint, key, attempt: None)
    before = fake_server.total("completions")
    [samples_file] = list((tmp_path / "outage").rglob("samples_truthfulqa_iti_gen_*.jsonl"))
    report_path = tmp_path / "report.json"
    judge = subprocess.run([sys.executable, "-m", "lm_eval_iti", "judge", str(samples_file), "--out",
                            str(report_path), "--judge", "openai", "--truth-judge", "truth-judge", "--info-judge",
                            "info-judge", "--base-url", fake_server.url, "--cache", str(cache), "--no-judge-check"],
                           capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert judge.returncode == 0, judge.stderr[-3000:]
    assert fake_server.total("completions") - before == LIMIT - 3  # only what the outage left; nothing generated
    report = json.loads(report_path.read_text())
    for m in JUDGE_METRICS:
        assert math.isclose(report["metrics"][m], expected[m]), m
    assert report["requests"]["truth"]["cached"] == LIMIT and report["requests"]["info"]["cached"] == 3
