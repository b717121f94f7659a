"""Every option is declared once (lm_eval_iti/options.py) and every default has one home: the click options of all
commands, the library's config dataclasses and the public functions' keywords all take it from there."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lm_eval_iti.cli import COMMANDS, cli
from lm_eval_iti.options import OPTIONS, REQUIRED

PACKAGE = Path(__file__).resolve().parents[1] / "lm_eval_iti"


def all_commands():
    """(command path, click command) for every command and subcommand of the CLI."""
    out = []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}")
        else:
            out.append((path, cmd))

    for name, (spec, _) in COMMANDS.items():
        module, attr = spec.split(":")
        walk(getattr(importlib.import_module(module), attr), name)
    return out


COMMAND_LIST = all_commands()


def is_deprecated_alias(param: click.Option) -> bool:
    return param.hidden and (param.help or "").startswith("Deprecated spelling of")


def test_no_click_option_is_declared_outside_the_registry():
    """Only options.py (and the deprecated-alias helper) calls click.option: a command cannot declare its own."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "option"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "click"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == ["cli_types.py:176", "options.py:59"] or sorted(
        o.split(":")[0] for o in offenders) == ["cli_types.py", "options.py"], offenders


@pytest.mark.parametrize("path, command", COMMAND_LIST, ids=[p for p, _ in COMMAND_LIST])
def test_every_option_comes_from_the_registry_with_its_default(path, command):
    names = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        if is_deprecated_alias(param):
            continue
        option = getattr(param, "iti_option", None)
        assert option is not None, f"{path}: {param.opts} is not generated from lm_eval_iti/options.py"
        assert OPTIONS[option.name] is option and param.name == option.name
        if option.required:
            assert param.required, f"{path} {option.flag}"
        else:
            assert param.default == option.default, f"{path} {option.flag}"
        names.append(param.name)
    assert len(names) == len(set(names))


def test_the_registry_names_each_concept_once_and_flags_do_not_clash_within_a_command():
    for path, command in COMMAND_LIST:
        flags = [opt for p in command.params if isinstance(p, click.Option) for opt in p.opts + p.secondary_opts]
        assert len(flags) == len(set(flags)), f"{path}: {sorted(f for f in flags if flags.count(f) > 1)}"
    for name, option in OPTIONS.items():
        assert option.name == name and option.flag.startswith("--") and option.help


def test_naming_drift_is_gone():
    """K is --num-heads everywhere; one flag per seed; the collection batch is --fit-batch-size everywhere."""
    visible = {path: {opt for p in command.params if isinstance(p, click.Option) and not p.hidden
                      for opt in p.opts} for path, command in COMMAND_LIST}
    for path, flags in visible.items():
        assert not flags & {"--heads", "--max-questions", "--seed"}, path
    for path in ("fit-directions", "validate", "sweep", "export", "bake", "side-effects", "demo",
                 "truthworld evaluate"):
        assert "--num-heads" in visible[path], path
    for path in ("fit-directions", "validate", "sweep", "truthworld evaluate"):
        assert "--fold-seed" in visible[path], path
    assert "--train-seed" in visible["truthworld train"] and "--corpus-seed" in visible["side-effects"]
    for path in ("fit-directions", "validate", "sweep"):
        assert "--fit-batch-size" in visible[path] and "--num-questions" in visible[path], path
    defaults = {path: {p.name: p.default for p in command.params} for path, command in COMMAND_LIST}
    assert defaults["fit-directions"]["num_folds"] == defaults["validate"]["num_folds"] == 2
    assert defaults["fit-directions"]["fit_batch_size"] == defaults["validate"]["fit_batch_size"]


@pytest.mark.parametrize("args, warning", [
    (["fit-directions", "--model", "m", "--out", "{tmp}/d.safetensors", "--seed", "3", "--fold", "9"],
     "--seed is deprecated; use --fold-seed"),
    (["fit-directions", "--model", "m", "--out", "{tmp}/d.safetensors", "--max-questions", "5", "--fold", "9"],
     "--max-questions is deprecated; use --num-questions"),
    (["fit-directions", "--model", "m", "--out", "{tmp}/d.safetensors", "--batch-size", "4", "--fold", "9"],
     "--batch-size is deprecated; use --fit-batch-size"),
    (["side-effects", "--model", "m", "--directions", "{tmp}/none.safetensors", "--heads", "2"],
     "--heads is deprecated; use --num-heads"),
    (["side-effects", "--model", "m", "--directions", "{tmp}/none.safetensors", "--seed", "2"],
     "--seed is deprecated; use --corpus-seed"),
    (["truthworld", "train", "--out", "{tmp}/a-file/world", "--seed", "1"],
     "--seed is deprecated; use --train-seed"),
])
def test_old_spellings_still_work_with_a_one_line_deprecation(tmp_path, capsys, args, warning):
    from lm_eval_iti.cli import main

    (tmp_path / "a-file").write_text("not a folder")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert f"lm-eval-iti: warning: {warning}\n" in err, err
    # parsing succeeded: the command itself refused the input (a usage error would exit 2 with "--help")
    assert "--help" not in err and exit_info.value.code == 2, err


def fields_with_options():
    from lm_eval_iti.experiments.plan import ExperimentConfig
    from lm_eval_iti.fit import FitConfig

    for cls in (FitConfig, ExperimentConfig):
        for f in dataclasses.fields(cls):
            if "option" in f.metadata:
                yield cls.__name__, f


def test_config_dataclasses_take_their_defaults_from_the_registry():
    seen = list(fields_with_options())
    assert len(seen) >= 45
    for owner, f in seen:
        assert f.default == OPTIONS[f.metadata["option"]].default, f"{owner}.{f.name}"


def public_callables():
    import lm_eval_iti as iti
    from lm_eval_iti.experiments.demo import run_real_demo

    from lm_eval_iti import side_effects

    sweep, validate = (importlib.import_module(f"lm_eval_iti.experiments.{m}") for m in ("sweep", "validate"))

    return {"fit_directions": iti.fit_directions, "fit_and_save": iti.fit.fit_and_save, "train": iti.train,
            "truthfulqa.samples": iti.truthfulqa.samples, "side_effects.side_effects": side_effects.side_effects,
            "side_effects.load_corpus": side_effects.load_corpus,
            "side_effects.alpha_for_kl_budget": side_effects.alpha_for_kl_budget,
            "validate": validate.validate, "sweep": sweep.sweep, "run_real_demo": run_real_demo}


# keywords whose concept has another name on the command line: a fit's batch is the collection's and its seed the
# folds'; a function given a directions file uses the file's alpha and, optionally, its top-K heads
FIT_NAMES = {"batch_size": "fit_batch_size", "seed": "fold_seed"}
CONCEPT_OF = {"fit_directions": FIT_NAMES, "fit_and_save": FIT_NAMES, "train": FIT_NAMES,
              "truthfulqa.samples": {**FIT_NAMES, "data_dir": "dataset"},  # a folder or the hub id
              "side_effects.side_effects": {"alpha": "file_alpha", "heads": "top_num_heads", "seed": "corpus_seed"},
              "side_effects.load_corpus": {"seed": "corpus_seed"}, "sweep": {"select_by": "rescore_by"},
              "run_real_demo": {"num_questions": "demo_num_questions", "num_heads": "demo_num_heads"}}
# keywords whose meaning in that function differs from the option of the same name (each says why)
NOT_THE_OPTION = {
    ("truthfulqa.samples", "sigma_data"): "the samples adapter's MC2-choice sigma set, as iti.train's default",
    ("side_effects.alpha_for_kl_budget", "num_docs"): "its KL sample (AUTO_NUM_DOCS), held out from --num-docs'",
    ("side_effects.alpha_for_kl_budget", "seed"): "its KL sample's seed (AUTO_SEED)",
    ("run_real_demo", "num_docs"): "a quick demo's CE/KL sample (DEMO_NUM_DOCS)",
}


def parsed_baselines(text):
    from lm_eval_iti.experiments.validate import parse_baselines

    return tuple(parse_baselines(text))


def parsed_scales(text):
    from lm_eval_iti.commands.experiments import _curve_scales

    return _curve_scales(text)


PARSED = {("validate", "baselines"): parsed_baselines, ("validate", "curve_scales"): parsed_scales}


def test_public_keywords_named_like_an_option_have_its_default():
    checked = 0
    for owner, func in public_callables().items():
        for keyword, param in inspect.signature(func).parameters.items():
            name = CONCEPT_OF.get(owner, {}).get(keyword, keyword)
            if name not in OPTIONS or param.default is inspect.Parameter.empty or (owner, name) in NOT_THE_OPTION:
                continue
            if OPTIONS[name].default is REQUIRED:
                continue
            checked += 1
            parse = PARSED.get((owner, keyword))
            if parse is not None:  # the function takes the parsed value of the option's text
                assert param.default == parse(OPTIONS[name].default), f"{owner}({keyword}={param.default!r})"
                continue
            assert param.default == OPTIONS[name].default, f"{owner}({keyword}={param.default!r})"
    assert checked >= 10


def test_help_lists_every_command_without_error():
    for path, _ in COMMAND_LIST:
        result = CliRunner().invoke(cli, path.split() + ["--help"])
        assert result.exit_code == 0, (path, result.output)
