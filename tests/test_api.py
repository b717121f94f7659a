"""The public Python API (README example): fit in memory, save, load, apply, HFITI with lm_eval.simple_evaluate.

Steering is checked against the independent reference hook in tests/_reference (built from the saved file's raw
tensors), never against the package's own intervener.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from _reference.iti_hook import ReferenceHook, reference_generate, reference_loglikelihood, reference_vectors
from conftest import ROOT, tqa_v0

FIT = dict(num_folds=2, fold=0, num_heads=3, num_questions=24, batch_size=32, alpha=4.0)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, tmp_path_factory):
    """iti.fit_directions on the tiny Llama, with the cache variable and cwd pointed at empty folders."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lm_eval_iti as iti

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    watched = tmp_path_factory.mktemp("watched")
    before_cwd, before_env = os.getcwd(), os.environ.get("LM_EVAL_ITI_CACHE")
    os.environ["LM_EVAL_ITI_CACHE"] = str(watched / "cache")
    os.chdir(watched)
    try:
        dirs = iti.fit_directions(model, tokenizer, data_dir=str(tqa_v0()), progress=False, **FIT)
    finally:
        os.chdir(before_cwd)
        if before_env is None:
            del os.environ["LM_EVAL_ITI_CACHE"]
        else:
            os.environ["LM_EVAL_ITI_CACHE"] = before_env
    return model, tokenizer, dirs, watched


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_fit_directions_returns_directions_in_memory_and_writes_nothing(fitted):
    _, _, dirs, watched = fitted
    import lm_eval_iti as iti

    assert isinstance(dirs, iti.Directions)
    assert dirs.num_selected == FIT["num_heads"] and dirs.alpha == FIT["alpha"]
    assert dirs.metadata["fold"] == "0" and dirs.metadata["num_folds"] == "2"
    assert list(watched.rglob("*")) == []  # no activation cache, no directions file, no plot


def test_save_and_load_round_trip_every_tensor(fitted, tmp_path):
    model, _, dirs, _ = fitted
    import lm_eval_iti as iti

    path = dirs.save(tmp_path / "dirs.safetensors")
    back = iti.Directions.load(path, model=model)
    assert sorted(back.heads) == sorted(dirs.heads)
    for layer in dirs.heads:
        assert torch.equal(back.heads[layer], dirs.heads[layer])
        assert torch.equal(back.directions[layer], dirs.directions[layer])
        assert torch.equal(back.sigma[layer], dirs.sigma[layer])
    assert torch.equal(back.head_rank, dirs.head_rank) and back.metadata == dirs.metadata


def test_load_against_another_model_is_one_line(fitted, tmp_path, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    import lm_eval_iti as iti

    _, _, dirs, _ = fitted
    path = dirs.save(tmp_path / "dirs.safetensors")
    other = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir))
    with pytest.raises(iti.ITIError) as err:
        iti.Directions.load(path, model=other)
    assert "\n" not in str(err.value)


def test_apply_matches_the_reference_hook_and_removes_itself(fitted, tmp_path):
    model, tokenizer, dirs, _ = fitted
    import lm_eval_iti as iti

    path = dirs.save(tmp_path / "dirs.safetensors")
    shape = (dirs.num_heads, dirs.head_dim)
    ids = tokenizer("Q: What is the capital of France? A: Paris", add_special_tokens=False).input_ids
    plain = _logits(model, ids)
    reference = ReferenceHook(model, reference_vectors(path, 7.0, *shape))
    reference.positions = "all"
    expected_all = _logits(model, ids)
    reference.positions = {len(ids) - 1}
    expected_last = _logits(model, ids)
    reference.remove()

    with dirs.apply(model, alpha=7.0):
        steered = _logits(model, ids)
    torch.testing.assert_close(steered, expected_all, atol=1e-5, rtol=0)
    with iti.Directions.load(path).apply(model, alpha=7.0, positions="last"):
        torch.testing.assert_close(_logits(model, ids), expected_last, atol=1e-5, rtol=0)
    assert not (steered - plain).abs().max() < 1e-4  # the edit is not a no-op
    assert torch.equal(_logits(model, ids), plain)  # hooks gone after the block

    with pytest.raises(RuntimeError, match="inside"):
        with dirs.apply(model, alpha=7.0):
            raise RuntimeError("an error inside the block")
    assert torch.equal(_logits(model, ids), plain)  # ... also after an exception
    assert "generate" not in model.__dict__


def test_a_second_apply_on_a_steered_model_raises(fitted):
    model, _, dirs, _ = fitted
    import lm_eval_iti as iti

    for alpha in (5.0, 0.0):  # alpha 0 installs no hook, and still marks the model as steered
        with dirs.apply(model, alpha=alpha):
            with pytest.raises(iti.ITIError, match="already steered"):
                with dirs.apply(model, alpha=1.0):
                    pass
    with dirs.apply(model, alpha=1.0):  # free again after both blocks
        pass


@pytest.mark.parametrize("mode", ["last", "generated", "all"])
def test_apply_during_generate_follows_gen_positions(fitted, tmp_path, mode):
    model, tokenizer, dirs, _ = fitted
    path = dirs.save(tmp_path / "dirs.safetensors")
    prompt = "Q: What happens if you eat watermelon seeds? A:"
    vectors = reference_vectors(path, 9.0, dirs.num_heads, dirs.head_dim)
    expected = reference_generate(model, tokenizer, prompt, vectors, mode, max_new=8, stop="\n\n\n")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    for _ in range(2):  # each generate call inside one block counts its own prompt
        with dirs.apply(model, alpha=9.0, gen_positions=mode):
            out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True) == expected
    unsteered = reference_generate(model, tokenizer, prompt, {}, mode, max_new=8, stop="\n\n\n")
    assert unsteered != expected  # the edit changes what is generated, so agreement is evidence


def test_bad_positions_name_the_parameter(fitted):
    model, _, dirs, _ = fitted
    import lm_eval_iti as iti

    with pytest.raises(iti.ITIError, match=r"gen_positions='first' is not one of last, generated, all"):
        with dirs.apply(model, gen_positions="first"):
            pass
    with pytest.raises(iti.ITIError, match=r"num_heads=0 must be"):
        iti.fit_directions(model, fitted[1], data_dir=str(tqa_v0()), num_heads=0)
    with pytest.raises(iti.ITIError, match=r"unknown fit option num_head="):
        iti.fit_directions(model, fitted[1], data_dir=str(tqa_v0()), num_head=3)


def test_hfiti_from_objects_in_simple_evaluate(fitted, tmp_path):
    """The README's last line: an HFITI built from the loaded model, scored through lm_eval.simple_evaluate."""
    import lm_eval

    import lm_eval_iti as iti
    from conftest import tqa_local_metadata

    model, tokenizer, dirs, _ = fitted
    path = dirs.save(tmp_path / "dirs.safetensors")
    lm = iti.HFITI(pretrained=model, tokenizer=tokenizer, directions=dirs, alpha=4.0, batch_size=4,
                   allow_fit_questions=True)
    out = lm_eval.simple_evaluate(model=lm, tasks=["truthfulqa_iti_mc1"], limit=3, log_samples=True,
                                  metadata=tqa_local_metadata(max_questions=24), bootstrap_iters=0)
    assert out["config"]["iti"]["alpha"] == 4.0
    samples = out["samples"]["truthfulqa_iti_mc1"]
    assert len(samples) == 3
    # every choice's loglikelihood equals the independent hook at the answer positions, built from the saved file
    vectors = reference_vectors(path, 4.0, dirs.num_heads, dirs.head_dim)
    for sample in samples:
        requests = [(arg[0], arg[1]) for arg in sample["arguments"]]
        got = [float(resp[0][0]) for resp in sample["resps"]]
        expected = reference_loglikelihood(model, tokenizer, requests, vectors, "answer")
        assert got == pytest.approx(expected, abs=1e-4)


def _fresh_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          timeout=120).stdout


def test_import_loads_neither_torch_nor_lm_eval():
    out = _fresh_python("import sys, lm_eval_iti as iti; iti.ITIError; iti.__version__; "
                        "print('torch' in sys.modules, 'lm_eval' in sys.modules, 'transformers' in sys.modules)")
    assert out.split() == ["False", "False", "False"]


def test_cli_help_loads_neither_torch_nor_lm_eval():
    out = _fresh_python("import sys\nfrom lm_eval_iti.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
                        "    pass\nprint('torch' in sys.modules, 'lm_eval' in sys.modules)")
    assert "fit-directions" in out and out.split()[-2:] == ["False", "False"]


def test_every_subcommand_help_loads_neither_torch_nor_lm_eval():
    from lm_eval_iti.cli import COMMANDS

    code = ("import sys\nfrom lm_eval_iti.cli import main\nfor name in sys.argv[1:]:\n    try:\n"
            "        main([name, '--help'])\n    except SystemExit:\n        pass\n"
            "print('LOADED', 'torch' in sys.modules, 'lm_eval' in sys.modules, 'transformers' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    own = [name for name in COMMANDS if name != "run"]  # run --help is lm_eval's own help: it must load lm_eval
    out = subprocess.run([sys.executable, "-c", code, *own], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout
    assert "--num-heads" in out and "--kl-budget" in out  # the subcommands' own help was printed
    assert out.split("LOADED")[-1].split() == ["False", "False", "False"]


def test_option_choices_are_the_library_s_own():
    """The CLI reads its choices from the torch-free ``choices`` module; the library modules use the same objects."""
    from lm_eval_iti import choices, export, intervene, loading, probes, select
    from lm_eval_iti.experiments import baselines, plan

    assert loading.DTYPES is choices.DTYPES and select.METHODS is choices.METHODS
    assert intervene.MC_POSITIONS is choices.MC_POSITIONS and intervene.GEN_POSITIONS is choices.GEN_POSITIONS
    assert probes.PROBE_BACKENDS is choices.PROBE_BACKENDS and probes.PROBE_MEMORY is choices.PROBE_MEMORY
    assert plan.ENGINE_MODES is choices.ENGINE_MODES and baselines.SELECT_COLUMNS is choices.SELECT_COLUMNS
    assert export.EXPORT_FORMATS is choices.EXPORT_FORMATS


def test_every_public_name_resolves():
    import lm_eval_iti as iti

    for name in iti.__all__:
        assert getattr(iti, name) is not None
    with pytest.raises(AttributeError):
        iti.no_such_name


def test_command_list_help_is_each_command_s_own_first_line():
    import importlib

    from lm_eval_iti.cli import COMMANDS

    for name, (target, line) in COMMANDS.items():
        module, attr = target.split(":")
        assert getattr(importlib.import_module(module), attr).help.strip().splitlines()[0] == line, name


def test_cli_names_flags_where_the_library_names_parameters(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from lm_eval_iti.cli import cli, LazyGroup, with_flags

    result = CliRunner().invoke(cli, ["fit-directions", "--model", str(tiny_model_dir), "--out",
                                      str(tmp_path / "d.safetensors"), "--data-dir", str(tqa_v0()), "--num-heads", "99",
                                      "--num-questions", "10", "--no-cache", "--quiet"])
    assert isinstance(result.exception, iti_error())
    message = with_flags(str(result.exception), LazyGroup.invoked)
    assert message.startswith("--num-heads 99 is larger than layers x heads"), message
    assert with_flags("num_folds= and fold= go together", LazyGroup.invoked) == "--num-folds and --fold go together"
    assert with_flags("max_questions=1 must", None) == "max_questions=1 must"


def iti_error():
    from lm_eval_iti.errors import ITIError

    return ITIError
