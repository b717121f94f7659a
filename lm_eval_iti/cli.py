"""``lm-eval-iti``: a thin click CLI over the Python API. Subcommands load lazily (each lives in commands/)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys

import click

from . import __version__
from .errors import ITIError

# name -> ("module:attribute" of a click command, its one-line help for the command list)
COMMANDS = {
    "run": ("lm_eval_iti.commands.run:run", "Run lm_eval (every stock flag works) with hf-iti and the truthfulqa_iti tasks registered."),
    "export": ("lm_eval_iti.commands.export:export", "Export W_o·(alpha·sigma·direction) per layer for `lm_eval --model steered` (edits every position)."),
    "bake": ("lm_eval_iti.commands.export:bake", "Write a Hugging Face model whose attention output bias holds W_o·shift (acts at every position)."),
    "fit-directions": ("lm_eval_iti.commands.fit:fit_directions", "Fit ITI directions (probes on every head, top-K, direction and sigma per head) and write a directions file."),
    "validate": ("lm_eval_iti.commands.experiments:validate", "k-fold ITI: fit on the other folds, evaluate each fold through lm-eval, baseline and ablations alongside."),
    "sweep": ("lm_eval_iti.commands.experiments:sweep", "validate over alpha x K, reusing cached activations and one fit per fold; table and plots."),
    "side-effects": ("lm_eval_iti.commands.experiments:side_effects", "CE of base and steered model and KL(base || steered) per token, same documents, every position edited."),
    "report": ("lm_eval_iti.commands.experiments:report", "Leaderboard markdown (model x method; MC1 MC2 MC3 binary True Info True*Info CE KL) and PNG plots."),
    "judge": ("lm_eval_iti.commands.judge:judge", "Judge the generations of SAMPLES (an lm-eval samples_truthfulqa_iti_gen_*.jsonl, or a folder holding one)"),
    "truthworld": ("lm_eval_iti.commands.truthworld:truthworld", "The offline truth world: a small trained Llama where ITI must measurably work."),
    "demo": ("lm_eval_iti.commands.demo:demo", "Fit directions, compare hf and hf-iti with lm-eval, plot the results (truth world, or a real model)."),
}


class LazyGroup(click.Group):
    """Subcommands import their module (and torch) only when run; the command list uses static help lines, so
    ``lm-eval-iti --help`` imports neither torch nor lm_eval."""

    invoked: click.Command | None = None

    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._spec_exists(name))

    @staticmethod
    def _spec_exists(name: str) -> bool:
        module = COMMANDS[name][0].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._spec_exists(name):
            return None
        module, attr = COMMANDS[name][0].split(":")
        LazyGroup.invoked = getattr(importlib.import_module(module), attr)
        return LazyGroup.invoked

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def with_flags(message: str, command: click.Command | None) -> str:
    """Library errors name parameters (``num_heads=0 ...``); on the command line, name the command's flags instead."""
    if command is None:
        return message
    for param in command.params:
        if isinstance(param, click.Option) and param.name and param.opts:
            flag = max(param.opts, key=len)
            for name in {param.name, flag.lstrip("-").replace("-", "_")}:  # e.g. filter_name and --filter
                message = re.sub(rf"(?<![\w.-]){re.escape(name)}=( ?)",
                                 lambda m: flag if m.end() == len(m.string) else flag + " ", message)
    return message


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lm-eval-iti")
def cli():
    """Inference-Time Intervention for lm-evaluation-harness."""


def usage_message(exc: click.UsageError) -> str:
    """A bad option value as '--flag VALUE problem' (the types' messages start with the value); other usage errors as
    click words them."""
    param = getattr(exc, "param", None)
    if isinstance(exc, click.BadParameter) and isinstance(param, click.Option) and param.opts:
        return f"{max(param.opts, key=len)} {' '.join(exc.message.split())}"
    return " ".join(exc.format_message().split())


def main(argv=None) -> None:
    """Entry point: ITIError (bad input) ends with one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, prog_name="lm-eval-iti", standalone_mode=False)
    except ITIError as exc:
        click.echo(f"lm-eval-iti: error: {with_flags(str(exc), LazyGroup.invoked)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # one line, like every other refusal; --help shows the usage
        command = exc.ctx.command_path if exc.ctx is not None else "lm-eval-iti"
        click.echo(f"lm-eval-iti: error: {usage_message(exc)} (see {command} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
