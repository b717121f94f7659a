"""Every choice list of the CLI is built from the library's own constants, so the two cannot drift apart
(``--mc-positions`` once lacked ``legacy``, which hf-iti and validate accept); the library's own errors list the
same constants."""

from __future__ import annotations

import click
import pytest

from lm_eval_iti.cli import COMMANDS, LazyGroup, cli
from lm_eval_iti.experiments.baselines import (GEN_POSITION_TEXT, MC_POSITION_TEXT, SELECT_COLUMNS,
                                               hooked_positions, validate_variants)
from lm_eval_iti.experiments.plan import ENGINE_MODES
from lm_eval_iti.export import EXPORT_FORMATS
from lm_eval_iti.intervene import GEN_POSITIONS, MC_POSITIONS
from lm_eval_iti.judges.config import BACKENDS
from lm_eval_iti.loading import DTYPES
from lm_eval_iti.probes import PROBE_BACKENDS, PROBE_MEMORY
from lm_eval_iti.prompts import INSTRUCTIONS, PRIMERS, PROMPT_FORMATS, SIGMA_DATA
from lm_eval_iti.fit import HEAD_SELECTIONS
from lm_eval_iti.select import METHODS

# option name -> what the library accepts (per command where they differ)
EXPECTED = {
    "mc_positions": set(MC_POSITIONS),
    "gen_positions": set(GEN_POSITIONS),
    "method": set(METHODS),
    "head_selection": set(HEAD_SELECTIONS),
    "instruction": set(INSTRUCTIONS),
    "prompt_format": set(PROMPT_FORMATS),
    "sigma_data": set(SIGMA_DATA),
    "probe_backend": set(PROBE_BACKENDS),
    "probe_memory": set(PROBE_MEMORY),
    "export_format": set(EXPORT_FORMATS),
    "judge": set(BACKENDS) - {"none"},
    "engine": set(ENGINE_MODES),
    "select_by": set(SELECT_COLUMNS),
    "rescore_by": set(SELECT_COLUMNS) | {"auto", "none"},  # sweep's --select-by (validate's always selects)
    "dtype": set(DTYPES),
    "save_dtype": set(DTYPES) - {"auto"},  # export and bake write weights: a named dtype
}


def _choice_options():
    for name in LazyGroup().list_commands(None):
        command = cli.get_command(None, name)
        commands = command.commands.items() if isinstance(command, click.Group) else [(name, command)]
        for sub_name, sub in commands:
            for param in sub.params:
                if isinstance(param.type, click.Choice):
                    yield f"{name}" if sub is command else f"{name} {sub_name}", param


def test_every_choice_list_equals_the_library_constant():
    seen = set()
    for command, param in _choice_options():
        choices = set(param.type.choices)
        assert param.name in EXPECTED, f"{command} --{param.name}: add its library constant to EXPECTED"
        expected = EXPECTED[param.name]
        assert choices == expected, (command, param.name)
        seen.add(param.name)
    assert {"mc_positions", "gen_positions", "method", "dtype", "save_dtype", "instruction", "rescore_by"} <= seen
    assert set(COMMANDS) >= {"validate", "sweep", "fit-directions"}


@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_mc_positions_legacy_is_accepted_by_the_experiment_commands(command):
    param = next(p for p in cli.get_command(None, command).params if p.name == "mc_positions")
    assert param.type.convert("legacy", param, None) == "legacy"


def test_every_position_mode_has_a_table_label_and_validate_accepts_legacy():
    assert set(MC_POSITION_TEXT) == set(MC_POSITIONS) and set(GEN_POSITION_TEXT) == set(GEN_POSITIONS)
    for mc in MC_POSITIONS:
        for gen in GEN_POSITIONS:
            text = hooked_positions(mc, gen)
            assert MC_POSITION_TEXT[mc] in text and GEN_POSITION_TEXT[gen] in text
    rows = validate_variants(mc_positions="legacy", baselines=("random-directions",))
    iti = [r for r in rows if r.kind == "hf-iti"]
    assert len(iti) == 2 and all(r.mc_positions == "legacy" and "second answer token" in r.positions for r in iti)


def test_every_choice_default_is_one_of_its_choices():
    for command, param in _choice_options():
        if param.default is not None:
            assert param.default in param.type.choices, (command, param.name, param.default)


def _hf_iti_check(**kw):
    from lm_eval_iti.harness.model import check_options

    return check_options(**{"directions": __file__, "mc_positions": "answer", "gen_positions": "last", **kw})


def _judge_config(**meta):
    from lm_eval_iti.judges.config import from_sources

    return from_sources(meta, environ={})


def _task_options(**meta):
    from lm_eval_iti.harness.taskfns import parse_options

    return parse_options(meta)


def _select_method(method):
    from lm_eval_iti.select import compute_directions

    return compute_directions(method, None)


# library validator -> (the constant it must list, in order)
LIBRARY_LISTS = [
    (lambda: _hf_iti_check(mc_positions="x"), MC_POSITIONS),
    (lambda: _hf_iti_check(gen_positions="x"), GEN_POSITIONS),
    (lambda: __import__("lm_eval_iti.loading", fromlist=["load_model"]).load_model("tiny", dtype="x"), DTYPES),
    (lambda: _judge_config(judge="hf", judge_dtype="x"), DTYPES),
    (lambda: _judge_config(judge="x"), BACKENDS),
    (lambda: _task_options(instruction="x"), tuple(INSTRUCTIONS)),
    (lambda: _task_options(primer="x"), PRIMERS),
    (lambda: __import__("lm_eval_iti.prompts", fromlist=["render"]).render("q", "a", "x"), PROMPT_FORMATS),
    (lambda: _select_method("x"), METHODS),
]


@pytest.mark.parametrize("call, constant", LIBRARY_LISTS)
def test_library_errors_list_exactly_the_constant(call, constant):
    """The accepted values named in each one-line error are the constant the CLI builds its choices from."""
    from lm_eval_iti.errors import ITIError

    with pytest.raises(ITIError) as err:
        call()
    listed = str(err.value).split("is not one of ", 1)[1]
    assert listed == ", ".join(constant), str(err.value)
