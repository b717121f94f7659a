"""The attack, kept: what a careless user or a hostile file throws at the CLI and at hf-iti. Every case must end with
exit status 2 (or an ITIError from Python), exactly one line on stderr naming the problem, no traceback, and nothing
written where the output would have gone. Most cases are refused before any model loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import run_cli, shared_data, write_wikitext_corpus
from lm_eval_iti.errors import ITIError

pytestmark = pytest.mark.filterwarnings("ignore")


# ---- the world the attacks run in (built once per worker) ----------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Paths the cases refer to: the tiny Llama, its directions, a same-shape model with other weights and its
    directions, a corpus, a small TruthfulQA folder and files of every wrong kind."""
    from transformers import AutoModelForCausalLM

    from lm_eval_iti.artifact import save_directions
    from lm_eval_iti.tiny import random_directions, save_tiny

    root = tmp_path_factory.mktemp("hostile")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    directions = save_directions(random_directions(model, 4, seed=1, alpha=3.0, model_id=str(tiny_model_dir)),
                                 root / "dirs.safetensors")
    other_dir = save_tiny(root / "other", "llama", seed=7)  # same shape, other weights
    other = AutoModelForCausalLM.from_pretrained(str(other_dir))
    other_dirs = save_directions(random_directions(other, 4, seed=1, model_id="other"), root / "other.safetensors")
    corpus = write_wikitext_corpus(root / "corpus.raw")
    (root / "a_file").write_text("x")
    (root / "nonempty").mkdir()
    (root / "nonempty" / "x").write_text("x")
    os.mkfifo(root / "fifo")
    (root / "bad.gguf").write_bytes(os.urandom(4096))
    (root / "utf16.txt").write_text("= t =\n" + "word " * 200, encoding="utf-16")
    return {"model": str(tiny_model_dir), "dirs": str(directions), "other_model": str(other_dir),
            "other_dirs": str(other_dirs), "corpus": str(corpus), "root": root, "file": str(root / "a_file"),
            "nonempty": str(root / "nonempty"), "fifo": str(root / "fifo"), "bad_gguf": str(root / "bad.gguf"),
            "utf16": str(root / "utf16.txt")}


def _mc_rows(n: int = 12) -> list[dict]:
    return [{"question": f"Is {i} even?", "mc1_targets": {"yes" if i % 2 == 0 else "no": 1, "maybe": 0},
             "mc2_targets": {"yes" if i % 2 == 0 else "no": 1, "maybe": 0, "never": 0}} for i in range(n)]


def _data_folder(root: Path, name: str, rows=None, raw: bytes | None = None) -> str:
    folder = root / "data" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc_task.json").write_bytes(raw if raw is not None else json.dumps(rows).encode())
    return str(folder)


def _bad_data(root: Path) -> dict[str, tuple[str, str]]:
    """name -> (data folder, what the one-line error must say)."""
    rows = _mc_rows()

    def edit(i, **changes):
        out = json.loads(json.dumps(rows))
        out[i].update(changes)
        return out

    text = json.dumps(rows)
    return {
        "label not a number": (_data_folder(root, "label_x", edit(3, mc2_targets={"yes": "x", "no": 0})),
                               "label 'x' is not 0 or 1"),
        "label 5": (_data_folder(root, "label_5", edit(3, mc2_targets={"yes": 5, "no": 0})), "label 5 is not 0 or 1"),
        "label -1": (_data_folder(root, "label_neg", edit(2, mc1_targets={"yes": 1, "no": -1})), "label -1 is not 0"),
        "no true mc1 answer": (_data_folder(root, "no_true", edit(1, mc1_targets={"a": 0, "b": 0})), "no true answer"),
        "no false mc2 answer": (_data_folder(root, "no_false", edit(1, mc2_targets={"a": 1, "b": 1})), "no false answer"),
        "empty targets": (_data_folder(root, "empty_targets", edit(4, mc2_targets={})), "no true answer"),
        "empty question": (_data_folder(root, "empty_q", edit(5, question="   ")), "empty question"),
        "question not text": (_data_folder(root, "q_num", edit(5, question=17)), "'question' is not text"),
        "duplicate question": (_data_folder(root, "dup", rows + [rows[0]]), "repeats the question of row 0"),
        "choices/labels lengths": (_data_folder(root, "lens", edit(0, mc2_targets={"choices": ["a", "b"], "labels": [1]})),
                                   "same length"),
        "empty answer text": (_data_folder(root, "empty_ans", edit(0, mc2_targets={"choices": ["a", " "], "labels": [1, 0]})),
                              "an answer is empty"),
        "row not an object": (_data_folder(root, "row_str", rows[:5] + ["just text"]), "expected an object"),
        "not a list": (_data_folder(root, "not_list", raw=b'"hello"'), "expected a list of questions"),
        "not JSON": (_data_folder(root, "not_json", raw=b"{oops"), "not valid JSON"),
        "UTF-16": (_data_folder(root, "utf16", raw=text.encode("utf-16")), "is UTF-16 text"),
        "cp1252": (_data_folder(root, "cp1252", raw=text.replace("even", "\u00e9ven").encode("cp1252")),
                   "not UTF-8 text"),
        "random bytes": (_data_folder(root, "random", raw=os.urandom(2048)), "not UTF-8 text"),
        "missing column": (_data_folder(root, "no_mc2", [{"question": "q?", "mc1_targets": {"a": 1}}]),
                           "missing column 'mc2_targets'"),
    }


# ---- the check every CLI case must pass ------------------------------------------------------------------------
def _files_under(path: Path) -> set[str]:
    return {str(p) for p in path.rglob("*")} if path.exists() else set()


def assert_refused(argv: list[str], match: str, capsys, watch: Path) -> None:
    capsys.readouterr()  # only this command's output counts
    before = _files_under(watch)
    code, _, err = run_cli([str(a) for a in argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("lm-eval-iti: error:"), err[-2000:]
    assert match in lines[0], (match, lines[0])
    assert _files_under(watch) == before, f"left behind: {sorted(_files_under(watch) - before)}"


# ---- numbers, refused where the options are declared -------------------------------------------------------------
NUMBERS = [
    # fit-directions
    ("fit", "--num-heads", "0", "--num-heads 0 is below the minimum 1"),
    ("fit", "--num-heads", "-3", "--num-heads -3 is below the minimum 1"),
    ("fit", "--num-heads", "two", "--num-heads 'two' is not a whole number"),
    ("fit", "--num-heads", "1.5", "is not a whole number"),
    ("fit", "--alpha", "nan", "--alpha nan must be finite"),
    ("fit", "--alpha", "inf", "--alpha inf must be finite"),
    ("fit", "--alpha", "-inf", "must be finite"),
    ("fit", "--alpha", "1e39", "overflows float32"),
    ("fit", "--alpha", "1e300", "overflows float32"),
    ("fit", "--alpha", "-4e38", "overflows float32"),
    ("fit", "--alpha", "lots", "is not a number or 'auto'"),
    ("fit", "--kl-budget", "0", "--kl-budget 0 must be above 0"),
    ("fit", "--kl-budget", "-0.5", "--kl-budget -0.5 must be above 0"),
    ("fit", "--kl-budget", "nan", "is not finite"),
    ("fit", "--val-ratio", "0", "--val-ratio 0 must be above 0"),
    ("fit", "--val-ratio", "1", "--val-ratio 1 must be below 1"),
    ("fit", "--val-ratio", "1.5", "must be below 1"),
    ("fit", "--num-folds", "0", "--num-folds 0 is below the minimum 2"),
    ("fit", "--num-folds", "1", "--num-folds 1 is below the minimum 2"),
    ("fit", "--fold", "-1", "--fold -1 is below the minimum 0"),
    ("fit", "--num-questions", "0", "--num-questions 0 is below the minimum 2"),
    ("fit", "--max-questions", "1", "--max-questions 1 is below the minimum 2"),  # the old spelling
    ("fit", "--fit-batch-size", "0", "--fit-batch-size 0 is below the minimum 1"),
    ("fit", "--batch-size", "0", "--batch-size 0 is below the minimum 1"),  # the old spelling
    ("fit", "--chunk-size", "0", "--chunk-size 0 is below the minimum 1"),
    # side-effects
    ("side-effects", "--alpha", "nan", "--alpha nan must be finite"),
    ("side-effects", "--alpha", "inf", "must be finite"),
    ("side-effects", "--alpha", "1e39", "overflows float32"),
    ("side-effects", "--num-heads", "0", "--num-heads 0 is below the minimum 1"),
    ("side-effects", "--heads", "-2", "--heads -2 is below the minimum 1"),  # the old spelling
    ("side-effects", "--num-docs", "0", "--num-docs 0 is below the minimum 1"),
    ("side-effects", "--num-tokens", "1", "--num-tokens 1 is below the minimum 2"),
    ("side-effects", "--batch-size", "0", "--batch-size 0 is below the minimum 1"),
    # export and bake
    ("export", "--alpha", "nan", "must be finite"),
    ("export", "--alpha", "1e39", "overflows float32"),
    ("export", "--num-heads", "0", "--num-heads 0 is below the minimum 1"),
    ("bake", "--alpha", "inf", "must be finite"),
    ("bake", "--alpha", "1e39", "overflows float32"),
    ("bake", "--num-heads", "0", "--num-heads 0 is below the minimum 1"),
    # validate
    ("validate", "--kl-budget", "-0.5", "--kl-budget -0.5 must be above 0"),
    ("validate", "--kl-budget", "0", "must be above 0"),
    ("validate", "--num-docs", "0", "--num-docs 0 is below the minimum 1"),
    ("validate", "--num-tokens", "1", "--num-tokens 1 is below the minimum 2"),
    ("validate", "--num-folds", "1", "--num-folds 1 is below the minimum 2"),
    ("validate", "--num-heads", "0", "--num-heads 0 is below the minimum 1"),
    ("validate", "--random-draws", "0", "--random-draws 0 is below the minimum 1"),
    ("validate", "--inner-folds", "1", "--inner-folds 1 is below the minimum 2"),
    ("validate", "--alpha", "nan", "must be finite"),
    ("validate", "--alpha", "1e39", "overflows float32"),
    ("validate", "--alpha", "sometimes", "is not a number or 'auto' / 'select'"),
    ("validate", "--select-alphas", "5,nan", "'nan' is not finite"),
    ("validate", "--select-alphas", "5,5", "5 is repeated"),
    ("validate", "--select-alphas", "-1,5", "-1 is below the minimum 0"),
    ("validate", "--select-num-heads", "0,8", "0 is below the minimum 1"),
    ("validate", "--batch-size", "0", "--batch-size 0 is below the minimum 1"),
    ("validate", "--val-ratio", "1", "--val-ratio 1 must be below 1"),
    ("validate", "--num-questions", "1", "--num-questions 1 is below the minimum 2"),
    ("validate", "--curve-scales", "nan", "'nan' is not finite"),
    # sweep
    ("sweep", "--alphas", "0,nan", "'nan' is not finite"),
    ("sweep", "--alphas", "0,inf", "'inf' is not finite"),
    ("sweep", "--alphas", "0,1e39", "overflows float32"),
    ("sweep", "--alphas", ",", "give at least one value"),
    ("sweep", "--alphas", "1,1", "1 is repeated"),
    ("sweep", "--alphas", "-5", "-5 is below the minimum 0"),
    ("sweep", "--num-heads", "0", "0 is below the minimum 1"),
    ("sweep", "--num-heads", "x", "'x' is not a whole number"),
    # seeds (numpy's SeedSequence takes no negative number: refused here, not when the controls are drawn)
    ("fit", "--fold-seed", "-1", "--fold-seed -1 is below the minimum 0"),
    ("validate", "--fold-seed", "-1", "--fold-seed -1 is below the minimum 0"),
    ("validate", "--seed", "-1", "--seed -1 is below the minimum 0"),  # the old spelling
    ("validate", "--corpus-seed", "-2", "--corpus-seed -2 is below the minimum 0"),
    ("side-effects", "--corpus-seed", "-1", "--corpus-seed -1 is below the minimum 0"),
    # lm-eval-iti judge
    ("judge", "--concurrency", "0", "--concurrency 0 is below the minimum 1"),
    ("judge", "--timeout", "-1", "--timeout -1 must be above 0"),
    ("judge", "--retries", "-1", "--retries -1 is below the minimum 0"),
    ("judge", "--backoff", "nan", "--backoff 'nan' is not finite"),
    ("judge", "--check-examples", "0", "--check-examples 0 is below the minimum 2"),
    ("judge", "--check-min-accuracy", "2", "--check-min-accuracy 2 must be below"),
    # demo and the truth world
    ("demo", "--num-heads", "0", "--num-heads 0 is below the minimum 1"),
    ("demo", "--kl-budget", "0", "--kl-budget 0 must be above 0"),
    ("truthworld-evaluate", "--num-heads", "0", "--num-heads 0 is below the minimum 1"),
    ("truthworld-train", "--steps", "0", "--steps 0 is below the minimum 1"),
    ("truthworld-train", "--threads", "0", "--threads 0 is below the minimum 1"),
]


def base_argv(command: str, w: dict, out: Path) -> list:
    """A command line that would run, writing under ``out``; a case appends the bad option (click keeps the last)."""
    v0 = str(shared_data("truthfulqa", "v0"))
    fit_like = ["--model", w["model"], "--data-dir", v0, "--quiet", "--cache-dir", out / "cache"]
    run_like = ["--tasks", "truthfulqa_iti_mc1", "--corpus", w["corpus"], "--num-docs", "2", "--num-questions", "10",
                "--out", out / "run"]
    return {
        "fit": ["fit-directions", *fit_like, "--num-questions", "10", "--num-heads", "2", "--out", out / "d.safetensors"],
        "side-effects": ["side-effects", "--model", w["model"], "--directions", w["dirs"], "--corpus", w["corpus"],
                         "--num-docs", "2", "--num-tokens", "16", "--device", "cpu", "--quiet", "--out", out / "se.json"],
        "export": ["export", "--model", w["model"], "--directions", w["dirs"], "--out", out / "steer.pt"],
        "bake": ["bake", "--model", w["model"], "--directions", w["dirs"], "--out", out / "baked"],
        "validate": ["validate", *fit_like, *run_like],
        "sweep": ["sweep", *fit_like, *run_like],
        "demo": ["demo", "--model", w["model"], "--data-dir", v0, "--out", out / "demo", "--quiet"],
        "truthworld-evaluate": ["truthworld", "evaluate", "--out", out / "tw.json"],
        "truthworld-train": ["truthworld", "train", "--out", out / "tw"],
        "report": ["report", w["root"] / "no-results", "--out", out / "report"],
        "judge": ["judge", w["root"] / "no-samples", "--out", out / "judged.json"],
    }[command]


@pytest.mark.parametrize("command,option,value,match", NUMBERS,
                         ids=[f"{c} {o} {v}" for c, o, v, _ in NUMBERS])
def test_bad_numbers_are_refused_before_anything_loads(command, option, value, match, world, tmp_path, capsys):
    assert_refused(base_argv(command, world, tmp_path) + [option, value], match, capsys, tmp_path)


# ---- outputs, caches and paths -----------------------------------------------------------------------------------
PATHS = [
    ("fit", ["--out", "/dev/full"], "--out /dev/full: is not a regular file"),
    ("fit", ["--out", "{fifo}"], "is not a regular file"),
    ("fit", ["--out", "{file}/d.safetensors"], "is a file, not a folder"),
    ("fit", ["--out", "/proc/d.safetensors"], "cannot write in /proc"),
    ("fit", ["--cache-dir", "/proc/cache"], "--cache-dir /proc/cache: cannot write in /proc"),
    ("fit", ["--cache-dir", "{file}"], "a_file' is a file"),
    ("fit", ["--model", "{root}/no-such-model"], "no such model folder"),
    ("fit", ["--data-dir", "{root}/no-such-data"], "does not exist"),
    ("side-effects", ["--out", "/dev/full"], "--out /dev/full: is not a regular file"),
    ("side-effects", ["--out", "{fifo}"], "is not a regular file"),
    ("side-effects", ["--out", "{file}/se.json"], "is a file, not a folder"),
    ("side-effects", ["--directions", "{root}/absent.safetensors"], "directions file not found"),
    ("side-effects", ["--corpus", "{root}/absent.raw"], "no such file"),
    ("side-effects", ["--corpus", "{utf16}"], "not UTF-8 text"),
    ("side-effects", ["--num-docs", "50"], "fewer than --num-docs 50"),
    ("side-effects", ["--device", "cuda"], "--device 'cuda': this machine has no usable CUDA GPU"),
    ("side-effects", ["--device", "cuda:x"], "is not a device"),
    ("fit", ["--device", "cuda"], "--device 'cuda': this machine has no usable CUDA GPU"),
    ("export", ["--out", "/dev/full"], "lm-eval's steered model reads .pt"),
    ("export", ["--out", "{file}/steer.pt"], "is a file, not a folder"),
    ("export", ["--out", "/proc/steer.pt"], "cannot write in /proc"),
    ("bake", ["--out", "{nonempty}"], "output folder exists and is not empty"),
    ("bake", ["--out", "{file}/baked"], "is a file, not a folder"),
    ("validate", ["--out", "{file}/run"], "is a file, not a folder"),
    ("validate", ["--out", "/proc/run"], "cannot write in /proc"),
    ("validate", ["--cache-dir", "{file}/cache"], "is a file, not a folder"),
    ("validate", ["--num-docs", "50"], "fewer than --num-docs 50"),
    ("validate", ["--corpus", "{root}/absent.raw"], "no such file"),
    ("sweep", ["--out", "{file}/run"], "is a file, not a folder"),
    ("report", ["--out", "/proc/report"], "cannot write in /proc"),
    ("demo", ["--model", "/nonexistent-model"], "model /nonexistent-model: no such model folder or file"),
    ("truthworld-evaluate", ["--out", "/dev/full"], "is not a regular file"),
    ("truthworld-train", ["--out", "{file}/tw"], "is a file, not a folder"),
]


@pytest.mark.parametrize("command,extra,match", PATHS, ids=[f"{c} {' '.join(e)}" for c, e, _ in PATHS])
def test_unusable_paths_are_refused_first(command, extra, match, world, tmp_path, capsys):
    extra = [e.format(**{k: v for k, v in world.items() if isinstance(v, (str, Path))}) for e in extra]
    assert_refused(base_argv(command, world, tmp_path) + extra, match, capsys, tmp_path)
    assert Path(world["fifo"]).is_fifo() and Path("/dev/full").is_char_device()  # never replaced by a file


# ---- data files: the fit and the tasks refuse alike ------------------------------------------------------------
BAD_DATA_NAMES = ["label not a number", "label 5", "label -1", "no true mc1 answer", "no false mc2 answer",
                  "empty targets", "empty question", "question not text", "duplicate question",
                  "choices/labels lengths", "empty answer text", "row not an object", "not a list", "not JSON",
                  "UTF-16", "cp1252", "random bytes", "missing column"]


@pytest.fixture(scope="module")
def bad_data(world):
    return _bad_data(world["root"])


@pytest.mark.parametrize("name", BAD_DATA_NAMES)
def test_bad_data_is_refused_by_fit_directions_before_the_model_loads(name, bad_data, world, tmp_path, capsys):
    folder, match = bad_data[name]
    argv = base_argv("fit", world, tmp_path) + ["--data-dir", folder, "--sigma-data", "mc",
                                                "--model", str(world["root"] / "no-model-needed")]
    assert_refused(argv, match, capsys, tmp_path)  # the data is read first: the missing model is never reached


@pytest.mark.parametrize("name", BAD_DATA_NAMES)
def test_the_tasks_refuse_the_same_data_with_the_same_line(name, bad_data):
    from lm_eval_iti.harness.taskfns import load_truthfulqa_mc

    folder, match = bad_data[name]
    with pytest.raises(ITIError) as refused:
        load_truthfulqa_mc(data_dir=folder)
    assert match in str(refused.value) and "\n" not in str(refused.value)


def test_a_generation_csv_in_utf16_is_refused(world, tmp_path):
    from lm_eval_iti.data import load_generation

    csv_path = tmp_path / "TruthfulQA.csv"
    csv_path.write_text("Question,Best Answer,Correct Answers,Incorrect Answers\nq?,a,a,b\n", encoding="utf-16")
    with pytest.raises(ITIError, match="is UTF-16 text"):
        load_generation(csv_path)


# ---- hf-iti: what lm-eval and transformers would fail on, caught first ------------------------------------------
def _hfiti(world, **args):
    from lm_eval_iti.harness.model import HFITI

    kwargs = {"pretrained": world["model"], "directions": world["dirs"], "device": "cpu", **args}
    return HFITI(**kwargs)


HFITI_CASES = [
    ({"no_such_key": 1}, "no_such_key= is known to neither"),
    ({"dtype": "float8"}, "dtype='float8' is not one of"),
    ({"dtype": "int8"}, "dtype='int8' is not one of"),
    ({"device": "cuda"}, "no usable CUDA GPU"),
    ({"device": "cuda:1"}, "no usable CUDA GPU"),
    ({"device": "gpu please"}, "is not a device"),
    ({"pretrained": "/nonexistent/model"}, "pretrained=/nonexistent/model: no such model folder or file"),
    ({"pretrained": "not a repo id!"}, "neither a local path nor a valid hub id"),
    ({"pretrained": "someone/not-cached-model"}, "not in the local Hugging Face cache"),
    ({"alpha": "1e39"}, "overflows float32"),
    ({"alpha": "nan"}, "must be finite"),
    ({"heads": "0"}, "heads='0' must be a positive whole number"),
]


@pytest.mark.parametrize("args,match", HFITI_CASES, ids=[str(a) for a, _ in HFITI_CASES])
def test_hf_iti_refuses_before_handing_over(args, match, world, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ITIError) as refused:
        _hfiti(world, **args)
    assert match in str(refused.value) and "\n" not in str(refused.value)


def test_hf_iti_refuses_a_bad_gguf_with_one_line(world):
    with pytest.raises(ITIError, match="not a GGUF file"):
        _hfiti(world, pretrained=world["bad_gguf"], gguf_cache=False)


def test_directions_from_a_same_shape_model_are_refused_unless_allowed(world, tmp_path, capsys):
    with pytest.raises(ITIError, match="not on this model: its embedding weights differ"):
        _hfiti(world, directions=world["other_dirs"])
    lm = _hfiti(world, directions=world["other_dirs"], allow_model_mismatch="true")
    assert lm.iti_info()["model_check"] == "mismatch allowed"
    assert _hfiti(world).iti_info()["model_check"] == "match"
    for command in ("export", "bake", "side-effects"):
        argv = base_argv(command, world, tmp_path) + ["--directions", world["other_dirs"]]
        assert_refused(argv, "not on this model", capsys, tmp_path)


def test_a_nan_loglikelihood_or_logit_is_an_error_never_a_score(world):
    """Whatever makes the steered model's output non-finite (here: a hook that poisons the logits), lm-eval must
    never get the NaN: it would score as the best choice."""
    from lm_eval.api.instance import Instance

    lm = _hfiti(world, alpha="3")
    lm.model.lm_head.register_forward_hook(lambda module, args, out: out * float("nan"))
    requests = [Instance("loglikelihood", {}, ("Q: Is it? A:", " yes"), 0)]
    with pytest.raises(ITIError, match="log-probabilities are NaN or infinite"):
        lm.loglikelihood(requests, disable_tqdm=True)
    generate = [Instance("generate_until", {}, ("Q: Is it? A:", {"until": ["\n"], "max_gen_toks": 3}), 0)]
    with pytest.raises(ITIError, match="NaN or infinite \\(a generation step"):
        lm.generate_until(generate, disable_tqdm=True)


def test_nan_side_effects_are_an_error_never_a_measurement():
    from lm_eval_iti.side_effects import measure

    docs = [[1, 2, 3, 4], [5, 6, 7]]
    finite = lambda ids: torch.zeros(ids.shape[0], ids.shape[1], 11)  # noqa: E731
    poisoned = lambda ids: torch.full((ids.shape[0], ids.shape[1], 11), float("nan"))  # noqa: E731
    assert measure(finite, finite, docs)["kl"] == 0.0
    with pytest.raises(ITIError, match="CE of the steered model is NaN or infinite on 2 of 2 documents"):
        measure(finite, poisoned, docs)


def test_the_intervener_refuses_a_shift_that_overflows_the_dtype(world):
    from transformers import AutoModelForCausalLM

    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.intervene import Intervener

    model = AutoModelForCausalLM.from_pretrained(world["model"], dtype=torch.float16)
    with pytest.raises(ITIError, match="overflows float16"):
        Intervener(model, load_directions(world["dirs"]), 1e6)


# ---- caches and fold files carry their content hash -------------------------------------------------------------
def test_a_tampered_activation_cache_is_refused_naming_the_file(world, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    argv = base_argv("fit", world, tmp_path) + ["--sigma-data", "mc", "--no-plot"]
    code, _, err = run_cli([str(a) for a in argv], capsys)
    assert code == 0, err[-2000:]
    chunk = next((tmp_path / "cache").rglob("chunk_*.safetensors"))
    with safe_open(str(chunk), framework="pt") as fh:
        meta, acts = fh.metadata(), fh.get_tensor("activations")
    save_file({"activations": acts * 3}, str(chunk), metadata=meta)  # values x3, the hashes as written
    (tmp_path / "d.safetensors").unlink()
    assert_refused(argv, f"{chunk}: activation chunk does not match the sha256", capsys, tmp_path)


def test_an_activation_chunk_without_hashes_is_recollected(world, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    argv = base_argv("fit", world, tmp_path) + ["--sigma-data", "mc", "--no-plot"]
    assert run_cli([str(a) for a in argv], capsys)[0] == 0
    first = _tensors(tmp_path / "d.safetensors")
    chunk = next((tmp_path / "cache").rglob("chunk_*.safetensors"))
    with safe_open(str(chunk), framework="pt") as fh:
        acts = fh.get_tensor("activations")
    save_file({"activations": acts * 3}, str(chunk))  # an older version's chunk: no hashes at all
    (tmp_path / "d.safetensors").unlink()
    code, out, err = run_cli([str(a) for a in argv], capsys)
    assert code == 0, err[-2000:]
    assert "0 cached + 1 computed" in out, out
    again = _tensors(tmp_path / "d.safetensors")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---- a documented feature that never worked -----------------------------------------------------------------------
def test_fit_directions_alpha_auto_works_end_to_end(world, tmp_path, capsys):
    from lm_eval_iti.artifact import load_directions

    corpus = tmp_path / "long.raw"
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    corpus.write_text("\n".join(" ".join(words[(i + j) % 12] for j in range(110)) for i in range(110)) + "\n")
    argv = base_argv("fit", world, tmp_path) + ["--sigma-data", "mc", "--no-plot", "--alpha", "auto",
                                                "--kl-corpus", corpus, "--kl-budget", "0.01"]
    code, out, err = run_cli([str(a) for a in argv], capsys)
    assert code == 0, err[-2000:]
    d = load_directions(tmp_path / "d.safetensors")
    auto = json.loads(d.metadata["alpha_auto"])
    assert d.alpha == auto["alpha"] > 0 and "alpha auto:" in out
    assert all(m["kl"] <= 0.01 for m in auto["measured"] if m["alpha"] <= d.alpha)


def test_alpha_auto_with_too_small_a_kl_corpus_fails_before_the_model_loads(world, tmp_path, capsys):
    argv = base_argv("fit", world, tmp_path) + ["--alpha", "auto", "--kl-corpus", world["corpus"],
                                                "--model", str(world["root"] / "no-model-needed")]
    assert_refused(argv, f"--kl-corpus {world['corpus']}: only", capsys, tmp_path)


def test_the_module_holds_at_least_100_cases():
    cases = (len(NUMBERS) + len(PATHS) + 2 * len(BAD_DATA_NAMES) + len(HFITI_CASES)
             + 9)  # the single tests of this module
    assert cases >= 100, cases


# ---- killed mid-run, then resumed: the same result, nothing half-written -----------------------------------------
def test_fit_directions_killed_mid_collection_resumes_to_the_same_directions(world, tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time

    argv = [str(a) for a in base_argv("fit", world, tmp_path)] + ["--sigma-data", "mc", "--no-plot",
                                                                  "--chunk-size", "4", "--fit-batch-size", "4"]
    argv[argv.index("--num-questions") + 1] = "40"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "lm_eval_iti", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "cache").rglob("chunk_*.safetensors"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list((tmp_path / "cache").rglob("chunk_*.safetensors")))
    assert 3 <= written and not (tmp_path / "d.safetensors").exists()
    code, out, err = run_cli(argv, capsys)  # resume: the chunks on disk are read, the rest computed
    assert code == 0, err[-2000:]
    chunks = -(-303 // 4)  # the 303 probe prompts of the first 40 questions, in chunks of 4
    assert f"{written} cached + {chunks - written} computed chunks" in out, out
    resumed = _tensors(tmp_path / "d.safetensors")
    fresh_dir = tmp_path / "fresh"
    fresh = [a.replace(str(tmp_path), str(fresh_dir)) for a in argv]
    assert run_cli(fresh, capsys)[0] == 0
    again = _tensors(fresh_dir / "d.safetensors")
    assert resumed.keys() == again.keys() and all(torch.equal(resumed[k], again[k]) for k in again)


def test_the_sweep_engine_refuses_a_nan_loglikelihood(world):
    from transformers import AutoModelForCausalLM

    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.prefix_scoring import make_points, score

    model = AutoModelForCausalLM.from_pretrained(world["model"]).eval()
    points = make_points(load_directions(world["dirs"]), [(0.0, None), (3.0, None)])
    pairs = [([1, 5, 7, 9], [11, 12]), ([1, 5, 7, 9], [13])]
    assert all(len(p) == 2 for p in score(model, pairs, points, max_length=64))
    model.lm_head.register_forward_hook(lambda module, args, out: out * float("nan"))
    with pytest.raises(ITIError, match="engine: the loglikelihood of request 0 is NaN or infinite"):
        score(model, pairs, points, max_length=64)


def test_an_edited_fold_file_is_recomputed_not_reused(world, tmp_path, capsys):
    argv = [str(a) for a in base_argv("validate", world, tmp_path)] + [
        "--no-side-effects", "--alpha", "2", "--num-heads", "2", "--sigma-data", "mc", "--folds", "0"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    run = tmp_path / "run"
    original = json.loads((run / "results.json").read_text())["rows"]
    fold_file = next(p for p in (run / "folds").glob("fold_0_iti*.json"))
    record = json.loads(fold_file.read_text())
    record["metrics"]["truthfulqa_iti_mc1"]["acc,none"] = 1.0  # a hand-edited score
    fold_file.write_text(json.dumps(record))
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    assert "(1 fold x variant evaluations run, 1 resumed from disk" in out, out
    assert json.loads((run / "results.json").read_text())["rows"] == original


def test_sealed_records_detect_edits_and_truncation(tmp_path):
    from lm_eval_iti.atomic import read_json_sealed, write_json_sealed

    path = tmp_path / "r.json"
    write_json_sealed(path, {"a": 1.5, "b": [1, 2], "p": tmp_path})
    record, problem = read_json_sealed(path)
    assert problem is None and record["a"] == 1.5 and record["p"] == str(tmp_path)
    path.write_text(path.read_text().replace("1.5", "2.5"))
    assert read_json_sealed(path) == (None, f"{path}: content does not match its content_sha256 (edited after it "
                                             "was written)")
    path.write_text(path.read_text()[:10])
    assert read_json_sealed(path) == (None, f"{path}: unreadable JSON")
    path.write_text('{"a": 1}')
    assert read_json_sealed(path)[1].endswith("no content_sha256 (written by an older version)")
    assert read_json_sealed(tmp_path / "absent.json") == (None, "missing")


def test_a_nan_in_a_cache_chunk_is_refused_naming_the_file(tmp_path):
    from lm_eval_iti.collect import ActivationCache

    meta = {"layout": "1", "model_identity": "x", "tokens_sha256": "y", "dtype": "float32", "site": "s",
            "shape": [2, 2, 4], "num_prompts": 3, "chunk_size": 3}
    cache = ActivationCache.open(tmp_path, meta)
    acts = torch.zeros(3, 2, 2, 4)
    acts[1, 0, 0, 0] = float("nan")
    cache.write_chunk(0, acts)  # hashes match: only the values are wrong
    with pytest.raises(ITIError, match=f"{cache.chunk_path(0)}: activations contain NaN"):
        cache.read_chunk(0)
    with pytest.raises(ITIError, match="activations contain NaN"):
        cache.read_chunk_layers(0, 0, 1)
    assert cache.read_chunk_layers(0, 1, 2).shape == (3, 1, 2, 4)  # the clean layer reads


def test_the_atomic_writer_writes_through_a_symlink_and_refuses_special_files(world, tmp_path):
    from lm_eval_iti.atomic import write_text_atomic

    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    for special in ("/dev/full", world["fifo"], str(tmp_path)):
        with pytest.raises(ITIError, match="refusing to replace it with a file"):
            write_text_atomic(special, "x")
    assert Path(world["fifo"]).is_fifo() and Path("/dev/full").is_char_device()


def test_report_refuses_a_results_file_holding_a_nan_score(world, tmp_path, capsys):
    """A results.json from a broken run (or edited): the leaderboard never shows NaN as a score."""
    argv = [str(a) for a in base_argv("validate", world, tmp_path)] + [
        "--no-side-effects", "--alpha", "2", "--num-heads", "2", "--sigma-data", "mc", "--folds", "0"]
    assert run_cli(argv, capsys)[0] == 0
    results = tmp_path / "run" / "results.json"
    data = json.loads(results.read_text())
    data["rows"][1]["metrics"]["MC1"]["mean"] = float("nan")
    results.write_text(json.dumps(data))
    assert_refused(["report", str(results), "--out", str(tmp_path / "report"), "--no-plots"],
                   "MC1 is nan (NaN or infinite)", capsys, tmp_path)


def test_the_fingerprint_matches_the_same_weights_in_another_dtype(world):
    """A fit in float32 steers the same model loaded in bfloat16 without an override."""
    assert _hfiti(world, dtype="bfloat16").iti_info()["model_check"] == "match"


def test_old_spellings_still_work_with_a_one_line_deprecation(world, tmp_path, capsys):
    from lm_eval_iti.artifact import load_directions

    argv = [str(a) for a in base_argv("side-effects", world, tmp_path)] + ["--heads", "2", "--seed", "1"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert err.splitlines() == ["lm-eval-iti: warning: --heads is deprecated; use --num-heads",
                                "lm-eval-iti: warning: --seed is deprecated; use --corpus-seed"] or \
        sorted(err.splitlines()) == sorted(["lm-eval-iti: warning: --heads is deprecated; use --num-heads",
                                           "lm-eval-iti: warning: --seed is deprecated; use --corpus-seed"])
    saved = json.loads((tmp_path / "se.json").read_text())
    assert saved["intervention"]["num_heads_used"] == 2 and saved["corpus"]["seed"] == 1
    fit = [str(a) for a in base_argv("fit", world, tmp_path)] + ["--max-questions", "12", "--sigma-data", "mc",
                                                               "--no-plot"]
    code, out, err = run_cli(fit, capsys)
    assert code == 0 and "--max-questions is deprecated; use --num-questions" in err
    assert load_directions(tmp_path / "d.safetensors").metadata["max_questions"] == "12"
