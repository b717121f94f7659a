"""``lm-eval-iti judge SAMPLES --out FILE``: judge the generations of an lm-eval samples file offline, after checking
the judges on human-labelled TruthfulQA answers (``--no-judge-check`` skips that, and the report records it).
``lm-eval-iti judge --check``: only check the configured judges."""

from __future__ import annotations

import click

from ..cli_types import Count, Real

from ..judges.config import BACKENDS, DEFAULT_CHECK_EXAMPLES

JUDGE_CHOICES = tuple(b for b in BACKENDS if b != "none")  # "none" (no judge) makes no sense for this command

# option name -> metadata key of lm_eval_iti.judges.config (same names as --metadata, same env fallback)
_OPTIONS = {
    "backend": "judge", "truth_judge": "truth_judge", "info_judge": "info_judge", "judge_model": "judge_model",
    "truth_revision": "truth_judge_revision", "info_revision": "info_judge_revision",
    "base_url": "judge_base_url", "truth_base_url": "truth_judge_base_url", "info_base_url": "info_judge_base_url",
    "api_key_env": "judge_api_key_env", "cache": "judge_cache",
    "concurrency": "judge_concurrency", "timeout": "judge_timeout", "retries": "judge_retries",
    "backoff": "judge_backoff", "batch_size": "judge_batch_size", "device": "judge_device", "dtype": "judge_dtype",
    "check_examples": "judge_check_examples", "check_data": "judge_check_data",
    "check_min_accuracy": "judge_check_min_accuracy", "check_seed": "judge_check_seed",
}


@click.command()
@click.argument("samples", type=click.Path(), required=False)
@click.option("--out", type=click.Path(), default=None,
              help="Report JSON (metrics, judge ids, request counts); required with SAMPLES.")
@click.option("--samples-out", type=click.Path(), default=None, help="Per-answer judgments as JSON lines.")
@click.option("--filter", "filter_name", default=None, help="lm-eval filter to judge when the file has several.")
@click.option("--judge", "backend", type=click.Choice(JUDGE_CHOICES), default=None,
              help="Backend (default: $LM_EVAL_ITI_JUDGE).")
@click.option("--truth-judge", default=None, help="Truth judge: served model name, or hf id/path.")
@click.option("--info-judge", default=None, help="Info judge: served model name, or hf id/path.")
@click.option("--judge-model", default=None, help="One model for both judges (typical for chat).")
@click.option("--truth-revision", default=None, help="Truth judge revision (hf) or label (API).")
@click.option("--info-revision", default=None, help="Info judge revision (hf) or label (API).")
@click.option("--base-url", default=None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1.")
@click.option("--truth-base-url", default=None, help="The truth judge's own server (default --base-url).")
@click.option("--info-base-url", default=None, help="The info judge's own server (default --base-url).")
@click.option("--api-key-env", default=None, help="NAME of the variable holding the API key (OPENAI_API_KEY).")
@click.option("--cache", default=None, help="SQLite judgment cache, or 'off'.")
@click.option("--concurrency", default=None, type=Count(1), help="Parallel API requests (8).")
@click.option("--timeout", default=None, type=Real(minimum=0), help="Seconds per API request (60).")
@click.option("--retries", default=None, type=Count(0), help="Retries per request (6).")
@click.option("--backoff", default=None, type=Real(minimum=0, inclusive_minimum=True), help="First backoff in seconds, doubled per retry (1).")
@click.option("--batch-size", default=None, type=Count(1), help="hf: prompts per forward (8).")
@click.option("--device", default=None, help="hf: device (cuda if available, else cpu).")
@click.option("--dtype", default=None, help="hf: auto, float32, float16 or bfloat16.")
@click.option("--no-judge-check", "--no-check", "no_check", is_flag=True,
              help="Skip the checks before judging (endpoint/model, and the judges' accuracy on human-labelled "
                   "answers); the report records that the check was skipped.")
@click.option("--check", "check", is_flag=True,
              help=f"Without SAMPLES: only check the judges on human-labelled TruthfulQA answers (accuracy, usable "
                   f"share, AUC; {DEFAULT_CHECK_EXAMPLES} per judge unless --check-examples). With SAMPLES the check "
                   f"runs anyway.")
@click.option("--check-examples", default=None, type=Count(2),
              help=f"Labelled answers per judge for the check, half positive (even; {DEFAULT_CHECK_EXAMPLES}).")
@click.option("--check-data", default=None, help="TruthfulQA's eval_examples.csv or its folder (default: download).")
@click.option("--check-min-accuracy", default=None, type=Real(minimum=0, maximum=1.0000001), help="A judge below it fails the check (0.7).")
@click.option("--check-allow-fail", is_flag=True, help="A failed check warns instead of stopping.")
@click.option("--check-seed", default=None, type=Count(0), help="Which labelled answers are drawn (0).")
def judge(samples, out, samples_out, filter_name, no_check, check, check_allow_fail, **options):
    """Judge the generations of SAMPLES (an lm-eval samples_truthfulqa_iti_gen_*.jsonl, or a folder holding one)
    with the truth and info judges, and write True, Info, True*Info, True-and-Info and judge_failures to --out.
    First each judge scores human-labelled answers (stopping when one is below its threshold); with --check and no
    SAMPLES, only that."""
    from ..atomic import write_json_atomic
    from ..errors import ITIError
    from ..judges.config import from_sources
    from ..judges.offline import finite_check, judge_samples_file

    metadata = {_OPTIONS[k]: v for k, v in options.items() if v is not None}
    if no_check:
        metadata["judge_check"] = False
    if check_allow_fail:
        metadata["judge_check_allow_fail"] = True
    cfg = from_sources(metadata)
    if samples is None:
        if not check:
            raise ITIError("judge: pass SAMPLES (an lm-eval samples file or folder) and --out, or --check")
        if not cfg.enabled:
            raise ITIError("no judge configured: pass --judge openai|hf|chat (or set LM_EVAL_ITI_JUDGE)")
        if not cfg.check:
            raise ITIError("judge: --check and --no-judge-check contradict each other")
        from ..judges.check import check_judges
        from ..judges.judging import validate

        validate(cfg)
        report = check_judges(cfg, progress=True)
        for kind in ("truth", "info"):
            r = report[kind]
            click.echo(f"{kind} judge {cfg.judge_for(kind)[0]!r}: accuracy {r['accuracy']:.4f}  usable "
                       f"{r['usable']:.0%}  AUC {r['auc']:.4f}  ({r['positives']} + {r['negatives']} answers: "
                       f"{r['failures']} failures, {r['undecided']} undecided)")
        click.echo(f"judge check {'passed' if report['passed'] else 'FAILED'} (thresholds: accuracy "
                   f"{cfg.check_min_accuracy:g}, usable {report['min_usable']:.0%}; chance 0.5)"
                   f"{' -> ' + out if out else ''}")
        if out:
            write_json_atomic(out, {"judge_check": finite_check(report), "judge": cfg.record()})
        return
    if out is None:
        raise ITIError("judge: --out FILE is required with SAMPLES")
    report = judge_samples_file(samples, cfg, out, samples_out=samples_out, filter_name=filter_name)
    m = report["metrics"]
    shown = "  ".join(f"{k} {'n/a' if m[k] is None else format(m[k], '.4f')}"
                      for k in ("truth", "info", "truth_info", "truth_and_info"))
    click.echo(f"{shown}  judge_failures {m['judge_failures']}  judge_undecided {m['judge_undecided']}  "
               f"({report['answers']} answers) -> {out}")
    if m["judge_failures"]:
        click.echo(f"warning: {m['judge_failures']} judgment(s) unusable, left out of the means", err=True)
