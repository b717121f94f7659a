"""``report``: results of validate/sweep runs, plain lm-eval runs and side-effects measurements -> one leaderboard.

Accepted inputs (files or folders):
  an experiment run folder or its ``results.json`` (validate / sweep): one row per variant, fold means;
  an lm-eval results file (``results_*.json``; a folder is searched for them): one row, lm-eval's stderr;
  a side-effects JSON (``lm-eval-iti side-effects --out``): one row with CE and KL only.
Rows: model x method, then what defines a row (instruction, edited MC/gen positions, judge, data sha256, N
questions); columns MC1, MC2, MC3, binary, True, Info, True*Info, True&Info, CE, KL ("± stderr" where lm-eval gave
one). A number that an input does not have is blank, never 0. An experiment's rows also carry their paired Δ against
the run's baseline row with its 95% CI and p (the run's ``comparisons``; computed from its ``per_question.csv`` for
a run written before them), † where it survives Holm across the run's own table, and the run's ITI row its
comparisons with each family of control draws.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_json_atomic, write_text_atomic
from ..errors import ITIError
from . import aggregate as agg
from .plan import RESULTS_FORMAT

NOTES = ("Means over folds for experiment runs (stderr: sqrt(sum of per-fold stderr²)/folds); lm-eval's own stderr "
         "for single runs. True*Info = mean(True) × mean(Info) (product of means, as ITI reports it); True&Info = "
         "share of answers judged both true and informative. CE: the row's model on the side-effect corpus; KL: "
         "KL(base ‖ row's model) per token, nats. Blank = not measured. Δ: row − its run's baseline over the questions both "
         "scored, pooled over folds, [95% CI] by bootstrap over questions within folds, p McNemar exact (0/1 metrics) "
         "or sign-flip permutation; † survives Holm at 0.05 across the comparisons of the run's own table.")


def _cell(mean, stderr=None) -> dict:
    return {"mean": mean, "stderr": stderr}


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def rows_from_experiment(results: dict, source: str) -> list[dict]:
    """The run's rows, each with ``comparisons`` ({column: its comparison against the run's baseline}); the ITI row
    also with ``against_draws`` (its comparisons with each family of control draws)."""
    from .comparisons import by_row

    found = results.get("comparisons")
    if found is None:
        found = comparisons_from_records(results, Path(source).parent)
    deltas = by_row(found)
    rows = []
    for row in results.get("rows", []):
        r = dict(row)
        r["source"] = source
        r["run_kind"] = results.get("kind", "")
        r["comparisons"] = deltas.get(row.get("variant"), {})
        draws = [c for c in found if c["kind"] == "draws" and c["row"] == row.get("variant")]
        if draws:
            r["against_draws"] = draws
        rows.append(r)
    return rows


def comparisons_from_records(results: dict, folder: Path) -> list[dict]:
    """The comparisons of a run written before results.json carried them, from its per_question.csv ([] without)."""
    from . import comparisons as cmp
    from .baselines import curve_point
    from .records import PER_QUESTION_FILE, read_per_question

    path = folder / PER_QUESTION_FILE
    if not path.is_file():
        return []
    scores = cmp.scores_from_lines(read_per_question(path))
    names = [str(r.get("variant")) for r in results.get("rows", []) if r.get("variant")]
    curves = [n for n in names if curve_point(n)]
    found = cmp.table_comparisons(scores, [n for n in names if n not in curves], table="main")
    return found + (cmp.table_comparisons(scores, curves, table="curves") if curves else [])


def _model_name(config: dict) -> str:
    args = config.get("model_args")
    if isinstance(args, str):
        from ..harness.lm_eval_utils import parse_args_string

        args = parse_args_string(args)
    args = args if isinstance(args, dict) else {}
    for key in ("pretrained", "model", "path"):
        if isinstance(args.get(key), str):
            return args[key]
    return str(config.get("model_name") or config.get("model") or "")


def row_from_lm_eval(results: dict, source: str) -> dict:
    """One row from an lm-eval results JSON; method and positions from ``config.iti`` (hf-iti) or the model type."""
    config = results.get("config") or {}
    iti = config.get("iti") or {}
    model_type = str(config.get("model", ""))
    alpha, k = None, None
    if iti:
        from .baselines import hooked_positions

        alpha, k = iti.get("alpha"), iti.get("num_heads_used")
        method = f"hf-iti ({iti.get('method') or 'directions'})"
        positions = hooked_positions(iti.get("mc_positions", "answer"), iti.get("gen_positions", "last"))
    elif model_type == "steered":
        method, positions = "lm-eval steered", "lm-eval steered: every position"
    else:
        method, positions = model_type or "hf", "no edit"
        alpha = 0.0 if model_type in ("hf", "hf-auto", "huggingface") else None
    task_results = results.get("results") or {}
    metrics = {}
    for column, task, metric in agg.TASK_COLUMNS:
        entry = task_results.get(task) or {}
        metrics[column] = _cell(_number(entry.get(f"{metric},none")), _number(entry.get(f"{metric}_stderr,none")))
    t, i = metrics["True"]["mean"], metrics["Info"]["mean"]
    metrics["True*Info"] = _cell(t * i if t is not None and i is not None else None)
    metrics["CE"] = _cell(None)
    metrics["KL"] = _cell(None)
    edits = f"{iti.get('mc_positions', 'answer')}/{iti.get('gen_positions', 'last')}" if iti else None
    return {"model": _model_name(config), "method": method, "α": alpha, "K": k, "mc/gen": edits,
            "N": _samples(results), "positions": positions, "metrics": metrics, "source": source,
            "run_kind": "lm-eval"}


def _samples(results: dict) -> int | None:
    """The most documents lm-eval scored in one of the table's tasks (its ``n-samples``), or None."""
    counts = results.get("n-samples") or {}
    found = [_number((counts.get(task) or {}).get("effective")) for _, task, _ in agg.TASK_COLUMNS]
    found = [int(n) for n in found if n is not None]
    return max(found) if found else None


def row_from_side_effects(result: dict, source: str) -> dict:
    side, iv = result["side_effects"], result.get("intervention") or {}
    metrics = {c: _cell(None) for c in agg.COLUMNS}
    metrics["CE"] = _cell(_number(side.get("ce_steered")))
    metrics["KL"] = _cell(_number(side.get("kl")))
    name = Path(str(iv.get("directions", "directions"))).name
    return {"model": str(result.get("model", "")), "method": f"side effects ({name})", "α": iv.get("alpha"),
            "K": iv.get("num_heads_used"), "positions": "hf-iti hooks: every position", "metrics": metrics,
            "source": source, "run_kind": "side-effects"}


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ITIError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ITIError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ITIError(f"{path}: expected a JSON object")
    return data


def rows_from_path(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        if (p / "results.json").is_file():
            return rows_from_path(p / "results.json")
        found = sorted(p.rglob("results_*.json"))
        if not found:
            raise ITIError(f"{p}: no results.json (experiment run) and no lm-eval results_*.json inside")
        return [row for f in found for row in rows_from_path(f)]
    if not p.is_file():
        raise ITIError(f"{p}: no such file or folder")
    data = _load_json(p)
    if data.get("format") == RESULTS_FORMAT:
        if "rows" not in data:
            raise ITIError(f"{p}: an experiment fold file, not a run's results.json (give the run folder)")
        return rows_from_experiment(data, str(p))
    if "results" in data and isinstance(data["results"], dict):
        return [row_from_lm_eval(data, str(p))]
    if "side_effects" in data and isinstance(data["side_effects"], dict):
        return [row_from_side_effects(data, str(p))]
    raise ITIError(f"{p}: not an experiment results.json, an lm-eval results file or a side-effects JSON")


def leaderboard_markdown(rows: list[dict], title: str = "Leaderboard") -> str:
    deltas = {i: row.get("comparisons") or {} for i, row in enumerate(rows)}
    keyed = [dict(row, variant=i) for i, row in enumerate(rows)]  # runs may share variant names: key by position
    families = agg.families_markdown([dict(c, row=f"{row.get('model')}: {c['row']}")
                                      for row in rows for c in row.get("against_draws") or []])
    if families:
        families = "\nITI against each family of control draws (as in each run's table):\n\n" + families
    return (f"# {title}\n\n" + agg.markdown_table(keyed, deltas=deltas) + families + "\nPositions edited:\n"
            + agg.positions_legend(rows) + "\n" + NOTES + "\n")


def build_report(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, title: str = "Leaderboard",
                 plots: bool = True) -> dict:
    """Write ``leaderboard.md``, ``leaderboard.json`` and PNG plots into ``out_dir``; return what was written."""
    if not inputs:
        raise ITIError("report: give at least one results file or run folder")
    rows = [row for path in inputs for row in rows_from_path(path)]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ITIError(f"out={out_dir}: exists and is not a folder")
    markdown = leaderboard_markdown(rows, title)
    written = {"markdown": str(out / "leaderboard.md"), "json": str(out / "leaderboard.json"), "plots": {}}
    if plots:
        from .plots import leaderboard_bars, sweep_plots

        bars = leaderboard_bars(rows, out / "leaderboard.png", title)
        written["plots"]["leaderboard"] = str(bars) if bars else None
        swept = [r for r in rows if r.get("run_kind") == "sweep"]
        if swept:  # sweep inputs: their alpha curves too
            written["plots"].update(sweep_plots(swept, out, title))
    write_text_atomic(out / "leaderboard.md", markdown)
    write_json_atomic(out / "leaderboard.json", {"rows": rows, "inputs": [str(p) for p in inputs],
                                                 "plots": written["plots"]})
    written["table"] = markdown
    return written
