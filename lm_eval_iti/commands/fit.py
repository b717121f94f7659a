"""``lm-eval-iti fit-directions``: a thin click layer over ``lm_eval_iti.fit.fit_and_save``."""

from __future__ import annotations

import click

from ..data import HUB_ID
from ..cli_types import Alpha, Count, Real, check_output_dir, check_output_file, renamed
from ..choices import DTYPES, METHODS, PROBE_BACKENDS, PROBE_MEMORY
from ..prompts import PROMPT_FORMATS, SIGMA_DATA
from .placement import placement_options

@click.command("fit-directions", context_settings={"show_default": True})
@click.option("--model", "model", required=True, help="Local model folder, hub id, .gguf file, or a named model (smollm2-135m-instruct, gemma3-270m).")
@click.option("--gguf-file", default=None, help="GGUF file inside the --model folder (transformers dequantizes it).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Directions file to write (.safetensors).")
@click.option("--dataset", default=HUB_ID, help="Hub id of TruthfulQA (multiple_choice + generation configs).")
@click.option("--data-dir", type=click.Path(exists=True), default=None,
              help="Local TruthfulQA folder (mc_task.json, TruthfulQA.csv) or mc_task.json file; overrides --dataset.")
@click.option("--num-heads", default=48, type=Count(1), help="K: number of heads to intervene on.")
@click.option("--method", type=click.Choice(METHODS), default="mass-mean", help="Direction of each head.")
@click.option("--random-heads", is_flag=True, help="Pick K heads at random (seeded): the random-heads baseline.")
@click.option("--alpha", default="15", type=Alpha(("auto",)), help="Strength stored in the file (hf-iti alpha= overrides), or 'auto': the "
              "largest alpha whose KL on held-out WikiText stays within --kl-budget.")
@click.option("--kl-budget", default=0.2, type=Real(minimum=0),
              help="For --alpha auto: KL(base||steered) budget in nats/token (the ITI paper's LLaMA-7B point cost 0.17).")
@click.option("--kl-corpus", default="wikitext",
              help="For --alpha auto: 'wikitext' (hub wikitext-2-raw-v1 test) or a local raw text file.")
@click.option("--val-ratio", default=0.2, type=Real(minimum=0, maximum=1), help="Share of training questions used to validate probes.")
@click.option("--seed", default=42, type=Count(0), help="Seed of folds, train/val split, random heads/directions, sigma set.")
@click.option("--num-folds", default=None, type=Count(2), help="Split questions into N folds (default: fit on all questions).")
@click.option("--fold", default=None, type=Count(0), help="Held-out fold: fit on every fold but this one.")
@click.option("--contiguous-folds", is_flag=True, help="The reference's folds: contiguous blocks in file order.")
@click.option("--prompt-format", type=click.Choice(PROMPT_FORMATS), default="qa",
              help="qa: 'Q: {question} A: {answer}'; chat: the tokenizer's chat template.")
@click.option("--sigma-data", type=click.Choice(SIGMA_DATA), default="gen_end_q",
              help="Prompts sigma is measured on (always restricted to the training questions).")
@click.option("--probe-backend", type=click.Choice(PROBE_BACKENDS), default="torch",
              help="torch: all probes batched; sklearn: the reference's per-head loop.")
@click.option("--probe-memory", type=click.Choice(PROBE_MEMORY), default="memory",
              help="stream: probes read the activation cache a block of layers at a time (bounded memory for large "
                   "models; same result).")
@click.option("--num-questions", "max_questions", default=None, type=Count(2),
              help="Use only the first N questions of the data (quick trials; folds are then over those N).")
@renamed("--max-questions", "--num-questions", Count(2), param="max_questions")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", help="Model dtype.")
@click.option("--batch-size", default=16, type=Count(1), help="Prompts per forward pass.")
@click.option("--chunk-size", default=512, type=Count(1),
              help="Prompts per activation-cache file: the unit of resuming and of the split across accelerate ranks.")
@click.option("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Activation cache (default: $LM_EVAL_ITI_CACHE or ~/.cache/lm_eval_iti).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the activation cache.")
@click.option("--collect-all-folds", is_flag=True,
              help="With --fold: also collect (and cache) the held-out fold's prompts, so fits of the other folds "
                   "read everything from the cache (validate and sweep do this). Default: the training fold's only.")
@click.option("--no-plot", is_flag=True, help="Do not write the FILE.heads.png heatmap.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@placement_options
def fit_directions(model, gguf_file, revision, out, dataset, data_dir, num_heads, method, random_heads, alpha, kl_budget, kl_corpus, val_ratio, seed,
                   num_folds, fold, contiguous_folds, prompt_format, sigma_data, probe_backend, probe_memory, max_questions, dtype,
                   batch_size, chunk_size, device, cache_dir, no_cache, collect_all_folds, no_plot, quiet, device_map, max_memory,
                   offload_folder):
    """Fit ITI directions (probes on every head, top-K, direction and sigma per head) and write a directions file."""
    from ..collect import default_cache_dir
    from ..fit import companion_paths, fit_and_save, format_summary

    check_output_file(out)
    for companion in companion_paths(out):
        check_output_file(companion, "--out (its companion file)")
    if not no_cache:
        check_output_dir(cache_dir or default_cache_dir(), "--cache-dir")

    result = fit_and_save(model, out, dataset=dataset, data_dir=data_dir, num_heads=num_heads, method=method,
                     random_heads=random_heads, val_ratio=val_ratio, seed=seed, num_folds=num_folds, fold=fold,
                     contiguous_folds=contiguous_folds, prompt_format=prompt_format, sigma_data=sigma_data,
                     alpha=alpha, dtype=dtype, batch_size=batch_size, chunk_size=chunk_size, device=device,
                     cache_dir=cache_dir, use_cache=not no_cache, probe_backend=probe_backend,
                     probe_memory=probe_memory, max_questions=max_questions,
                       revision=revision, progress=not quiet, write_plot=not no_plot,
                       gguf_file=gguf_file, kl_budget=kl_budget, kl_corpus=kl_corpus,
                     collect_all_folds=collect_all_folds, device_map=device_map, max_memory=max_memory,
                     offload_folder=offload_folder)
    if result is None:  # a non-main rank of accelerate launch: rank 0 wrote the file and prints the summary
        return
    click.echo(format_summary(result.summary))
