"""A run's results from its fold results: the table rows (fold means), the paired comparisons against the
baseline and against each family of control draws, and the markdown table (``table_markdown``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import __version__
from . import aggregate as agg
from . import records
from .baselines import AUTO, SELECT, Variant, curve_point
from .plan import RESULTS_FORMAT, RESULTS_VERSION

if TYPE_CHECKING:  # annotations only
    from .plan import Plan
    from .session import ModelSession


def comparisons(plan: Plan, fold_results: dict[str, list[dict]], rows: list[dict]) -> dict:
    """results.json's ``comparisons`` (``comparisons.table_comparisons`` of the main table and, apart, of the
    curve table), from the per-question records, and ITI's gain by answer style and length (``strata_gains``)."""
    from . import comparisons as cmp
    from .answer_style import question_strata

    clock = time.perf_counter()
    scores = cmp.scores_from_lines(records.question_lines(fold_results))
    names = [r["variant"] for r in rows]
    curves = [n for n in names if curve_point(n)]
    found = cmp.table_comparisons(scores, [n for n in names if n not in curves], table="main")
    if curves:
        found += cmp.table_comparisons(scores, curves, table="curves")
    strata = question_strata(plan.data.mc_docs)
    gains = cmp.strata_gains(scores, strata)
    counts = {split: {s: list(strata[split].values()).count(s) for s in sorted(set(strata[split].values()))}
              for split in ("style", "length")}
    return {"comparisons": found, "strata_gains": gains,
            "comparison_settings": dict(cmp.settings(), seconds=round(time.perf_counter() - clock, 2),
                                        strata_questions=counts, median_words=strata["median_words"])}


def summarise(plan: Plan, session: ModelSession, fold_results: dict[str, list[dict]], resumed: list[str]) -> dict:
    """results.json's body: a row per variant (fold means with their spread), the fold results without their
    per-question data, the fits, the leak check and what this process computed."""
    c = plan.config
    rows, directions = [], []
    settings = plan.settings
    for v in plan.variants:
        folds = fold_results[v.name]
        alpha = v.alpha if v.alpha not in (AUTO, SELECT) else \
            f"{v.alpha}: " + "/".join(format(f["alpha_used"], "g") for f in folds)
        if v.extra.get("match_kl"):
            alpha = "KL-matched: " + "/".join(format(f["alpha_used"], ".3g") for f in folds)
        k = v.num_heads if v.alpha != SELECT else "select: " + "/".join(str(f["num_heads_used"]) for f in folds)
        metrics = agg.aggregate_variant(folds)
        rows.append({"model": c.model, "method": v.label, "α": alpha, "K": k, "variant": v.name,
                     "kind": v.kind, "positions": v.positions, "instruction": v.instruction,
                     **row_definition(v, folds, metrics, settings),
                     "scored_by": "/".join(sorted({f.get("scored_by", "lm-eval") for f in folds})) or None,
                     "metrics": metrics})
        for f in folds:
            if f.get("directions"):
                directions.append(dict(f["directions"], variant=v.name))
    fits = {}
    for d in directions:
        fits.setdefault((d["fold"], d["fit"]), {k: d[k] for k in ("fold", "fit", "path", "sha256",
                                                                    "train_question_ids_sha256",
                                                                    "num_train_questions", "forward_passes")})
    leak = [{"fold": f["fold"], "variant": v, **f["leak_check"]} for v, fs in fold_results.items() for f in fs]
    return {
        "format": RESULTS_FORMAT, "format_version": RESULTS_VERSION, "kind": plan.kind,
        "settings": dict(settings, data_source=plan.data.source, binary_data_used=plan.data.binary_data),
        "variants": [v.describe() for v in plan.variants],
        "rows": rows,
        # the per-question data stays in the fold files and per_question*.{csv,jsonl} (results["per_question"])
        "folds": {name: [records.without_records(f) for f in fs] for name, fs in fold_results.items()},
        "directions_files": sorted(fits.values(), key=lambda d: (d["fold"], d["fit"])),
        "fits_this_process": session.fits_run,
        "leak_check": {"overlap_total": sum(x["overlap"] or 0 for x in leak), "per_fold": leak},
        "side_effects_corpus": session.corpus_info,
        "resumed_from_disk": resumed,
        "evaluations_this_process": session.evaluations,
        "package_version": __version__, "lm_eval_version": _lm_eval_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def row_definition(variant: Variant, folds: list[dict], metrics: dict, settings: dict) -> dict:
    """The table's columns that say what defines a row besides method, alpha and K: the edited MC/gen positions, the
    judges (id@revision) where the row was judged, the data's sha256 (short) and how many questions it scored."""
    edits = {"hf": "none", "hf-iti": f"{variant.mc_positions}/{variant.gen_positions}"}.get(variant.kind, "every/every")
    judged = any((metrics.get(c) or {}).get("mean") is not None for c in ("True", "Info"))
    questions = sum(len(set().union(*(f.get("question_ids") or {}).values())) for f in folds if f.get("question_ids"))
    return {"mc/gen": edits, "judge": judge_label(settings.get("judge") or {}) if judged else None,
            "data": str(settings.get("data_sha256", ""))[:12] or None, "N": questions or None}


def judge_label(record: dict) -> str | None:
    """"truth-judge@rev" (one judge for both) or "truth: a@r; info: b@r" from a judge record (judges.config)."""
    if record.get("backend", "none") == "none":
        return None
    names = [(record.get(f"{k}_judge") or "?") + (f"@{record[f'{k}_revision']}" if record.get(f"{k}_revision") else "")
             for k in ("truth", "info")]
    return names[0] if names[0] == names[1] else f"truth: {names[0]}; info: {names[1]}"


def _lm_eval_version() -> str:
    try:
        from importlib.metadata import version

        return version("lm-eval")
    except Exception:  # not installed as a distribution
        return ""


def table_markdown(results: dict) -> str:
    """The run's table (rows = variants, Δ against the baseline with its CI and p), ITI against each family of
    control draws, ITI's gain by answer style and length, the curve rows, and the token semantics of each method."""
    rows = results["rows"]
    s = results["settings"]
    limit = f", limit {s['limit']}" if s.get("limit") else ""
    evaluated = sorted({f["fold"] for fs in results["folds"].values() for f in fs})
    only = f", evaluated on held-out fold {', '.join(map(str, evaluated))} only" if len(evaluated) < s["num_folds"] else ""
    head = (f"{results['kind']} of {s['model']}: {s['num_folds']} folds (seed {s['seed']}"
            f"{', contiguous' if s['contiguous_folds'] else ''}){only}, tasks {', '.join(s['tasks'])}{limit}\n\n")
    found = results.get("comparisons") or []
    main_found = [c for c in found if c.get("table") == "main"]
    curve_found = [c for c in found if c.get("table") == "curves"]
    draws = agg.draws_markdown(agg.summarise_draws(rows))
    if draws:
        draws = "\nRandom controls over their draws (mean ± sample sd [min, max]):\n\n" + draws
    families = agg.families_markdown(main_found)
    if families:
        families = ("\nITI against each family of control draws (gain = row − baseline; rank p = (1 + draws with gain "
                    "≥ ITI's) / (1 + draws), unadjusted; Δ = ITI − the draws' per-question mean):\n\n" + families)
    strata = agg.strata_markdown(results.get("strata_gains") or [])
    if strata:
        strata = ("\nITI's gain over the baseline by the style and length of each question's true MC1 answer "
                  "(descriptive: not in the Holm family):\n\n" + strata)
    head_to_head = head_to_head_markdown(main_found)
    selections = [f["selection"] for f in results["folds"].get("iti", []) if f.get("selection")]
    grid = selection_markdown(selections)
    strategy = [f["selection"] for f in results["folds"].get("iti-strategy", []) if f.get("selection")]
    if strategy:
        grid += selection_markdown(strategy, "The nested-strategy row (iti-strategy): direction type, head selection, "
                                             "alpha and K")
    curve_rows = [r for r in rows if curve_point(str(r.get("variant", "")))]
    main_rows = [r for r in rows if r not in curve_rows]
    curves = ("\nThe same rows at other multiples of their own alpha (`--curve-scales`; the curves of pareto.png):\n\n"
              + agg.markdown_table(curve_rows, deltas=_deltas(curve_found)) + comparisons_note(curve_found)
              ) if curve_rows else ""
    return (head + agg.markdown_table(main_rows, deltas=_deltas(main_found)) + comparisons_note(main_found) + draws
            + families + head_to_head + strata + curves + grid + agg.judge_note(rows) + "\nPositions edited:\n"
            + agg.positions_legend(main_rows))


def _deltas(found: list[dict]) -> dict:
    from .comparisons import by_row

    return by_row(found)


def comparisons_note(found: list[dict]) -> str:
    """What the Δ columns and † of a table mean, with the size of its Holm family."""
    if not found:
        return ""
    size = found[0].get("holm_family", 0)
    return ("\nΔ: row − baseline over the questions both scored, pooled over folds; [95% CI]: bootstrap over questions "
            "within folds; p: McNemar exact where both rows score 0/1 per question (MC1, True, Info, True&Info), else "
            f"sign-flip permutation. † survives Holm at 0.05 across the {size} comparisons of this table (every row against the "
            "baseline except single control draws, ITI against each family of draws, and the head-to-head rows "
            "where there are any).\n")


def head_to_head_markdown(found: list[dict]) -> str:
    """The nested-strategy row against ITI's row, question by question (comparisons.HEAD_TO_HEAD)."""
    from .comparisons import HEAD_TO_HEAD

    pairs = [c for c in found if HEAD_TO_HEAD.get(c["row"]) == c["reference"] and c["kind"] == "row"]
    if not pairs:
        return ""
    lines = ["\nHead to head (Δ = row − reference over the questions both scored, pooled over folds; 95% CI by "
             "bootstrap within folds; p as above; † survives Holm):\n", "| row | reference | metric | n | Δ [95% CI] | p |",
             "|---|---|---|---|---|---|"]
    for c in pairs:
        mark = "†" if c.get("survives") else ""
        lines.append(f"| {c['row']} | {c['reference']} | {c['metric']} | {c['n']} | {c['delta']:+.4f} "
                     f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}] | {c['p']:.3g}{mark} |")
    return "\n".join(lines) + "\n"


def selection_markdown(selections: list[dict], title: str = "Nested selection of alpha and K") -> str:
    """The nested-selection grids (training folds only): per outer fold, every point (direction type and head
    selection where searched, alpha, K) with its KL on the KL sample and its inner-fold score; points over the KL
    budget were not scored; the chosen point is marked."""
    if not selections:
        return ""
    by = selections[0]["by"]
    searched = "method" in selections[0]
    strategy_head = "direction | heads | " if searched else ""
    lines = [f"\n{title} on each outer fold's training questions ({by}, mean over "
             f"{len(selections[0]['inner_folds'])} inner folds; KL in nats/token on held-out WikiText):\n",
             f"| outer fold | {strategy_head}α | K | KL | inner " + by + " | − unedited | chosen |",
             "|---|" + "---|" * (2 if searched else 0) + "---|---|---|---|---|---|"]
    for s in selections:
        base = (s.get("unedited") or {}).get("mean")
        budget = s.get("kl_budget")
        blank = "|  |  " if searched else ""
        lines.append(f"| {s['fold']} {blank}| 0 |  | 0 | {base:.4f} |  |  |" if base is not None else "")
        for g in s["grid"]:
            kl = "" if g.get("kl_mean") is None else f"{g['kl_mean']:.4f}"
            if g["mean"] is None:
                score = f"over budget {budget:g}" if budget is not None and g.get("kl_mean") is not None else ""
                gain = ""
            else:
                score = f"{g['mean']:.4f}"
                gain = f"{g['mean'] - base:+.4f}" if base is not None else ""
            point = tuple(g.get(k) for k in ("method", "head_selection", "alpha", "num_heads"))
            chosen = "**yes**" if point == tuple(s.get(k) for k in ("method", "head_selection", "alpha",
                                                                     "num_heads")) else ""
            strategy = f"| {g['method']} | {g['head_selection']} " if searched else ""
            lines.append(f"| {s['fold']} {strategy}| {g['alpha']:g} | {g['num_heads']} | {kl} | {score} | {gain} | "
                         f"{chosen} |")
    return "\n".join(line for line in lines if line) + "\n"
