"""``lm-eval-iti demo``: the truth-world demo (``make demo``), or a real model with ``--model`` (``make demo-real``)."""

from __future__ import annotations

import click

from ..cli_types import Count, Real
from .placement import placement_options


@click.command(context_settings={"show_default": True})
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for the table, heatmap, alpha curve and JSON (default: results/demo or results/demo-MODEL).")
@click.option("--model", default=None,
              help="A real model (folder, hub id, .gguf, smollm2-135m-instruct or gemma3-270m): fit on TruthfulQA fold 1, "
                   "evaluate fold 0 with lm-eval hf and hf-iti. Default: the embedded truth-world model.")
@click.option("--gguf-file", default=None, help="GGUF file inside the --model folder.")
@click.option("--data-dir", type=click.Path(exists=True), default=None,
              help="Local TruthfulQA folder (default: the hub dataset; --num-questions needs a local folder).")
@click.option("--num-questions", default=100, type=Count(0),
              help="With --model: the first N questions (half fit, half evaluated); 0 = all 817.")
@click.option("--num-heads", default=16, type=Count(1), help="With --model: K heads (SmolLM2 has 270).")
@click.option("--kl-budget", default=0.2, type=Real(minimum=0), help="With --model: alpha = the largest within this KL budget.")
@click.option("--corpus", default="wikitext", help="CE/KL and alpha-auto text: 'wikitext' (hub) or a raw text file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@placement_options
def demo(out, model, gguf_file, data_dir, num_questions, num_heads, kl_budget, corpus, quiet, device_map, max_memory,
         offload_folder):
    """Fit directions, compare hf and hf-iti with lm-eval, plot the results (truth world, or a real model)."""
    if model is None:
        if device_map or max_memory or offload_folder:
            from ..errors import ITIError

            raise ITIError("--device-map, --max-memory and --offload-folder apply to a real model (--model)")
        from ..truthworld.demo import run_demo

        run_demo(out or "results/demo", log=click.echo)
        return
    from pathlib import Path

    from ..experiments.demo import run_real_demo
    from ..loading import check_model_source

    check_model_source(model, gguf_file)  # before the options that depend on it

    out = out or f"results/demo-{Path(model).name}"
    run_real_demo(out, model, gguf_file=gguf_file, data_dir=data_dir, num_questions=num_questions or None,
                  num_heads=num_heads, kl_budget=kl_budget, corpus=corpus, progress=not quiet, log=click.echo,
                  device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
