"""``lm-eval-iti``: a thin click CLI over the Python API. Subcommands load lazily (each lives in commands/)."""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import ITIError

# name -> "module:attribute" of a click command
COMMANDS = {
    "run": "lm_eval_iti.commands.run:run",
    "export": "lm_eval_iti.commands.export:export",
    "bake": "lm_eval_iti.commands.export:bake",
    "fit-directions": "lm_eval_iti.commands.fit:fit_directions",
    "validate": "lm_eval_iti.commands.experiments:validate",
    "sweep": "lm_eval_iti.commands.experiments:sweep",
    "side-effects": "lm_eval_iti.commands.experiments:side_effects",
    "report": "lm_eval_iti.commands.experiments:report",
    "judge": "lm_eval_iti.commands.judge:judge",
    "truthworld": "lm_eval_iti.commands.truthworld:truthworld",
    "demo": "lm_eval_iti.commands.demo:demo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._spec_exists(name))

    @staticmethod
    def _spec_exists(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._spec_exists(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lm-eval-iti")
def cli():
    """Inference-Time Intervention for lm-evaluation-harness."""


def main(argv=None) -> None:
    """Entry point: ITIError (bad input) ends with one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, prog_name="lm-eval-iti", standalone_mode=False)
    except ITIError as exc:
        click.echo(f"lm-eval-iti: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
