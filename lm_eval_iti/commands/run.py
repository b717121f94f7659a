"""``lm-eval-iti run ...``: the stock lm_eval CLI with hf-iti and the packaged tasks loaded."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("lm_eval_args", nargs=-1, type=click.UNPROCESSED)
def run(lm_eval_args):
    """Run lm_eval (every stock flag works) with hf-iti and the truthfulqa_iti tasks registered."""
    from ..errors import install_one_line_errors
    from ..harness.lm_eval_utils import run_stock_cli
    from ..harness.plugin import ensure_registered

    ensure_registered()
    install_one_line_errors()
    run_stock_cli(list(lm_eval_args))
