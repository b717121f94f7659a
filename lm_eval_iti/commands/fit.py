"""``lm-eval-iti fit-directions``: a thin click layer over ``lm_eval_iti.fit.fit_and_save``."""

from __future__ import annotations

import click

from ..cli_types import Count, check_output_dir, check_output_file, renamed
from ..options import PLACEMENT, cli_options


@click.command("fit-directions", context_settings={"show_default": True})
@cli_options("model", "gguf_file", "revision", "directions_out", "dataset", "data_dir", "num_heads", "method",
             "head_selection", "effect_questions", "effect_check_heads", "random_heads", "alpha", "kl_budget",
             "kl_corpus", "val_ratio", "fold_seed", "num_folds", "fold",
             "contiguous_folds", "prompt_format", "sigma_data", "probe_backend", "probe_memory", "num_questions",
             "dtype", "fit_batch_size", "chunk_size", "device", "cache_dir", "no_cache", "collect_all_folds",
             "no_plot", "quiet", *PLACEMENT)
@renamed("--batch-size", "--fit-batch-size", Count(1), param="fit_batch_size")
def fit_directions(directions_out, no_cache, no_plot, quiet, **kw):
    """Fit ITI directions (probes on every head, top-K, direction and sigma per head) and write a directions file."""
    from ..collect import default_cache_dir
    from ..fit import companion_paths, fit_and_save, format_summary

    check_output_file(directions_out)
    for companion in companion_paths(directions_out):
        check_output_file(companion, "--out (its companion file)")
    if not no_cache:
        check_output_dir(kw["cache_dir"] or default_cache_dir(), "--cache-dir")
    if kw["fold"] is None:
        kw["num_folds"] = None  # no held-out fold: the fit uses every question
    result = fit_and_save(kw.pop("model"), directions_out, seed=kw.pop("fold_seed"),
                          batch_size=kw.pop("fit_batch_size"), use_cache=not no_cache, progress=not quiet,
                          write_plot=not no_plot, **kw)
    if result is None:  # a non-main rank of accelerate launch: rank 0 wrote the file and prints the summary
        return
    click.echo(format_summary(result.summary))
