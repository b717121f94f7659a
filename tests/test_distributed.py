"""Data-parallel collection: ``accelerate launch --num_processes 2 -m lm_eval_iti fit-directions`` on CPU writes the
same directions file as a single-process fit, splits the chunks across ranks, and resumes an interrupted cache.

accelerate 1.15's ``launch --cpu --num_processes N`` starts N processes only through MPI (``--mpirun_hostfile``); without
it, it runs one process. ``--multi_gpu`` uses torch.distributed.run, which spawns the processes on a CPU-only machine
too (gloo backend: lm_eval_iti.distributed asks accelerate for cpu=True when there is no GPU), so that is what runs here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, shared_data
from safetensors import safe_open

ACCELERATE = Path(sys.executable).with_name("accelerate")
FIT_ARGS = ["--num-heads", "3", "--num-questions", "8", "--sigma-data", "mc", "--chunk-size", "6", "--fit-batch-size", "4",
            "--dtype", "float32", "--no-plot", "--quiet"]


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _fit(model_dir, data, out, cache, processes: int):
    fit = ["-m", "lm_eval_iti", "fit-directions", "--model", str(model_dir), "--data-dir", str(data), "--out", str(out),
           "--cache-dir", str(cache), *FIT_ARGS]
    if processes == 1:
        cmd = [sys.executable, *fit]
    else:
        if not ACCELERATE.is_file():
            pytest.skip(f"no accelerate launcher beside {sys.executable}")
        cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *fit]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.with_name(out.stem + ".summary.json").read_text())


def _read(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())


def _probe_entry(summary) -> Path:
    return Path(summary["activations"]["probe set"]["cache_path"])


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir):
    data = shared_data("truthfulqa", "v0")
    root = tmp_path_factory.mktemp("single")
    summary = _fit(tiny_model_dir, data, root / "dirs.safetensors", root / "cache", 1)
    return root, data, summary


def test_python_dash_m_lm_eval_iti_is_the_cli():
    run = subprocess.run([sys.executable, "-m", "lm_eval_iti", "--help"], env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "fit-directions" in run.stdout


def test_two_processes_write_the_single_process_directions_file(single, tiny_model_dir, tmp_path):
    root, data, one = single
    two = _fit(tiny_model_dir, data, tmp_path / "dirs.safetensors", tmp_path / "cache", 2)
    t1, m1 = _read(root / "dirs.safetensors")
    t2, m2 = _read(tmp_path / "dirs.safetensors")
    assert t1.keys() == t2.keys()
    for key in t1:
        assert t1[key].dtype == t2[key].dtype and (t1[key] == t2[key]).all(), key
    assert m1 == m2  # every metadata field, model identity included (the identity is the weights' sha256)
    # the summary differs only in what each process did: collection counters and timings (rank 0's share)
    s1, s2 = dict(one), dict(two)
    for differs in ("activations", "timings_s", "out", "heatmap"):
        s1.pop(differs), s2.pop(differs)
    assert s1 == s2
    stats = two["activations"]["probe set"]
    num_chunks = stats["chunks_computed"] + stats["chunks_by_other_ranks"]
    assert num_chunks >= 3 and stats["chunks_cached"] == 0
    assert stats["chunks_computed"] == (num_chunks + 1) // 2  # rank 0 computed its half, rank 1 the rest
    assert stats["chunks_by_other_ranks"] == num_chunks // 2
    assert len(list(_probe_entry(two).glob("chunk_*.safetensors"))) == num_chunks  # one cache entry, every chunk
    assert one["activations"]["probe set"]["chunks_computed"] == num_chunks


def test_an_interrupted_two_process_run_computes_only_the_missing_chunks(single, tiny_model_dir, tmp_path):
    import shutil

    root, data, one = single
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    entry = cache / _probe_entry(one).relative_to(root / "cache")
    chunks = sorted(entry.glob("chunk_*.safetensors"))
    missing = [chunks[1], chunks[-1]]  # as if the processes were killed before writing these
    for path in missing:
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in chunks if p not in missing}
    two = _fit(tiny_model_dir, data, tmp_path / "dirs.safetensors", cache, 2)
    stats = two["activations"]["probe set"]
    assert stats["chunks_cached"] == len(chunks) - len(missing)
    assert stats["chunks_computed"] + stats["chunks_by_other_ranks"] == len(missing)
    assert stats["chunks_computed"] == 1 and stats["chunks_by_other_ranks"] == 1  # the two missing, one per rank
    assert all(p.is_file() for p in missing)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the written chunks were only read
    t1, m1 = _read(root / "dirs.safetensors")
    t2, m2 = _read(tmp_path / "dirs.safetensors")
    assert all((t1[k] == t2[k]).all() for k in t1) and m1 == m2


def test_without_a_launcher_every_helper_is_a_world_of_one(monkeypatch):
    from lm_eval_iti import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    assert distributed.process_device() is None
    assert distributed.my_share([1, 2, 3]) == [1, 2, 3]
    distributed.barrier()  # returns at once


def test_each_process_shards_over_its_own_gpus(monkeypatch):
    from lm_eval_iti import distributed

    monkeypatch.setattr(distributed, "_launched", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_gpus(8) == [1, 3, 5, 7]
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.local_gpus(8) == [0, 2, 4, 6]
    monkeypatch.setattr(distributed, "_launched", lambda: False)
    assert distributed.local_gpus(3) == [0, 1, 2]


FIT_SCRIPT = """
import sys
import lm_eval_iti as iti
from lm_eval_iti import distributed
from lm_eval_iti.artifact import save_directions
model, data, cache, out = sys.argv[1:5]
dirs = iti.fit_directions(model, data_dir=data, num_heads=3, num_questions=8, sigma_data="mc", chunk_size=6,
                          batch_size=4, dtype="float32", cache_dir=cache, progress=False)
save_directions(dirs, f"{out}/rank{distributed.rank()}.safetensors")
"""


def test_under_accelerate_launch_every_rank_gets_the_directions(single, tiny_model_dir, tmp_path):
    """fit_directions returns the same Directions on every rank (rank 0 fits; the others receive its bytes), equal
    to the single-process fit-directions file."""
    if not ACCELERATE.is_file():
        pytest.skip(f"no accelerate launcher beside {sys.executable}")
    root, data, _ = single
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script),
           str(tiny_model_dir), str(data), str(tmp_path / "cache"), str(tmp_path)]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    t1, m1 = _read(root / "dirs.safetensors")
    for rank in (0, 1):
        t2, m2 = _read(tmp_path / f"rank{rank}.safetensors")
        assert t1.keys() == t2.keys() and all((t1[k] == t2[k]).all() for k in t1), rank
        assert m2["alpha"] == m1["alpha"] and m2["train_question_ids"] == m1["train_question_ids"], rank
