"""``lm-eval-iti validate | sweep | side-effects | report``: thin click layers over ``lm_eval_iti.experiments``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from ..cli_types import NumberList, check_output_dir, check_output_file
from ..errors import ITIError
from ..options import PLACEMENT, cli_options


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


COMMON_OPTIONS = (
    "model", "gguf_file", "revision", "dtype", "device", "batch_size", "fit_batch_size", "data_dir", "binary_data",
    "num_questions", "tasks", "num_folds", "only_folds", "fold_seed", "contiguous_folds", "instruction", "method",
    "head_selection", "effect_questions", "effect_check_heads",
    "val_ratio", "prompt_format", "sigma_data", "probe_backend", "mc_positions", "gen_positions", "limit", "metadata",
    "apply_chat_template", "system_instruction", "gen_kwargs", "bootstrap_iters", "max_length", "engine",
    "side_effects", "corpus", "num_docs", "num_tokens", "corpus_seed", "no_detokenize", "cache_dir", "run_out", "quiet",
    *PLACEMENT)
"""The options validate and sweep share (data, folds, tasks, fit, lm-eval, CE/KL, output)."""


def _config(kw: dict):
    from ..experiments import ExperimentConfig

    return ExperimentConfig(
        model=kw["model"], revision=kw["revision"], gguf_file=kw["gguf_file"], dtype=kw["dtype"], device=kw["device"],
        data_dir=kw["data_dir"], binary_data=kw["binary_data"], num_questions=kw["num_questions"],
        tasks=tuple(t.strip() for t in kw["tasks"].split(",") if t.strip()), num_folds=kw["num_folds"],
        seed=kw["fold_seed"], contiguous_folds=kw["contiguous_folds"], limit=_parse_limit(kw["limit"]),
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
                                       f"f{kw['num_folds']}_s{kw['fold_seed']}"))


def _positions(kw):
    return dict(instruction=kw["instruction"], mc_positions=kw["mc_positions"], gen_positions=kw["gen_positions"])


@click.command(context_settings={"show_default": True})
@cli_options(*COMMON_OPTIONS, "validate_alpha", "select_alphas", "select_num_heads", "select_by", "inner_folds",
             "select_methods", "select_head_selections",
             "kl_budget", "num_heads", "no_baseline", "baselines", "random_draws", "curve_scales")
def validate(**kw):
    """k-fold ITI: fit on the other folds, evaluate each fold through lm-eval, baseline and ablations alongside."""
    from ..experiments.validate import parse_baselines, validate as run_validate

    alpha = kw["validate_alpha"]  # a float, "auto" or "select" (the Alpha option type)
    selecting = alpha == "select"
    selection = None
    if selecting:
        selection = {"alphas": kw["select_alphas"], "num_heads": kw["select_num_heads"],
                     "by": kw["select_by"], "inner_folds": kw["inner_folds"], "kl_budget": kw["kl_budget"],
                     "methods": _names(kw["select_methods"]), "head_selections": _names(kw["select_head_selections"])}
    tail = (f"a{alpha:g}" if alpha not in ("auto", "select") else "aselect" if selecting
            else f"aauto-kl{kw['kl_budget']:g}")
    out = kw["run_out"] or _default_out("validate", kw, f"{tail}_k{kw['num_heads']}")
    config = _config(kw)
    check_before_loading(kw, out, kl_sample=alpha in ("auto", "select") or _kl_matched(kw["baselines"]))
    if alpha == "auto":
        config.kl_budget = kw["kl_budget"]
    results = run_validate(config, out, method=kw["method"], alpha=alpha, num_heads=kw["num_heads"],
                           **_effect_options(kw),
                           baseline=not kw["no_baseline"], baselines=parse_baselines(kw["baselines"]),
                           random_draws=kw["random_draws"], selection=selection,
                           curve_scales=_curve_scales(kw["curve_scales"]), **_positions(kw))
    _echo_run(results, out)


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _effect_options(kw: dict) -> dict:
    return {k: kw[k] for k in ("head_selection", "effect_questions", "effect_check_heads")}


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
    from ..side_effects import check_kl_corpus, load_corpus

    check_output_dir(out)
    if kw.get("cache_dir"):
        check_output_dir(kw["cache_dir"], "--cache-dir")
    # the library's corpus= and num_docs= are shown as the flags; the KL check reads the CE/KL sample too
    if kl_sample:
        check_kl_corpus(kw["corpus"], held_out_from=(kw["num_docs"], kw["corpus_seed"]))
    elif kw["side_effects"]:
        load_corpus(kw["corpus"], kw["num_docs"], kw["corpus_seed"], detokenized=False)


@click.command(context_settings={"show_default": True})
@cli_options(*COMMON_OPTIONS, "alphas", "sweep_num_heads", "rescore_by")
def sweep(**kw):
    """validate over alpha x K, reusing cached activations and one fit per fold; table and plots."""
    from ..experiments.sweep import sweep as run_sweep

    alphas, ks = kw["alphas"], kw["sweep_num_heads"]
    named = ",".join(format(a, "g") for a in alphas), ",".join(map(str, ks))
    out = kw["run_out"] or _default_out("sweep", kw, f"a{named[0]}_k{named[1]}")
    check_before_loading(kw, out)
    results = run_sweep(_config(kw), out, alphas, ks, method=kw["method"], select_by=kw["rescore_by"],
                        **_effect_options(kw), **_positions(kw))
    _echo_run(results, out)
    for name, path in (results.get("plots") or {}).items():
        click.echo(f"plot {name}: {path if path else 'not drawn (no such metric in the results)'}")


def _echo_run(results: dict, out: str) -> None:
    from ..experiments.summary import table_markdown

    click.echo(table_markdown(results))
    done = results["evaluations_this_process"]
    click.echo(f"wrote {Path(out) / 'results.json'} and table.md ({done} fold x variant evaluations run, "
               f"{len(results['resumed_from_disk'])} resumed from disk; leak check: "
               f"{results['leak_check']['overlap_total']} evaluated questions in a training set)")


@click.command("side-effects", context_settings={"show_default": True})
@cli_options("model", "gguf_file", "directions", "file_alpha", "top_num_heads", "corpus", "num_docs", "num_tokens",
             "corpus_seed", "no_detokenize", "batch_size", "dtype", "device", "revision", "result_file",
             "allow_model_mismatch", "quiet", *PLACEMENT, deprecated={"corpus_seed": ("--seed",)})
def side_effects(model, gguf_file, directions, file_alpha, top_num_heads, corpus, num_docs, num_tokens, corpus_seed,
                 no_detokenize, batch_size, dtype, device, revision, result_file, allow_model_mismatch, quiet,
                 device_map, max_memory, offload_folder):
    """CE of base and steered model and KL(base || steered) per token, same documents, every position edited."""
    import os

    from ..side_effects import load_corpus, side_effects as measure, write_side_effects
    from ..fit import load_model

    if corpus != "wikitext" and not os.path.isfile(corpus):
        raise ITIError(f"--corpus {corpus}: no such file (give a raw text file, or 'wikitext' for the hub split)")
    if not os.path.isfile(directions):
        raise ITIError(f"{directions}: directions file not found")
    out = result_file
    if out:
        check_output_file(out)
    load_corpus(corpus, num_docs, corpus_seed, detokenized=False)  # enough paragraphs? before the model loads
    loaded, tokenizer = load_model(model, revision, dtype, device, not quiet, gguf_file=gguf_file,
                                   device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    result = measure(loaded, tokenizer, directions, alpha=file_alpha, heads=top_num_heads, corpus=corpus, num_docs=num_docs,
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
@cli_options("report_out", "title", "no_plots")
def report(results, report_out, title, no_plots):
    """Leaderboard markdown (model x method; MC1 MC2 MC3 binary True Info True*Info CE KL) and PNG plots."""
    from ..experiments.report import build_report

    check_output_dir(report_out)

    written = build_report(list(results), report_out, title=title, plots=not no_plots)
    click.echo(written["table"])
    click.echo(f"wrote {written['markdown']}, {written['json']}"
               + "".join(f", {p}" for p in written["plots"].values() if p))
