"""``sweep``: validate over a grid alpha x K, with one fit per fold (the largest K) reused by every grid point.

The activations come from the cache after the first fit and the probes are fitted once per fold: a K-head point
uses the top-K heads of that fit (head selection, direction and sigma of a head do not depend on K), so only
evaluation repeats per grid point. alpha = 0 is evaluated once (no edit, whatever K) and starts every K's line.
Writes what validate writes (``per_question.csv`` and ``per_question_choices.jsonl`` included, one row per grid point)
plus ``metric_vs_alpha.png``, ``truth_vs_info.png`` (with judge metrics) and
``ce_kl_vs_alpha.png``. For loglikelihood tasks the grid is scored by the shared-prefix engine (every point of a
fold in one pass, ``harness.engine``) and the best point is then scored again by lm-eval itself (docs/sweeps.md).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..options import default_of
from ..atomic import write_json_atomic
from ..errors import ITIError
from .baselines import SELECT_COLUMNS, sweep_variants
from .plots import sweep_plots
from .executor import execute
from .plan import ExperimentConfig, make_plan
from .session import ModelSession


def parse_list(text: str, kind=float, option: str = "--alphas") -> list:
    try:
        values = [kind(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ITIError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0,5,10") from None
    if not values:
        raise ITIError(f"{option}: give at least one value")
    if len(set(values)) != len(values):
        raise ITIError(f"{option} {text!r}: a value is repeated")
    return values


SELECT_DEFAULT_ORDER = ("MC2", "MC1", "MC3", "binary")


def best_row(rows: list[dict], select_by: str = "auto") -> tuple[str, dict] | None:
    """(column, row) of the grid row with the highest fold-mean ``select_by`` (auto: the first of MC2, MC1, MC3,
    binary that the rows have); None when no row has it."""
    order = SELECT_DEFAULT_ORDER if select_by == "auto" else (select_by,)
    for column in order:
        scored = [r for r in rows if (r["metrics"].get(column) or {}).get("mean") is not None]
        if scored:
            return column, max(scored, key=lambda r: r["metrics"][column]["mean"])
    return None


def sweep(config: ExperimentConfig, out: str | os.PathLike, alphas: list[float], num_heads: list[int], *,
          method: str = default_of("method"), instruction: str = default_of("instruction"),
          mc_positions: str = default_of("mc_positions"), gen_positions: str = default_of("gen_positions"),
          select_by: str | None = default_of("rescore_by"), head_selection: str = default_of("head_selection"),
          effect_questions: int = default_of("effect_questions"),
          effect_check_heads: int = default_of("effect_check_heads")) -> dict:
    """The grid; where the engine scored it, the best row by ``select_by`` is then scored again by lm-eval's hf-iti
    (row ``<name>-lm-eval``) so that the chosen setting's published numbers are lm-eval's own. The choice is read off
    the evaluated folds themselves: a reading of the sweep, not a held-out estimate (``validate`` is)."""
    if select_by not in (None, "none", "auto", *SELECT_COLUMNS):
        raise ITIError(f"--select-by {select_by!r} is not one of auto, none, {', '.join(SELECT_COLUMNS)}")
    variants = sweep_variants(list(alphas), list(num_heads), method=method, instruction=instruction,
                              mc_positions=mc_positions, gen_positions=gen_positions, head_selection=head_selection,
                              effect_questions=effect_questions, effect_check_heads=effect_check_heads)
    session = ModelSession(config)  # the confirming pass below reuses the model and the fits
    results = execute(make_plan(config, variants, out, kind="sweep"), session)
    grid_rows = results["rows"]
    selection = None
    chosen = best_row(grid_rows, select_by) if select_by not in (None, "none") else None
    if chosen is not None:
        column, row = chosen
        selection = {"by": column, "variant": row["variant"], "mean": row["metrics"][column]["mean"],
                     "scored_by": row.get("scored_by"), "lm_eval_variant": None,
                     "note": "chosen on the evaluated folds: a reading of the sweep, not a held-out estimate"}
        if "engine" in (row.get("scored_by") or ""):
            picked = next(v for v in variants if v.name == row["variant"])
            confirm = replace(picked, name=f"{picked.name}-lm-eval", label=f"{picked.label} (selected; lm-eval)",
                              extra=dict(picked.extra, lm_eval=True))
            resumed = results["resumed_from_disk"]
            results = execute(make_plan(config, variants + [confirm], out, kind="sweep"), session)
            # the grid rows this second pass found on disk were written by the first
            results["resumed_from_disk"] = resumed + [name for name in results["resumed_from_disk"]
                                                      if name.endswith(f"_{confirm.name}.json")]
            lm_eval_row = next(r for r in results["rows"] if r["variant"] == confirm.name)
            selection.update(lm_eval_variant=confirm.name, lm_eval_mean=lm_eval_row["metrics"][column]["mean"])
    title = f"{Path(str(config.model)).name}: {config.num_folds}-fold mean"
    results["plots"] = sweep_plots([r for r in results["rows"] if not r["variant"].endswith("-lm-eval")], out, title)
    results["grid"] = {"alphas": list(alphas), "num_heads": list(num_heads),
                       "fits_per_fold": 1, "fit_num_heads": max(num_heads)}
    results["selection"] = selection
    write_json_atomic(Path(out) / "results.json", results)
    return results
