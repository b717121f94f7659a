"""Small pieces of lm-eval the rest of the package uses: its ``k=v`` parser and its CLI."""

from __future__ import annotations


def parse_args_string(text: str) -> dict:
    """lm-eval's own ``k=v,k=v`` parser (``--model_args``, ``--metadata``), so values are typed as lm-eval does."""
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(text)


def run_stock_cli(args: list[str]) -> None:
    """The stock ``lm_eval`` CLI on ``args`` (``run`` is added when no subcommand is given)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    args = list(args)
    if not args or args[0] not in ("run", "ls", "validate"):
        args = ["run"] + args
    sys.argv = ["lm_eval"] + args
    cli_evaluate()
