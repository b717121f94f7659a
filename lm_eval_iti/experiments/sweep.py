"""``sweep``: validate over a grid alpha x K, with one fit per fold (the largest K) reused by every grid point.

The activations come from the cache after the first fit and the probes are fitted once per fold: a K-head point
uses the top-K heads of that fit (head selection, direction and sigma of a head do not depend on K), so only
evaluation repeats per grid point. alpha = 0 is evaluated once (no edit, whatever K) and starts every K's line.
Writes what validate writes plus ``metric_vs_alpha.png``, ``truth_vs_info.png`` (with judge metrics) and
``ce_kl_vs_alpha.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import ITIError
from .baselines import sweep_variants
from .plots import sweep_plots
from .runner import Experiment, ExperimentConfig


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


def sweep(config: ExperimentConfig, out: str | os.PathLike, alphas: list[float], num_heads: list[int], *,
          method: str = "mass-mean", instruction: str = "default", mc_positions: str = "answer",
          gen_positions: str = "last") -> dict:
    variants = sweep_variants(list(alphas), list(num_heads), method=method, instruction=instruction,
                              mc_positions=mc_positions, gen_positions=gen_positions)
    results = Experiment(config, variants, out, kind="sweep").run()
    title = f"{Path(str(config.model)).name}: {config.num_folds}-fold mean"
    results["plots"] = sweep_plots(results["rows"], out, title)
    results["grid"] = {"alphas": list(alphas), "num_heads": list(num_heads),
                       "fits_per_fold": 1, "fit_num_heads": max(num_heads)}
    write_json_atomic(Path(out) / "results.json", results)
    return results
