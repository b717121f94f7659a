"""``lm-eval-iti demo``: the truth-world demo (``make demo``), or a real model with ``--model`` (``make demo-real``)."""

from __future__ import annotations

import click

from ..options import PLACEMENT, cli_options


@click.command(context_settings={"show_default": True})
@cli_options("demo_out", "demo_model", "gguf_file", "data_dir", "demo_num_questions", "demo_num_heads", "kl_budget",
             "corpus", "quiet", *PLACEMENT)
def demo(demo_out, demo_model, gguf_file, data_dir, demo_num_questions, demo_num_heads, kl_budget, corpus, quiet,
         device_map, max_memory, offload_folder):
    """Fit directions, compare hf and hf-iti with lm-eval, plot the results (truth world, or a real model)."""
    out, model = demo_out, demo_model
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
    run_real_demo(out, model, gguf_file=gguf_file, data_dir=data_dir, num_questions=demo_num_questions or None,
                  num_heads=demo_num_heads, kl_budget=kl_budget, corpus=corpus, progress=not quiet, log=click.echo,
                  device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
