"""``lm-eval-iti demo``: the truth-world demo (what ``make demo`` runs)."""

from __future__ import annotations

import click


@click.command()
@click.option("--out", default="results/demo", show_default=True, type=click.Path(file_okay=False),
              help="folder for the table, heatmap, alpha curve and JSON")
def demo(out):
    """Fit directions on the embedded truth-world model, compare hf and hf-iti with lm-eval, plot the results."""
    from ..truthworld.demo import run_demo

    run_demo(out, log=click.echo)
