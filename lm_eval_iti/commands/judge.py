"""``lm-eval-iti judge SAMPLES --out FILE``: judge the generations of an lm-eval samples file offline, after checking
the judges on human-labelled TruthfulQA answers (``--no-judge-check`` skips that, and the report records it).
``lm-eval-iti judge --check``: only check the configured judges."""

from __future__ import annotations

import click

from ..options import cli_options

# the judge settings: each option's name is its metadata key of lm_eval_iti.judges.config (same as --metadata, same
# environment fallback); None leaves it to the environment or the default
JUDGE_SETTINGS = (
    "judge", "truth_judge", "info_judge", "judge_model", "truth_judge_revision", "info_judge_revision",
    "judge_base_url", "truth_judge_base_url", "info_judge_base_url", "judge_api_key_env", "judge_cache",
    "judge_concurrency", "judge_timeout", "judge_retries", "judge_backoff", "judge_batch_size", "judge_device",
    "judge_dtype")
CHECK_SETTINGS = ("judge_check_examples", "judge_check_data", "judge_check_min_accuracy", "judge_check_seed")


@click.command()
@click.argument("samples", type=click.Path(), required=False)
@cli_options("judge_out", "judge_samples_out", "filter_name", *JUDGE_SETTINGS, "no_judge_check", "check_only",
             *CHECK_SETTINGS, "judge_check_allow_fail")
def judge(samples, judge_out, judge_samples_out, filter_name, no_judge_check, check_only, judge_check_allow_fail,
          **settings):
    """Judge the generations of SAMPLES (an lm-eval samples_truthfulqa_iti_gen_*.jsonl, or a folder holding one)
    with the truth and info judges, and write True, Info, True*Info, True-and-Info and judge_failures to --out.
    First each judge scores human-labelled answers (stopping when one is below its threshold); with --check and no
    SAMPLES, only that."""
    from ..atomic import write_json_atomic
    from ..errors import ITIError
    from ..judges.config import from_sources
    from ..judges.offline import finite_check, judge_samples_file

    out, samples_out, check = judge_out, judge_samples_out, check_only
    metadata = {k: v for k, v in settings.items() if v is not None}
    if no_judge_check:
        metadata["judge_check"] = False
    if judge_check_allow_fail:
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
