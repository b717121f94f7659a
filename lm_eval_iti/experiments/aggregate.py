"""From per-fold numbers to table rows (pure functions, no model).

Over folds every metric is the mean of the per-fold means; its stderr, where lm-eval gave one per fold, is
sqrt(sum of squared per-fold stderrs) / folds (the stderr of a mean of independent fold means).
True*Info is the product of the fold-averaged True and Info (a product of means, as ITI reports it), both over the
answers that have both judgments (judges.folds.true_times_info: never means over different sets of questions);
True&Info is the mean of the per-fold shares of answers judged both true and informative (the per-answer rate).
A metric that no fold has (e.g. True/Info without a judge) stays None and prints blank, never 0. A mean over fewer
folds than the row has, or a judge mean over fewer answers than were generated, is marked in the table
(``partial``, e.g. "0.512 (1 of 2 folds)").
"""

from __future__ import annotations

import math
import re

from ..errors import ITIError
from ..judges.folds import JUDGE_COLUMNS, true_times_info, unjudged_note
from .baselines import DRAW_FAMILIES

# (column, task, metric) of the leaderboard; True*Info is derived, CE/KL come from the side-effect measurement
TASK_COLUMNS = (
    ("MC1", "truthfulqa_iti_mc1", "acc"),
    ("MC2", "truthfulqa_iti_mc2", "acc"),
    ("MC3", "truthfulqa_iti_mc3", "acc"),
    ("binary", "truthfulqa_iti_binary", "acc"),
    ("True", "truthfulqa_iti_gen", "truth"),
    ("Info", "truthfulqa_iti_gen", "info"),
    ("True&Info", "truthfulqa_iti_gen", "truth_and_info"),
)
COLUMNS = ("MC1", "MC2", "MC3", "binary", "True", "Info", "True*Info", "True&Info", "CE", "KL")
DECIMALS = {"KL": 4}
_DRAW = re.compile(r" \(draw \d+\)$")
# the columns that say what defines a row (summary.summarise fills them; blank where an input lacks one)
LEAD = ("model", "method", "α", "K", "instruction", "mc/gen", "judge", "data", "N")
# gen-task figures kept beside the columns: the judges' counts (sums over folds) and their checks on human labels
JUDGE_COUNTS = ("judge_failures", "judge_undecided")
JUDGE_CHECKS = ("judge_check_truth_acc", "judge_check_truth_auc", "judge_check_info_acc", "judge_check_info_auc")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mean_with_stderr(values: list[float | None], stderrs: list[float | None]) -> dict:
    """Mean over the folds that have the metric; stderr only when every such fold has one."""
    present = [(v, s) for v, s in zip(values, stderrs) if v is not None]
    if not present:
        return {"mean": None, "stderr": None, "folds": 0}
    mean = _mean([v for v, _ in present])
    errs = [s for _, s in present]
    stderr = math.sqrt(sum(s * s for s in errs)) / len(errs) if all(s is not None for s in errs) else None
    return {"mean": mean, "stderr": stderr, "folds": len(present)}


def fold_columns(fold: dict) -> dict[str, tuple[float | None, float | None]]:
    """One fold result -> {column: (value, stderr)} (True*Info per fold is informational only)."""
    metrics = fold.get("metrics") or {}
    out = {}
    for column, task, metric in TASK_COLUMNS:
        m = metrics.get(task) or {}
        out[column] = (m.get(metric), m.get(f"{metric}_stderr"))
    side = fold.get("side_effects") or {}
    out["CE"] = (side.get("ce_steered"), None)
    out["KL"] = (side.get("kl"), None)
    t, i = out["True"][0], out["Info"][0]
    out["True*Info"] = (t * i if t is not None and i is not None else None, None)
    return out


def aggregate_variant(folds: list[dict]) -> dict[str, dict]:
    """{column: {"mean", "stderr", "folds", "per_fold"}} over the given fold results of one variant."""
    per_fold = [fold_columns(f) for f in folds]
    out = {}
    for column in COLUMNS:
        if column == "True*Info":
            continue
        values = [p[column][0] for p in per_fold]
        stderrs = [p[column][1] for p in per_fold]
        out[column] = dict(mean_with_stderr(values, stderrs), per_fold=values)
    out["True*Info"] = true_times_info(folds)
    mark_partial(out, folds)
    out.update(judge_figures(folds))
    return out


def judge_figures(folds: list[dict]) -> dict[str, dict]:
    """The gen task's judge counts ({"sum", "per_fold"}: failures, undecided) and judge-check figures ({"mean",
    "per_fold"}: each judge's accuracy and AUC on human-labelled answers) that any fold has."""
    gen = [((f.get("metrics") or {}).get("truthfulqa_iti_gen") or {}) for f in folds]
    out = {}
    for name in JUDGE_COUNTS + JUDGE_CHECKS:  # a NaN (an outage, no check run) counts as absent
        gen = [dict(g, **{name: None}) if isinstance(g.get(name), float) and math.isnan(g[name]) else g for g in gen]
    for name in JUDGE_COUNTS:
        values = [g.get(name) for g in gen]
        if any(v is not None for v in values):
            out[name] = {"sum": sum(v for v in values if v is not None), "per_fold": values}
    for name in JUDGE_CHECKS:
        values = [g.get(name) for g in gen]
        present = [v for v in values if v is not None]
        if present:
            out[name] = {"mean": sum(present) / len(present), "per_fold": values}
    return out


def judge_note(rows: list[dict]) -> str:
    """One line per row with judge counts or checks: undecided and failed judgments, the judges' check figures."""
    lines = []
    for row in rows:
        metrics = row.get("metrics") or {}
        parts = [f"{name.replace('judge_', '')} {metrics[name]['sum']:g}" for name in JUDGE_COUNTS if name in metrics]
        parts += [f"{name.replace('judge_check_', 'check ')} {metrics[name]['mean']:.3f}" for name in JUDGE_CHECKS
                  if name in metrics]
        if parts:
            lines.append(f"- {row.get('method')}: " + ", ".join(parts))
    return ("\nJudgments (undecided and failed: counts over folds; check: the judges on human-labelled answers):\n"
            + "\n".join(lines) + "\n") if lines else ""


def mark_partial(out: dict[str, dict], folds: list[dict]) -> None:
    """Give each cell whose mean covers fewer folds, or (judge columns) fewer answers, than the row a ``partial``
    note, which the table prints beside the number."""
    for column, cell in out.items():
        if cell.get("mean") is None:
            continue
        notes = [f"{cell['folds']} of {len(folds)} folds"] if cell.get("folds", len(folds)) < len(folds) else []
        if column in JUDGE_COLUMNS:
            notes += [n for n in [unjudged_note(folds, column)] if n]
        if notes:
            cell["partial"] = "; ".join(notes)


def format_cell(column: str, cell: dict | None) -> str:
    if not cell or cell.get("mean") is None:
        return ""
    digits = DECIMALS.get(column, 3)
    text = f"{cell['mean']:.{digits}f}"
    if cell.get("stderr") is not None:
        text += f" ± {cell['stderr']:.{digits}f}"
    if cell.get("partial"):  # a mean over fewer folds or answers than the row has
        text += f" ({cell['partial']})"
    return text


# scores and side effects the model computes: a NaN or inf there is a broken run, never a number to show (a judge
# column may be missing after an outage, which mark_partial says)
MODEL_COLUMNS = ("MC1", "MC2", "MC3", "binary", "CE", "KL")


def check_finite(rows: list[dict]) -> None:
    """One line naming the row and column of the first NaN or infinite model score."""
    for row in rows:
        for column in MODEL_COLUMNS:
            cell = (row.get("metrics") or {}).get(column)
            value = cell.get("mean") if isinstance(cell, dict) else cell
            if isinstance(value, (int, float)) and not math.isfinite(value):
                name = row.get("variant") or row.get("method") or "a row"
                raise ITIError(f"{name}: {column} is {value} (NaN or infinite): the run that produced it is broken; "
                               "refusing to put it in a table")


def markdown_table(rows: list[dict], lead: tuple[str, ...] = LEAD, columns: tuple[str, ...] = COLUMNS,
                   deltas: dict[str, dict[str, dict]] | None = None) -> str:
    """Rows: dicts with the ``lead`` keys (plain values) and ``metrics`` ({column: cell}). Columns that no row has
    are still printed (blank), so tables of different runs line up. ``deltas`` ({row key: {column: comparison}},
    the row key being ``variant``, else ``method``): a "Δ<column>" column per column that any row has a comparison
    in, "Δ [95% CI] p", † where it survives Holm."""
    check_finite(rows)
    deltas = deltas or {}
    delta_columns = [c for c in columns if any(c in d for d in deltas.values())]
    header = list(lead) + list(columns) + [f"Δ{c}" for c in delta_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = ["" if row.get(k) is None else _plain(row.get(k)) for k in lead]
        cells += [format_cell(c, (row.get("metrics") or {}).get(c)) for c in columns]
        mine = deltas.get(row.get("variant", row.get("method")), {})
        cells += [format_delta(mine.get(c)) for c in delta_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"


def format_delta(comparison: dict | None, digits: int = 3) -> str:
    """"+0.030 [+0.010, +0.050] p=0.003†": Δ, its 95% CI and p; † = survives Holm; blank without a comparison."""
    if not comparison:
        return ""
    low, high = comparison["ci"]
    p = format_p(comparison["p"])
    return (f"{_signed(comparison['delta'], digits)} [{_signed(low, digits)}, {_signed(high, digits)}] "
            f"p{'' if p.startswith('<') else '='}{p}{'†' if comparison.get('survives') else ''}")


def _signed(value: float, digits: int = 3) -> str:
    """"+0.030", "-0.012"; a value that rounds to 0 is "+0.000" (never "-0.000" from a rounding residue)."""
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text


def families_markdown(comparisons: list[dict]) -> str:
    """ITI against each family of draws: its gain and the draws' gains over the baseline, how many draws did as well,
    the rank p, and the paired Δ against the draws' per-question mean with its CI and p († = survives Holm)."""
    rows = [c for c in comparisons if c["kind"] == "draws"]
    if not rows:
        return ""
    header = ["row", "against", "draws", "metric", "gain", "draws' gain: mean ± sd [min, max]", "draws ≥ gain",
              "rank p", "Δ vs draws' mean [95% CI] p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for c in rows:
        spread = (f"{_signed(c['draw_gain_mean'])} ± {c['draw_gain_sd']:.3f} "
                  f"[{_signed(c['draw_gain_min'])}, {_signed(c['draw_gain_max'])}]")
        lines.append("| " + " | ".join([c["row"], c["reference"], str(c["draws"]), c["metric"], _signed(c["gain"]),
                                        spread, str(c["draws_at_or_above"]), format_p(c["rank_p"]),
                                        format_delta(c)]) + " |")
    return "\n".join(lines) + "\n"


def strata_markdown(gains: list[dict]) -> str:
    """ITI's gain over the baseline within each answer-style and answer-length stratum: n, Δ [95% CI] p."""
    if not gains:
        return ""
    header = ["split", "stratum", "metric", "n", "Δ [95% CI] p"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for g in gains:
        lines.append(f"| {g['split']} | {g['stratum']} | {g['metric']} | {g['n']} | {format_delta(g)} |")
    return "\n".join(lines) + "\n"


def _plain(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def positions_legend(rows: list[dict]) -> str:
    """The token semantics of each method, once per distinct method (hooked and baked edits differ)."""
    seen, lines = set(), []
    for row in rows:
        method = _DRAW.sub(" (every draw)", str(row.get("method")))  # a family's draws share one line
        key = (method, row.get("positions"))
        if key in seen or not row.get("positions"):
            continue
        seen.add(key)
        lines.append(f"- **{method}**: {row['positions']}")
    return "\n".join(lines) + ("\n" if lines else "")


def draw_group(variant: str) -> str | None:
    """The control family a row is one draw of ("random-matched-3" -> "random-matched"; baselines.DRAW_FAMILIES),
    or None."""
    head, _, tail = variant.rpartition("-")
    return head if head in DRAW_FAMILIES and tail.isdigit() else None


def summarise_draws(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> list[dict]:
    """One row per group of random draws: over the draws' (fold-averaged) values, the mean, the sample standard
    deviation ("spread") and the range; a draw that lacks a column leaves that column out of the summary."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        group = draw_group(str(row.get("variant", "")))
        if group is not None:
            groups.setdefault(group, []).append(row)
    out = []
    for group, members in groups.items():
        metrics = {}
        for column in columns:
            values = [((r.get("metrics") or {}).get(column) or {}).get("mean") for r in members]
            if not values or any(v is None for v in values):
                continue
            mean = sum(values) / len(values)
            spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
            metrics[column] = {"mean": mean, "spread": spread, "min": min(values), "max": max(values),
                               "draws": len(values)}
        out.append({"group": group, "draws": len(members), "variants": [r["variant"] for r in members],
                    "α": "/".join(str(r.get("α")) for r in members), "metrics": metrics})
    return out


def draws_markdown(summaries: list[dict], columns: tuple[str, ...] = ("MC1", "MC2", "MC3", "CE", "KL")) -> str:
    """The draw summaries as a table: mean ± spread (sample sd over draws) [min, max]."""
    if not summaries:
        return ""
    header = ["control", "draws"] + list(columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for s in summaries:
        cells = [s["group"], str(s["draws"])]
        for column in columns:
            cell = s["metrics"].get(column)
            if cell is None:
                cells.append("")
                continue
            digits = DECIMALS.get(column, 3)
            text = f"{cell['mean']:.{digits}f}"
            if cell["spread"] is not None:
                text += f" ± {cell['spread']:.{digits}f}"
            cells.append(text + f" [{cell['min']:.{digits}f}, {cell['max']:.{digits}f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
