"""PNG figures of experiment rows (matplotlib object API, Agg; written atomically by ``lm_eval_iti.plots``).

Rows are the dicts of ``results.json``'s ``rows``: ``α``, ``K``, ``method`` and ``metrics`` ({column: {"mean",
"stderr"}}). A figure whose metrics no row has is not drawn (its absence is reported, never an empty or zero plot).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..plots import new_figure, save_figure
from .baselines import curve_point

ALPHA_METRICS = ("MC1", "MC2", "MC3", "binary", "True", "Info", "True*Info", "True&Info")


def _value(row: dict, column: str):
    cell = (row.get("metrics") or {}).get(column) or {}
    return cell.get("mean"), cell.get("stderr")


def _present(rows: list[dict], columns) -> list[str]:
    return [c for c in columns if any(_value(r, c)[0] is not None for r in rows)]


def _lines_by_k(rows: list[dict], column: str) -> dict:
    """{K: [(alpha, mean, stderr)]}; the alpha-0 rows (no edit, no K) start every line."""
    ks = sorted({r["K"] for r in rows if r.get("K") is not None})
    zero = [r for r in rows if not r.get("α")]
    lines = {}
    for k in ks:
        points = [(0.0, *_value(r, column)) for r in zero[:1]]
        points += [(float(r["α"]), *_value(r, column)) for r in rows if r.get("K") == k and r.get("α")]
        points = sorted(p for p in points if p[1] is not None)
        if points:
            lines[k] = points
    return lines


def _grid(n: int):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    return rows, cols


def _style_alpha_axis(ax) -> None:
    ax.set_xlabel("α")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save_panels(fig, title: str, path: str | os.PathLike) -> Path:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def metric_vs_alpha(rows: list[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """Each metric against alpha, one line per K (error bars: stderr where lm-eval gave one)."""
    columns = _present(rows, ALPHA_METRICS)
    if not columns:
        return None
    nr, nc = _grid(len(columns))
    fig = new_figure(4.0 * nc, 3.0 * nr)
    for i, column in enumerate(columns):
        ax = fig.add_subplot(nr, nc, i + 1)
        for k, points in _lines_by_k(rows, column).items():
            xs, ys, es = zip(*points)
            errors = [e if e is not None else 0.0 for e in es] if any(e is not None for e in es) else None
            ax.errorbar(xs, ys, yerr=errors, marker="o", markersize=3, capsize=2, label=f"K={k}")
        ax.set_title(column, fontsize=9)
        _style_alpha_axis(ax)
    return _save_panels(fig, title, path)


def truth_vs_info(rows: list[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """True against Info, one point per row, labelled with alpha and K (the trade-off as strength grows)."""
    points = [(r, *_value(r, "Info")[:1], _value(r, "True")[0]) for r in rows]
    points = [(r, x, y) for r, x, y in points if x is not None and y is not None]
    if not points:
        return None
    fig = new_figure(5.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for k in sorted({r.get("K") for r, _, _ in points}, key=lambda v: -1 if v is None else v):
        sel = [(x, y, r) for r, x, y in points if r.get("K") == k]
        ax.plot([x for x, _, _ in sel], [y for _, y, _ in sel], "o-" if k is not None else "s",
                label="α=0" if k is None else f"K={k}")
        for x, y, r in sel:
            ax.annotate(f"α={r.get('α') or 0:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("Info")
    ax.set_ylabel("True")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "truthfulness vs informativeness", fontsize=9)
    return save_figure(fig, path)


def ce_kl_vs_alpha(rows: list[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """CE and KL(base || steered) against alpha, one line per K."""
    columns = _present(rows, ("CE", "KL"))
    if not columns:
        return None
    fig = new_figure(4.0 * len(columns), 3.0)
    for i, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        for k, points in _lines_by_k(rows, column).items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=f"K={k}")
        ax.set_title(column + (" (nats/token)" if column == "KL" else " (nats/token, steered)"), fontsize=9)
        _style_alpha_axis(ax)
    return _save_panels(fig, title, path)


def leaderboard_bars(rows: list[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """One panel per metric, one bar per row (model / method), error bars where a stderr exists."""
    columns = _present(rows, ALPHA_METRICS + ("CE", "KL"))
    if not columns:
        return None
    nr, nc = _grid(len(columns))
    fig = new_figure(4.0 * nc, 0.35 * len(rows) * nr + 1.5 * nr)
    labels = [f"{r.get('method', '')}" + (f" [{Path(str(r.get('model', ''))).name}]" if r.get("model") else "")
              for r in rows]
    for i, column in enumerate(columns):
        ax = fig.add_subplot(nr, nc, i + 1)
        values = [_value(r, column) for r in rows]
        ys = list(range(len(rows)))
        ax.barh(ys, [v if v is not None else 0.0 for v, _ in values],
                xerr=[e if e is not None else 0.0 for _, e in values],
                color=["C0" if v is not None else "none" for v, _ in values])
        ax.set_yticks(ys)
        ax.set_yticklabels(labels if i % nc == 0 else [""] * len(rows), fontsize=6)
        ax.invert_yaxis()
        ax.set_title(column, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def sweep_plots(rows: list[dict], out_dir: str | os.PathLike, title: str = "") -> dict[str, str | None]:
    out = Path(out_dir)
    written = {
        "metric_vs_alpha": metric_vs_alpha(rows, out / "metric_vs_alpha.png", title),
        "truth_vs_info": truth_vs_info(rows, out / "truth_vs_info.png", title),
        "ce_kl_vs_alpha": ce_kl_vs_alpha(rows, out / "ce_kl_vs_alpha.png", title),
    }
    return {k: (str(v) if v is not None else None) for k, v in written.items()}


def kl_budget_curve(choice: dict, path: str | os.PathLike, title: str = "") -> Path:
    """KL(base || steered) against alpha as measured by ``alpha auto``, with the budget and the chosen alpha."""
    fig = new_figure(5.0, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = [m["alpha"] for m in choice["measured"]]
    ax.plot(xs, [m["kl"] for m in choice["measured"]], marker="o", markersize=3, label="KL, held-out WikiText")
    ax.axhline(choice["kl_budget"], color="C3", linestyle="--", linewidth=1, label=f"budget {choice['kl_budget']:g}")
    ax.axvline(choice["alpha"], color="C2", linestyle=":", linewidth=1, label=f"chosen α={choice['alpha']:g}")
    ax.set_ylabel("KL (nats/token)")
    _style_alpha_axis(ax)
    ax.set_title(title or "alpha by side-effect budget", fontsize=9)
    return save_figure(fig, path)


PARETO_MARKERS = {"iti": ("*", "C3"), "random-matched": ("o", "C0"), "random-matched-kl": ("^", "C1"),
                  "random-heads": ("s", "C2"), "probe-weights": ("D", "C4"), "random-directions": ("v", "C5"),
                  "no-instruction": ("x", "C7"), "label-shuffled": ("P", "C6"), "style": ("h", "C9")}


def _gain_points(results: dict, column: str) -> list[tuple[str, str, float, float]]:
    """(group, label, KL, gain over the baseline row) of every row with both numbers, curve rows left out."""
    from .aggregate import draw_group

    rows = {r["variant"]: r for r in results["rows"]}
    base = _value(rows.get("baseline", {}), column)[0]
    if base is None:
        return []
    points = []
    for name, row in rows.items():
        value, kl = _value(row, column)[0], _value(row, "KL")[0]
        if name == "baseline" or value is None or kl is None or curve_point(name):
            continue
        points.append((draw_group(name) or name, row["method"], kl, value - base))
    return points


def _gain_curves(results: dict, column: str) -> dict[str, list[tuple[float, float]]]:
    """Per row that has curve rows: (KL, gain) from the baseline (0, 0) through the row's alpha scales in order."""
    rows = {r["variant"]: r for r in results["rows"]}
    base = _value(rows.get("baseline", {}), column)[0]
    scaled: dict[str, list[tuple[float, str]]] = {}
    for name in rows:
        point = curve_point(name)
        if point and point[0] in rows:
            scaled.setdefault(point[0], [(1.0, point[0])]).append((point[1], name))
    curves = {}
    for origin, members in scaled.items():
        line = [(0.0, 0.0)]
        for _, name in sorted(members):
            value, kl = _value(rows[name], column)[0], _value(rows[name], "KL")[0]
            if base is not None and value is not None and kl is not None:
                line.append((kl, value - base))
        if len(line) > 2:
            curves[origin] = line
    return curves


def pareto(results: dict, path: str | os.PathLike, columns=("MC1", "MC2"), title: str = "") -> Path | None:
    """MC gain over the unedited baseline against KL(base || steered), one panel per column for the held-out rows of a
    validate run (ITI and every control; draws of a random control as small markers, their mean as a large one), and,
    when alpha and K were chosen by nested selection, one panel of the selection grid itself (inner folds: gain of
    each scored (alpha, K) over the inner folds' unedited score, one line per K, the KL budget dashed). Rows run at
    several alphas (``--curve-scales``) are joined into a curve from the baseline through their scales."""
    from .aggregate import draw_group

    panels = [c for c in columns if _gain_points(results, c)]
    selections = [f["selection"] for f in results.get("folds", {}).get("iti", []) if f.get("selection")]
    with_grid = [s for s in selections if s.get("unedited") and any(g.get("kl_mean") is not None for g in s["grid"])]
    if not panels and not with_grid:
        return None
    count = len(panels) + (1 if with_grid else 0)
    fig = new_figure(4.2 * count, 3.6)
    for i, column in enumerate(panels):
        ax = fig.add_subplot(1, count, i + 1)
        points = _gain_points(results, column)
        for group in dict.fromkeys(p[0] for p in points):
            marker, colour = PARETO_MARKERS.get(group, ("o", "C8"))
            members = [p for p in points if p[0] == group]
            draws = len(members) > 1
            xs, ys = [p[2] for p in members], [p[3] for p in members]
            label = members[0][1].split(" (draw")[0] + (f" ({len(members)} draws, mean)" if draws else "")
            if draws:
                ax.scatter(xs, ys, marker=marker, color=colour, alpha=0.35, s=14)
                ax.scatter([sum(xs) / len(xs)], [sum(ys) / len(ys)], marker=marker, color=colour, s=60,
                           edgecolor="black", label=label)
            else:
                ax.scatter(xs, ys, marker=marker, color=colour, s=90 if group == "iti" else 50, label=label)
        for origin, line in _gain_curves(results, column).items():  # the row at each of its alpha scales
            marker, colour = PARETO_MARKERS.get(draw_group(origin) or origin, ("o", "C8"))
            ax.plot([p[0] for p in line], [p[1] for p in line], color=colour, linewidth=1, alpha=0.8,
                    marker=marker, markersize=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("KL(base‖steered), nats/token (WikiText)")
        ax.set_ylabel(f"{column} − baseline {column}")
        ax.set_title(f"held-out folds: {column}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    if with_grid:
        ax = fig.add_subplot(1, count, count)
        for f, selection in enumerate(with_grid):
            for j, k in enumerate(sorted({g["num_heads"] for g in selection["grid"]})):
                grid = sorted((g for g in selection["grid"] if g["num_heads"] == k and g["mean"] is not None),
                              key=lambda g: g["alpha"])
                if not grid:
                    continue
                base = selection["unedited"]["mean"]
                ax.plot([0.0] + [g["kl_mean"] for g in grid], [0.0] + [g["mean"] - base for g in grid],
                        marker="o", markersize=3, color=f"C{j}", linestyle="-" if f == 0 else "--",
                        label=f"outer fold {selection['fold']}, K={k}")
            if selection.get("kl_budget"):
                ax.axvline(selection["kl_budget"], color="C3", linestyle=":", linewidth=1)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("KL(base‖steered), nats/token (WikiText)")
        ax.set_ylabel(f"inner-fold {with_grid[0]['by']} − unedited")
        ax.set_title("ITI selection grid (training folds only)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save_panels(fig, title, path)
