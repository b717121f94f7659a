"""Shared fixtures: offline tiny models and the ../shared/data folder (tests needing it skip with a reason)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _threads_per_worker() -> int | None:
    """Under pytest-xdist: the CPU cores divided among the workers. Two workers of two torch threads each on two
    cores oversubscribe them (a SmolLM2 forward then takes ~1.7x as long as with one thread each)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or "OMP_NUM_THREADS" in os.environ:  # not a worker, or the caller chose the threads
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(workers))


_THREADS = _threads_per_worker()
if _THREADS is not None:
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)  # and the same in the subprocesses the tests start

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LM_EVAL_ITI_SHARED_DATA", ROOT.parent / "shared" / "data"))


# Tests whose parametrized cases are heavy enough to be work units of their own under ``--dist loadfile`` (which
# otherwise runs a whole file on one worker), so that both workers share them.
OWN_UNITS = ("tests/test_smollm2.py::test_the_engine_equals_hf_iti_with_the_studys_committed_fits",)


def _own_unit(nodeid: str) -> bool:
    return nodeid.split("[", 1)[0] in OWN_UNITS


def pytest_collection_modifyitems(config, items):
    """The order the work units are handed out in (``make test``'s ``--dist loadfile`` keeps collection order, see
    ``pytest_xdist_make_scheduler``): the cases of ``OWN_UNITS`` first, then the files with ``slow`` tests, then the
    rest, each file's tests together in their own order. Heavy work first keeps both workers busy to the end."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # a run without workers keeps pytest's order
        return

    def unit(item):
        return item.nodeid if _own_unit(item.nodeid) else item.nodeid.split("::", 1)[0]

    rank: dict[str, int] = {}
    for item in items:
        key = unit(item)
        own = 0 if _own_unit(item.nodeid) else 1 if item.get_closest_marker("slow") else 2
        rank[key] = min(rank.get(key, own), own)
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        first.setdefault(unit(item), i)
    items.sort(key=lambda item: (rank[unit(item)], first[unit(item)]))  # stable: a file's tests keep their order


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown where xdist is not loaded (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with two changes: each case of ``OWN_UNITS`` is a work unit of its own, and the units go
    out in collection order (``pytest_collection_modifyitems``), not largest file first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _own_unit(nodeid) else super()._split_scope(nodeid)

    config.option.loadscopereorder = False
    return Scheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _lm_eval_task_index_built_once():
    """lm-eval's TaskManager walks its whole task tree (~27k YAML files, 5-10 s) at every construction, e.g. in each
    ``simple_evaluate`` without a task manager. Those folders (lm-eval's own tasks, the packaged tasks) do not change
    during a run, so their index is built once per worker and each TaskManager gets its own copy of the mapping; an
    index over any other folder (a test's include_path) is built as usual."""
    import lm_eval.tasks._index as index_module

    from lm_eval_iti.harness.plugin import tasks_dir

    fixed = {Path(index_module.__file__).resolve().parent, tasks_dir().resolve()}
    build = index_module.TaskIndex.build
    built: dict = {}

    def build_once(paths, *, resolve_includes=True):
        paths = list(paths)
        key = (tuple(Path(p).resolve() for p in paths), resolve_includes)
        if not set(key[0]) <= fixed:
            return build(paths, resolve_includes=resolve_includes)
        if key not in built:
            built[key] = build(paths, resolve_includes=resolve_includes)
        return dict(built[key])

    index_module.TaskIndex.build = staticmethod(build_once)
    yield
    index_module.TaskIndex.build = build


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a clear reason where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (tests read TruthfulQA etc. from ../shared/data)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Llama (hidden 64, 2 layers, 4 heads) with an offline BPE tokenizer."""
    from lm_eval_iti.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny_llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    from lm_eval_iti.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2", seed=0)


@pytest.fixture(scope="session")
def tiny_directions_file(tiny_model_dir, tmp_path_factory):
    """A valid directions file (4 random heads, alpha 3) for the tiny Llama."""
    from transformers import AutoModelForCausalLM

    from lm_eval_iti.artifact import save_directions
    from lm_eval_iti.tiny import random_directions

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    path = tmp_path_factory.mktemp("dirs") / "tiny.safetensors"
    save_directions(random_directions(model, num_heads=4, seed=1, alpha=3.0, model_id=str(tiny_model_dir)), path)
    return path


STOCK_TQA = Path(__import__("lm_eval").__file__).parent / "tasks" / "truthfulqa"
INFORMATIVE_TEXT = ("Interpret each question literally, and as a question about the real world; carefully research "
                    "each answer, without falling prey to any common myths.")


def tqa_v0() -> Path:
    return shared_data("truthfulqa", "v0")


def tqa_local_metadata(**extra) -> dict:
    """--metadata pointing every packaged task at ../shared/data (v0 MC/gen, the 2025 CSV, the transfer CSVs)."""
    meta = {"data_dir": str(tqa_v0()), "binary_data": str(shared_data("truthfulqa", "TruthfulQA.csv")),
            "nq_data": str(shared_data("transfer", "iti_nq_open_val.csv")),
            "trivia_data": str(shared_data("transfer", "iti_trivia_qa_val.csv"))}
    meta.update(extra)
    return meta


@pytest.fixture(scope="session")
def mc_task(tmp_path_factory):
    """A self-contained multiple-choice task ``plugin_mc`` on local JSON (independent of the packaged tasks): a
    YAML path for ``--tasks`` / ``simple_evaluate(tasks=[str(path)])``."""
    folder = tmp_path_factory.mktemp("task")
    docs = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)], "gold": 0}
            for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1), (4, 4), (6, 3)]]
    (folder / "docs.json").write_text(json.dumps(docs))
    (folder / "plugin_mc.yaml").write_text(f"""task: plugin_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {folder / 'docs.json'}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return folder / "plugin_mc.yaml"


@pytest.fixture
def fake_server():
    """A running fake OpenAI-compatible judge server (tests/_reference/judge_server.py), stopped after the test."""
    from _reference.judge_server import FakeJudgeServer

    server = FakeJudgeServer().start()
    yield server
    server.stop()


# ---- tiny model builders shared by several test files ----

class IntegerLinear(nn.Linear):
    """Stands in for a bitsandbytes / FP8 layer: the stored weight is an integer tensor, activations are float."""

    def __init__(self, linear: nn.Linear, dtype=torch.uint8):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        low, high = float(linear.weight.detach().min()), float(linear.weight.detach().max())
        scale = (high - low) / 255
        codes = torch.round((linear.weight.detach() - low) / scale).clamp(0, 255)
        if dtype == torch.int8:
            codes = codes - 128
        self.weight = nn.Parameter(codes.to(dtype), requires_grad=False)
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("offset", torch.tensor(low + (128 * scale if dtype == torch.int8 else 0.0)))

    def forward(self, x):
        return nn.functional.linear(x, self.weight.to(x.dtype) * self.scale + self.offset, self.bias)


def quantized_tiny_llama(dtype=torch.uint8):
    """The tiny random Llama with integer (quantized) o_proj weights."""
    from lm_eval_iti.tiny import build_model

    model = build_model("llama", seed=0)
    for layer in model.model.layers:
        layer.self_attn.o_proj = IntegerLinear(layer.self_attn.o_proj, dtype)
    return model


def write_wikitext_corpus(path):
    """A small raw WikiText-style corpus (a heading and 4 long paragraphs, CRLF) for side-effect runs."""
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    lines = [" = Title = "] + [" " + " ".join(words[(i + j) % 12] for j in range(120)) + " ." for i in range(4)]
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of the real ``lm-eval-iti`` entry point; main() returns normally on success."""
    from lm_eval_iti.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory):
    """``tiny_arch(model_type)``: ``tiny_arch_with_directions`` of that architecture, built once per worker and shared
    by the files that use it (test_engine, test_prefix_scoring); tests leave the model as they found it (an installed
    intervener is removed in a ``finally``)."""
    built: dict[str, tuple] = {}

    def get(model_type: str):
        if model_type not in built:
            built[model_type] = tiny_arch_with_directions(tmp_path_factory, model_type, "arch")
        return built[model_type]

    return get


def tiny_arch_with_directions(tmp_path_factory, model_type: str, prefix: str):
    """(model, tokenizer, directions path, Directions, folder) of a tiny random model of ``model_type`` (fp32) with
    6 random heads at alpha 3: the engine tests' fixture, shared."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.artifact import load_directions, save_directions
    from lm_eval_iti.tiny import random_directions, save_tiny

    root = save_tiny(tmp_path_factory.mktemp(f"{prefix}_{model_type}"), model_type, seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(root), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(root))
    path = root / "dirs.safetensors"
    save_directions(random_directions(model, num_heads=6, seed=1, alpha=3.0), path)
    return model, tok, path, load_directions(path), root


def load_float32(folder):
    """(model in float32, eval mode; tokenizer) of a saved folder: the real-model tests' plain model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(folder)))


def random_directions_file(model, folder, num_heads: int, alpha: float, model_id: str, seed: int = 5):
    """A directions file of random unit directions on ``num_heads`` heads of ``model`` (with its fingerprint)."""
    from lm_eval_iti.artifact import save_directions
    from lm_eval_iti.tiny import random_directions

    path = folder / "random.safetensors"
    save_directions(random_directions(model, num_heads=num_heads, seed=seed, alpha=alpha, model_id=model_id), path)
    return path
