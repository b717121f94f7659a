"""``lm-eval-iti validate | sweep | side-effects | report``: thin click layers over ``lm_eval_iti.experiments``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from ..cli_types import Alpha, Count, NumberList, Real, check_output_dir, check_output_file, renamed
from ..errors import ITIError
from ..choices import DTYPES, ENGINE_MODES, GEN_POSITIONS, MC_POSITIONS, METHODS, PROBE_BACKENDS, SELECT_COLUMNS
from ..prompts import INSTRUCTIONS, PROMPT_FORMATS, SIGMA_DATA
from .placement import PLACEMENT_OPTIONS, placement_options

# every choice list is the library's own constant, so the CLI offers exactly what the library accepts
INSTRUCTION_CHOICES = tuple(INSTRUCTIONS)


def _parse_limit(text):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ITIError(f"--limit {text!r}: expected a number of documents or a fraction below 1") from None
    if value <= 0:
        raise ITIError(f"--limit {text}: must be positive")
    return int(value) if value >= 1 and value == int(value) else value


def _parse_metadata(text) -> dict:
    if not text:
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ITIError(f"--metadata: not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ITIError("--metadata: expected a JSON object")
        return value
    from ..harness.lm_eval_utils import parse_args_string

    try:
        return parse_args_string(text)
    except Exception:
        raise ITIError(f"--metadata {text!r}: expected JSON or k=v,k=v") from None


def _parse_ints(text: str, option: str) -> list[int]:
    try:
        return [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ITIError(f"{option} {text!r}: expected comma-separated whole numbers") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "run"


def common_options(func):
    """The options validate and sweep share (data, folds, tasks, fit, lm-eval, CE/KL, output)."""
    options = [
        click.option("--model", required=True, help="Local model folder, hub id, .gguf file, or a named model (smollm2-135m-instruct, gemma3-270m)."),
        click.option("--gguf-file", default=None, help="GGUF file inside the --model folder."),
        click.option("--revision", default=None, help="Hub revision of --model."),
        click.option("--dtype", type=click.Choice(DTYPES), default="auto"),
        click.option("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available)."),
        click.option("--batch-size", default=8, type=Count(1), help="Evaluation and CE/KL batch size."),
        click.option("--fit-batch-size", default=16, type=Count(1), help="Activation collection batch size."),
        click.option("--data-dir", type=click.Path(exists=True), default=None,
                     help="Local TruthfulQA folder (mc_task.json, TruthfulQA.csv); default: the hub dataset."),
        click.option("--binary-data", default=None, help="The 2025 TruthfulQA.csv for truthfulqa_iti_binary."),
        click.option("--num-questions", default=None, type=Count(2),
                     help="Quick runs: the first N questions of --data-dir, for fit and tasks alike."),
        click.option("--tasks", default="truthfulqa_iti", help="Comma-separated lm-eval tasks or groups."),
        click.option("--num-folds", default=2, type=Count(2)),
        click.option("--folds", "only_folds", default=None,
                     help="Evaluate only these held-out folds (comma list, e.g. 0); default: every fold."),
        click.option("--seed", default=42, type=Count(0), help="Fold / probe split / random-baseline seed."),
        click.option("--contiguous-folds", is_flag=True, help="The reference's contiguous folds."),
        click.option("--instruction", type=click.Choice(INSTRUCTION_CHOICES), default="default"),
        click.option("--method", type=click.Choice(METHODS), default="mass-mean"),
        click.option("--val-ratio", default=0.2, type=Real(minimum=0, maximum=1)),
        click.option("--prompt-format", type=click.Choice(PROMPT_FORMATS), default="qa", help="Activation prompts."),
        click.option("--sigma-data", type=click.Choice(SIGMA_DATA), default="gen_end_q",
                     help="Prompts sigma is measured on."),
        click.option("--probe-backend", type=click.Choice(PROBE_BACKENDS), default="torch"),
        click.option("--mc-positions", type=click.Choice(MC_POSITIONS), default="answer",
                     help="hf-iti mc_positions (legacy: from the second answer token, as the reference)."),
        click.option("--gen-positions", type=click.Choice(GEN_POSITIONS), default="last"),
        click.option("--limit", default=None, help="lm-eval --limit per task and fold (testing only)."),
        click.option("--metadata", default=None, help="Extra task metadata (JSON or k=v,...), e.g. judge settings."),
        click.option("--apply-chat-template", is_flag=True),
        click.option("--system-instruction", default=None),
        click.option("--gen-kwargs", default=None, help="lm-eval --gen_kwargs."),
        click.option("--bootstrap-iters", default=100000, type=Count(0), help="lm-eval bootstrap iterations."),
        click.option("--max-length", default=None, type=Count(2), help="lm-eval HFLM max_length."),
        click.option("--engine", type=click.Choice(ENGINE_MODES), default="auto",
                     help="Score hooked rows of loglikelihood tasks with the shared-prefix engine (auto: a sweep's "
                     "grid when every task is one; on: also every hf and hf-iti row of validate, controls included; "
                     "off: every row through lm-eval). See docs/sweeps.md."),
        click.option("--side-effects/--no-side-effects", default=True, help="Measure CE/KL for every row."),
        click.option("--corpus", default="wikitext",
                     help="CE/KL corpus: 'wikitext' (hub wikitext-2-raw-v1 test) or a local raw file."),
        click.option("--num-docs", default=100, type=Count(1), help="CE/KL documents."),
        click.option("--num-tokens", default=128, type=Count(2), help="CE/KL tokens per document."),
        click.option("--corpus-seed", default=0, type=Count(0)),
        click.option("--no-detokenize", is_flag=True, help="Keep WikiText's ' @-@ ' tokenisation."),
        click.option("--cache-dir", default=None, help="Activation cache (default: ~/.cache/lm_eval_iti)."),
        click.option("--out", default=None, type=click.Path(file_okay=False),
                     help="Run folder (default: results/<a name from the settings>); rerun to resume."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        *PLACEMENT_OPTIONS,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(kw: dict):
    from ..experiments import ExperimentConfig

    return ExperimentConfig(
        model=kw["model"], revision=kw["revision"], gguf_file=kw["gguf_file"], dtype=kw["dtype"], device=kw["device"],
        data_dir=kw["data_dir"], binary_data=kw["binary_data"], num_questions=kw["num_questions"],
        tasks=tuple(t.strip() for t in kw["tasks"].split(",") if t.strip()), num_folds=kw["num_folds"],
        seed=kw["seed"], contiguous_folds=kw["contiguous_folds"], limit=_parse_limit(kw["limit"]),
        metadata=_parse_metadata(kw["metadata"]), val_ratio=kw["val_ratio"], prompt_format=kw["prompt_format"],
        sigma_data=kw["sigma_data"], probe_backend=kw["probe_backend"], side_effects=kw["side_effects"],
        corpus=kw["corpus"], num_docs=kw["num_docs"], num_tokens=kw["num_tokens"], corpus_seed=kw["corpus_seed"],
        detokenize=not kw["no_detokenize"], bootstrap_iters=kw["bootstrap_iters"],
        apply_chat_template=kw["apply_chat_template"], system_instruction=kw["system_instruction"],
        gen_kwargs=kw["gen_kwargs"], max_length=kw["max_length"], batch_size=kw["batch_size"],
        fit_batch_size=kw["fit_batch_size"], cache_dir=kw["cache_dir"], progress=not kw["quiet"], engine=kw["engine"],
        folds=None if kw["only_folds"] is None else tuple(_parse_ints(kw["only_folds"], "--folds")),
        device_map=kw["device_map"], max_memory=kw["max_memory"], offload_folder=kw["offload_folder"])


def _default_out(kind: str, kw: dict, tail: str) -> str:
    return str(Path("results") / _slug(f"{kind}_{Path(kw['model']).name}_{kw['method']}_{tail}_"
                                       f"f{kw['num_folds']}_s{kw['seed']}"))


def _positions(kw):
    return dict(instruction=kw["instruction"], mc_positions=kw["mc_positions"], gen_positions=kw["gen_positions"])


@click.command(context_settings={"show_default": True})
@common_options
@click.option("--alpha", default="15", type=Alpha(("auto", "select")), help="ITI strength, or 'auto': per fold, the largest alpha whose KL on "
              "held-out WikiText stays within --kl-budget (the way to start on a new model), or 'select': per fold, "
              "alpha and K chosen by nested cross-validation on its training folds (--select-alphas, "
              "--select-num-heads; the grid scored by the shared-prefix engine, the chosen row by lm-eval, or by the engine "
              "with --engine on).")
@click.option("--select-alphas", default="5,10,15,20", type=NumberList(float, minimum=0), help="For --alpha select: the strengths to choose from.")
@click.option("--select-num-heads", default="16,32,48", type=NumberList(int, minimum=1),
              help="For --alpha select: the K values to choose from (each at most --num-heads, the fit's size).")
@click.option("--select-by", type=click.Choice(tuple(SELECT_COLUMNS)), default="MC2",
              help="For --alpha select: the metric maximised on the inner folds.")
@click.option("--inner-folds", default=2, type=Count(2), help="For --alpha select: folds of each training part.")
@click.option("--kl-budget", default=0.2, type=Real(minimum=0),
              help="For --alpha auto and select: KL(base||steered) budget in nats/token on held-out WikiText (the "
              "ITI paper's LLaMA-7B point cost 0.17); select scores only grid points within it.")
@click.option("--num-heads", default=48, type=Count(1), help="K: heads intervened on.")
@click.option("--no-baseline", is_flag=True, help="Skip the alpha-0 baseline row.")
@click.option("--baselines", default="", help="Comma list or 'all': random-directions, random-matched, "
              "random-matched-kl, random-heads, label-shuffled, style, probe-weights, no-instruction, baked, steered; "
              "or 'study': the study's controls (random-matched, random-matched-kl, random-heads, label-shuffled, "
              "style, probe-weights, no-instruction) with at least 20, 20, 10 and 10 draws per fold.")
@click.option("--random-draws", default=5, type=Count(1), help="Draws per fold of each control family "
              "(random-matched, random-matched-kl, random-heads, label-shuffled; one row each); with "
              "--baselines study, a larger value raises the study's counts.")
@click.option("--curve-scales", default="", help="Comma list, e.g. 0.5,2: ITI and every hooked control again at "
              "these multiples of its own alpha (first random draw only), for gain-vs-KL curves in pareto.png.")
def validate(**kw):
    """k-fold ITI: fit on the other folds, evaluate each fold through lm-eval, baseline and ablations alongside."""
    from ..experiments.validate import parse_baselines, validate as run_validate

    alpha = kw["alpha"]  # a float, "auto" or "select" (the Alpha option type)
    selecting = alpha == "select"
    selection = None
    if selecting:
        selection = {"alphas": kw["select_alphas"], "num_heads": kw["select_num_heads"],
                     "by": kw["select_by"], "inner_folds": kw["inner_folds"], "kl_budget": kw["kl_budget"]}
    tail = (f"a{alpha:g}" if alpha not in ("auto", "select") else "aselect" if selecting
            else f"aauto-kl{kw['kl_budget']:g}")
    out = kw["out"] or _default_out("validate", kw, f"{tail}_k{kw['num_heads']}")
    config = _config(kw)
    check_before_loading(kw, out, kl_sample=alpha in ("auto", "select") or _kl_matched(kw["baselines"]))
    if alpha == "auto":
        config.kl_budget = kw["kl_budget"]
    results = run_validate(config, out, method=kw["method"], alpha=alpha, num_heads=kw["num_heads"],
                           baseline=not kw["no_baseline"], baselines=parse_baselines(kw["baselines"]),
                           random_draws=kw["random_draws"], selection=selection,
                           curve_scales=_curve_scales(kw["curve_scales"]), **_positions(kw))
    _echo_run(results, out)


def _kl_matched(baselines: str) -> bool:
    """Whether a requested control is run at ITI's KL (and so needs the KL sample)."""
    names = {t.strip() for t in baselines.split(",")}
    return bool(names & {"random-matched-kl", "style", "all", "study"})


def _curve_scales(text: str) -> tuple[float, ...]:
    if not text.strip():
        return ()
    return tuple(NumberList(float, minimum=0).convert(text, None, None))


def check_before_loading(kw: dict, out: str, kl_sample: bool = False) -> None:
    """What would otherwise fail after a fold's fit: the run folder writable, the CE/KL corpus (and the KL sample of
    alpha auto, select and KL-matched controls) large enough. A refused run leaves no folder behind."""
    from ..experiments.side_effects import check_kl_corpus, load_corpus

    check_output_dir(out)
    if kw.get("cache_dir"):
        check_output_dir(kw["cache_dir"], "--cache-dir")
    # the library's corpus= and num_docs= are shown as the flags; the KL check reads the CE/KL sample too
    if kl_sample:
        check_kl_corpus(kw["corpus"], held_out_from=(kw["num_docs"], kw["corpus_seed"]))
    elif kw["side_effects"]:
        load_corpus(kw["corpus"], kw["num_docs"], kw["corpus_seed"], detokenized=False)


@click.command(context_settings={"show_default": True})
@common_options
@click.option("--alphas", default="0,5,10,15,20,25", type=NumberList(float, minimum=0), help="Comma-separated strengths.")
@click.option("--num-heads", default="16,48,96", type=NumberList(int, minimum=1), help="Comma-separated K values.")
@click.option("--select-by", type=click.Choice(("auto", "none") + tuple(SELECT_COLUMNS)), default="auto",
              help="Where the engine scored the grid: score the best row by this column again through lm-eval's "
              "hf-iti (auto: MC2, else MC1, MC3, binary; none: skip).")
def sweep(**kw):
    """validate over alpha x K, reusing cached activations and one fit per fold; table and plots."""
    from ..experiments.sweep import sweep as run_sweep

    alphas, ks = kw["alphas"], kw["num_heads"]
    named = ",".join(format(a, "g") for a in alphas), ",".join(map(str, ks))
    out = kw["out"] or _default_out("sweep", kw, f"a{named[0]}_k{named[1]}")
    check_before_loading(kw, out)
    results = run_sweep(_config(kw), out, alphas, ks, method=kw["method"], select_by=kw["select_by"],
                        **_positions(kw))
    _echo_run(results, out)
    for name, path in (results.get("plots") or {}).items():
        click.echo(f"plot {name}: {path if path else 'not drawn (no such metric in the results)'}")


def _echo_run(results: dict, out: str) -> None:
    from ..experiments.runner import table_markdown

    click.echo(table_markdown(results))
    done = results["evaluations_this_process"]
    click.echo(f"wrote {Path(out) / 'results.json'} and table.md ({done} fold x variant evaluations run, "
               f"{len(results['resumed_from_disk'])} resumed from disk; leak check: "
               f"{results['leak_check']['overlap_total']} evaluated questions in a training set)")


@click.command("side-effects", context_settings={"show_default": True})
@click.option("--model", required=True, help="Model the directions were fitted on: folder, hub id, .gguf or a named model.")
@click.option("--gguf-file", default=None, help="GGUF file inside the --model folder (transformers dequantizes it).")
@click.option("--directions", required=True, type=click.Path(dir_okay=False), help="Directions .safetensors file.")
@click.option("--alpha", default=None, type=Alpha(), help="Strength (default: the file's alpha).")
@click.option("--num-heads", default=None, type=Count(1), help="Use only the file's top-K heads.")
@renamed("--heads", "--num-heads", Count(1))
@click.option("--corpus", default="wikitext", help="'wikitext' (hub wikitext-2-raw-v1 test split) or a local raw file.")
@click.option("--num-docs", default=100, type=Count(1), help="Documents (paragraphs of >= 100 words).")
@click.option("--num-tokens", default=128, type=Count(2), help="First T tokens of each document.")
@click.option("--corpus-seed", default=0, type=Count(0), help="Document sampling seed (as validate's).")
@renamed("--seed", "--corpus-seed", Count(0))
@click.option("--no-detokenize", is_flag=True, help="Keep WikiText's ' @-@ ' tokenisation.")
@click.option("--batch-size", default=8, type=Count(1))
@click.option("--dtype", type=click.Choice(DTYPES), default="auto")
@click.option("--device", default=None)
@click.option("--revision", default=None)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the JSON result here.")
@click.option("--allow-model-mismatch", is_flag=True,
              help="Use directions fitted on another model of the same shape (refused otherwise).")
@click.option("--quiet", is_flag=True)
@placement_options
def side_effects(model, gguf_file, directions, alpha, num_heads, corpus, num_docs, num_tokens, corpus_seed, no_detokenize,
                 batch_size, dtype, device, revision, out, allow_model_mismatch, quiet, device_map, max_memory, offload_folder):
    """CE of base and steered model and KL(base || steered) per token, same documents, every position edited."""
    import os

    from ..experiments.side_effects import load_corpus, side_effects as measure, write_side_effects
    from ..fit import load_model

    if corpus != "wikitext" and not os.path.isfile(corpus):
        raise ITIError(f"--corpus {corpus}: no such file (give a raw text file, or 'wikitext' for the hub split)")
    if not os.path.isfile(directions):
        raise ITIError(f"{directions}: directions file not found")
    if out:
        check_output_file(out)
    load_corpus(corpus, num_docs, corpus_seed, detokenized=False)  # enough paragraphs? before the model loads
    loaded, tokenizer = load_model(model, revision, dtype, device, not quiet, gguf_file=gguf_file,
                                   device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    result = measure(loaded, tokenizer, directions, alpha=alpha, heads=num_heads, corpus=corpus, num_docs=num_docs,
                     num_tokens=num_tokens, seed=corpus_seed, detokenized=not no_detokenize, batch_size=batch_size,
                     progress=not quiet, allow_model_mismatch=allow_model_mismatch)
    result["model"] = model
    s = result["side_effects"]
    click.echo(f"CE base {s['ce_base']:.4f}  CE steered {s['ce_steered']:.4f}  KL(base||steered) {s['kl']:.5f} "
               f"nats/token ({s['num_docs']} docs, {s['num_tokens']} tokens; detokenized: {result['corpus']['detokenized']})")
    if out:
        write_side_effects(result, out)
        click.echo(f"wrote {out}")


@click.command(context_settings={"show_default": True})
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", default="results/report", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--title", default="Leaderboard")
@click.option("--no-plots", is_flag=True)
def report(results, out, title, no_plots):
    """Leaderboard markdown (model x method; MC1 MC2 MC3 binary True Info True*Info CE KL) and PNG plots."""
    from ..experiments.report import build_report

    check_output_dir(out)

    written = build_report(list(results), out, title=title, plots=not no_plots)
    click.echo(written["table"])
    click.echo(f"wrote {written['markdown']}, {written['json']}"
               + "".join(f", {p}" for p in written["plots"].values() if p))
