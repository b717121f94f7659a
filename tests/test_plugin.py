"""The stock `lm_eval` CLI finds hf-iti (installed copy, fresh venv), data parallel, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(sys.executable)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore"}


def run(cmd, cwd, timeout=300):
    """Commands of the fresh venv get no PYTHONPATH: a source tree on it would shadow the installed copy."""
    fresh = not str(cmd[0]).startswith(str(VENV_PY.parent))
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"} if fresh else ENV
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def per_doc(folder: Path) -> dict[int, list[float]]:
    """doc id -> the logged loglikelihood of each choice (``--log_samples`` output)."""
    rows = [json.loads(l) for f in folder.rglob("samples_plugin_mc_*.jsonl") for l in f.read_text().splitlines()]
    return {r["doc_id"]: [float(x[0][0]) for x in r["resps"]] for r in rows}


def results_of(out_dir: Path) -> dict:
    files = sorted(out_dir.rglob("results_*.json"))
    assert files, f"no results under {out_dir}"
    return json.loads(files[-1].read_text())


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv holding an installed wheel of the package; dependencies come from the dev venv by path."""
    tmp = tmp_path_factory.mktemp("install")
    wheel_dir = tmp / "wheel"
    built = run([str(VENV_PY), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir),
                 str(ROOT)], cwd=tmp)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheel_dir.glob("lm_eval_iti-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lm_eval_iti_autoload.pth" in names and "lm_eval_iti/tasks/" in {n[: len("lm_eval_iti/tasks/")] for n in names}
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    new_py = venv / "bin" / "python"
    site = Path(run([str(new_py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    dev_site = Path(run([str(VENV_PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    (site / "zz_dev_dependencies.pth").write_text(str(dev_site) + "\n")  # a plain path: its .pth files are not run
    installed = run([str(VENV_PY), "-m", "pip", "--python", str(new_py), "install", "--no-deps", "--no-index", "-q",
                     str(wheel)], cwd=tmp)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return new_py, tmp


def test_stock_lm_eval_runs_hf_iti_from_an_installed_copy(fresh_venv, mc_task, tiny_model_dir, tiny_directions_file):
    py, tmp = fresh_venv
    where = run([str(py), "-c", "import lm_eval_iti, sys; print(lm_eval_iti.__file__)"], cwd=tmp)
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout, where.stdout + where.stderr
    scores = {}
    for model, extra in (("hf-iti", f",directions={tiny_directions_file},alpha=3"), ("hf", "")):
        out = tmp / f"out_{model}"
        proc = run([str(py), "-m", "lm_eval", "--model", model, "--model_args", f"pretrained={tiny_model_dir}{extra}",
                    "--tasks", str(mc_task), "--device", "cpu", "--batch_size", "4", "--log_samples",
                    "--output_path", str(out)], cwd=tmp)
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = results_of(out)
        scores[model] = per_doc(out)
        if model == "hf-iti":
            assert res["config"]["iti"]["alpha"] == 3.0 and len(res["config"]["iti"]["directions_sha256"]) == 64
    # the installed copy steers, and exactly as this tree's HFITI does in this process
    import lm_eval

    from lm_eval_iti.harness.model import HFITI

    here = HFITI(pretrained=str(tiny_model_dir), directions=str(tiny_directions_file), alpha=3, device="cpu",
                 batch_size=4)
    expected = lm_eval.simple_evaluate(model=here, tasks=[str(mc_task)], log_samples=True, bootstrap_iters=0)
    expected = {row["doc_id"]: [float(r[0][0]) for r in row["resps"]] for row in expected["samples"]["plugin_mc"]}
    assert scores["hf-iti"].keys() == expected.keys() == scores["hf"].keys() and len(expected) == 8
    for doc_id in expected:
        assert scores["hf-iti"][doc_id] == pytest.approx(expected[doc_id], abs=1e-5)
    assert max(abs(a - b) for d in expected for a, b in zip(scores["hf-iti"][d], scores["hf"][d])) > 1e-4


def test_importing_python_without_lm_eval_stays_cheap(fresh_venv):
    """The .pth ran (its module is loaded and its finder installed) and imported nothing else: no lm_eval, no torch,
    not the package."""
    py, tmp = fresh_venv
    proc = run([str(py), "-c", "import sys; print(sorted(m for m in sys.modules if m.startswith(('lm_eval', 'torch'))));"
                " print('_lm_eval_iti_autoload' in sys.modules);"
                " print(sorted(type(f).__name__ for f in sys.meta_path if type(f).__module__ == '_lm_eval_iti_autoload'))"],
               tmp)
    assert proc.stdout.split("\n")[:3] == ["[]", "True", "['_Finder']"], proc.stdout + proc.stderr


def test_data_parallel_accelerate_gives_the_same_metrics(mc_task, tiny_model_dir, tiny_directions_file, tmp_path):
    args = ["--model", "hf-iti", "--model_args", f"pretrained={tiny_model_dir},directions={tiny_directions_file}",
            "--tasks", str(mc_task), "--device", "cpu", "--batch_size", "2", "--log_samples"]
    one = run([str(VENV_PY), "-m", "lm_eval", *args, "--output_path", str(tmp_path / "one")], cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    accelerate = VENV_PY.parent / "accelerate"
    two = run([str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
               "no", "--dynamo_backend", "no", "-m", "lm_eval", *args, "--output_path", str(tmp_path / "two")],
              cwd=tmp_path, timeout=400)
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = results_of(tmp_path / "one"), results_of(tmp_path / "two")
    assert r2["results"]["plugin_mc"]["acc,none"] == r1["results"]["plugin_mc"]["acc,none"]

    a, b = per_doc(tmp_path / "one"), per_doc(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 8
    for doc_id in a:
        assert a[doc_id] == pytest.approx(b[doc_id], abs=1e-5)


def _bad_inputs(tmp_path, tiny_model_dir, tiny_directions_file):
    from transformers import AutoModelForCausalLM

    from lm_eval_iti.artifact import save_directions
    from lm_eval_iti.tiny import build_model, random_directions

    other = build_model("llama", hidden=48, layers=2, heads=3, vocab_size=512)
    other_file = save_directions(random_directions(other, 2, model_id="other-model"), tmp_path / "other.safetensors")
    nan = random_directions(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), 2)
    nan_file = tmp_path / "nan.safetensors"
    save_directions(nan, nan_file)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(nan_file), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    first = next(k for k in tensors if k.endswith(".directions"))
    tensors[first][0, 0] = float("nan")
    save_file(tensors, str(nan_file), metadata=meta)
    bloom_dir = tmp_path / "bloom"
    from transformers import BloomConfig, BloomForCausalLM

    from lm_eval_iti.tiny import build_tokenizer

    build_tokenizer(bloom_dir)
    BloomForCausalLM(BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=512)).save_pretrained(str(bloom_dir))
    d = str(tiny_directions_file)
    same_shape = build_model("llama", seed=7, vocab_size=512)  # the tiny Llama's shape, other weights
    same_shape_file = save_directions(random_directions(same_shape, 2, model_id="same-shape"),
                                      tmp_path / "same_shape.safetensors")
    return {
        "another model's file": (tiny_model_dir, f"directions={other_file}", "num_heads"),
        "NaN directions": (tiny_model_dir, f"directions={nan_file}", "NaN"),
        "missing file": (tiny_model_dir, f"directions={tmp_path / 'absent.safetensors'}", "not found"),
        "unknown position mode": (tiny_model_dir, f"directions={d},mc_positions=middle", "mc_positions='middle'"),
        "non-numeric alpha": (tiny_model_dir, f"directions={d},alpha=lots", "alpha='lots' is not a number"),
        "unsupported architecture": (bloom_dir, f"directions={d}", "unsupported architecture BloomForCausalLM"),
        # caught by hf-iti before lm-eval or transformers would fail with a traceback
        "same shape, other weights": (tiny_model_dir, f"directions={same_shape_file}", "not on this model"),
        "unknown model_args key": (tiny_model_dir, f"directions={d},no_such_key=1", "no_such_key= is known to neither"),
        "dtype float8": (tiny_model_dir, f"directions={d},dtype=float8", "dtype='float8' is not one of"),
        "alpha beyond float32": (tiny_model_dir, f"directions={d},alpha=1e39", "overflows float32"),
        "pretrained that does not exist": (tmp_path / "no-model", f"directions={d}", "no such model folder or file"),
    }


def test_bad_input_ends_with_one_line_and_writes_nothing(tmp_path, mc_task, tiny_model_dir, tiny_directions_file):
    cases = _bad_inputs(tmp_path, tiny_model_dir, tiny_directions_file)
    procs = {}
    for i, (name, (model_dir, model_args, _)) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        cli = [str(VENV_PY.parent / "lm-eval-iti"), "run"] if i % 2 else [str(VENV_PY), "-m", "lm_eval"]
        cmd = cli + ["--model", "hf-iti", "--model_args", f"pretrained={model_dir},{model_args}", "--tasks",
                     str(mc_task), "--device", "cpu", "--output_path", str(out)]
        procs[name] = (subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), out)
    for name, (proc, out) in procs.items():
        _, err = proc.communicate(timeout=300)
        expected = cases[name][2]
        assert proc.returncode != 0, name
        lines = [l for l in err.splitlines() if "lm-eval-iti: error:" in l]
        assert len(lines) == 1 and expected in lines[0], (name, err[-1500:])
        assert "Traceback" not in err, (name, err[-1500:])
        assert not out.exists(), name


# ---- the plugin is minimal: importing changes no global state; a failing hook is logged -------------------------

def test_importing_the_package_and_the_harness_leaves_sys_excepthook_alone(tmp_path):
    proc = run([str(VENV_PY), "-c", "import sys; import lm_eval_iti.harness.model, lm_eval_iti.harness.taskfns, "
                "lm_eval_iti.harness.driver; import lm_eval.models; print(sys.excepthook is sys.__excepthook__)"],
               cwd=tmp_path)
    assert proc.stdout.strip() == "True", proc.stdout + proc.stderr[-2000:]


def test_a_failing_autoload_hook_is_logged_with_its_exception(tmp_path):
    code = ("import lm_eval_iti.harness.plugin as plugin\n"
            "def broken():\n    raise RuntimeError('registry layout changed')\n"
            "plugin.register_model_lazily = broken\n"
            "import lm_eval.models\n"
            "from lm_eval.api.registry import model_registry\n"
            "print('hf-iti' in model_registry)\n")
    proc = run([str(VENV_PY), "-c", code], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stdout + proc.stderr[-2000:]
    assert "the lm_eval.models hook failed" in proc.stderr and "RuntimeError: registry layout changed" in proc.stderr


def test_one_line_errors_only_in_the_stock_cli(monkeypatch):
    import types

    from lm_eval_iti.harness import plugin

    monkeypatch.setattr(sys, "argv", ["/venv/bin/lm_eval", "--model", "hf-iti"])
    assert plugin.running_stock_lm_eval_cli()
    monkeypatch.setattr(sys, "argv", ["/venv/bin/lm-eval", "run"])
    assert plugin.running_stock_lm_eval_cli()
    monkeypatch.setattr(sys, "argv", ["/site-packages/lm_eval/__main__.py"])
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=types.SimpleNamespace(name="lm_eval.__main__")))
    assert plugin.running_stock_lm_eval_cli()  # python -m lm_eval, also under accelerate launch -m lm_eval
    monkeypatch.setattr(sys, "argv", ["notebook.py"])
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=None))
    assert not plugin.running_stock_lm_eval_cli()
    monkeypatch.setattr(sys, "argv", ["/venv/bin/my_lm_eval_wrapper"])
    assert not plugin.running_stock_lm_eval_cli()
