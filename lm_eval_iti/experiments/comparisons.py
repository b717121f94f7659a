"""Whether a difference in a table is real: paired comparisons of a run's rows, question by question (pure functions
on the per-question records of ``records``; no model).

Every comparison pools the held-out folds: a question is (fold, question id), and the rows compared are aligned on
the questions that all of them scored (a failed judgment leaves its question out of that metric only).

- **Row against the baseline row** (``compare_rows``): Δ = mean(row) − mean(baseline); the 95% CI is a percentile
  bootstrap of the per-question differences, resampling questions within each fold (``stats.paired_difference``
  with strata = fold); p is McNemar's exact test where both rows are 0/1 per question (MC1, True, Info, True&Info),
  else the two-sided sign-flip permutation test (MC2, MC3, binary, whose per-question value is the mean over its
  two answer orders). For 0/1 scores the two tests have the same null distribution; McNemar's is exact for any
  number of discordant questions. The sign-flip p is kept too (``p_signflip``).
- **ITI against a family of draws** (``compare_family``; rows ``<family>-0..N-1`` of ``baselines.DRAW_FAMILIES``):
  Δ = ITI − the draws' per-question mean, its CI and sign-flip p (``stats.against_draws``), and the rank p =
  (1 + #draws whose gain over the baseline is ≥ ITI's) / (1 + draws), which cannot be below 1 / (1 + draws).
- **Head to head** (``HEAD_TO_HEAD``): the nested-strategy row against ITI's own row (``compare_rows`` with ITI as the
  reference), in the Holm family.
- **Holm** (``with_holm``) across the comparisons one table makes, at family-wise level 0.05: every row against the
  baseline, except single draws of a family (a draw is not a claim: its family enters as a whole), and ITI against
  each family (by the paired p; the rank p is reported beside it, not adjusted). ``survives`` marks what Holm
  rejects; tables print it as †.
- **ITI's gain by stratum** (``strata_gains``): the same paired Δ, CI and p within the questions whose true MC1
  answer is hedged/negated or plain, short or long (``answer_style.question_strata``); descriptive, outside Holm.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from .. import stats
from .aggregate import draw_group

# table column -> per_question.csv column (records.column_name of the column's task metric)
PER_QUESTION = {"MC1": "mc1", "MC2": "mc2", "MC3": "mc3", "binary": "binary_acc", "True": "truth", "Info": "info",
                "True&Info": "truth_and_info"}
HOLM_LEVEL = 0.05
N_RESAMPLES = 10000
BASELINE, TREATMENT = "baseline", "iti"
HEAD_TO_HEAD = {"iti-strategy": TREATMENT}  # row -> the row it is compared with (baselines.STRATEGY_ROW)


def scores_from_lines(lines: list[dict]) -> dict[str, dict[str, dict[tuple[int, str], float]]]:
    """{row: {column: {(fold, question_id): value}}} from per_question.csv lines (``records.question_lines`` or
    ``records.read_per_question``); empty and non-finite values are left out."""
    out: dict = {}
    for line in lines:
        for column, name in PER_QUESTION.items():
            value = line.get(name)
            if value is None or isinstance(value, str) or not math.isfinite(float(value)):
                continue
            key = (int(line["fold"]), str(line["question_id"]))
            out.setdefault(line["row"], {}).setdefault(column, {})[key] = float(value)
    return out


def aligned(scores: dict, names: list[str], column: str, keep=None) -> tuple[np.ndarray, np.ndarray] | None:
    """(values [len(names), n], fold of each question [n]) over the questions every row in ``names`` scored in
    ``column`` (and ``keep(question_id)`` accepts); None when there is none."""
    tables = [scores.get(name, {}).get(column) for name in names]
    if not all(tables):
        return None
    keys = sorted(set.intersection(*(set(t) for t in tables)))
    if keep is not None:
        keys = [k for k in keys if keep(k[1])]
    if not keys:
        return None
    return np.array([[t[k] for k in keys] for t in tables]), np.array([k[0] for k in keys])


def _seed(*parts) -> int:
    """A fixed seed per comparison, so a rerun (or a resumed run) prints the same CI and p."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def _paired_entry(result: stats.PairedResult) -> dict:
    return {"n": result.n, "mean_row": result.mean_b, "mean_reference": result.mean_a, "delta": result.delta,
            "ci": [result.ci_low, result.ci_high], "p": result.p_value, "test": result.test_method,
            "p_signflip": result.p_value, "ci_method": result.ci_method}


def compare_rows(scores: dict, row: str, reference: str, column: str, *, n_resamples: int = N_RESAMPLES,
                 keep=None) -> dict | None:
    """``row`` against ``reference`` in ``column`` (see the module docstring); None when they share no question."""
    got = aligned(scores, [reference, row], column, keep)
    if got is None:
        return None
    (a, b), folds = got
    result = stats.paired_difference(a, b, strata=folds, n_resamples=n_resamples, seed=_seed(row, reference, column))
    entry = {"row": row, "reference": reference, "kind": "row", "metric": column, **_paired_entry(result),
             "folds": sorted({int(f) for f in folds}), "p_mcnemar": None}
    if stats.is_binary(a) and stats.is_binary(b):
        m = stats.mcnemar_exact(a, b)
        entry.update(p=m.p_value, p_mcnemar=m.p_value,
                     test=f"McNemar exact ({m.b01} questions gained, {m.b10} lost)")
    return entry


def compare_family(scores: dict, treatment: str, baseline: str, family: str, members: list[str], column: str, *,
                   n_resamples: int = N_RESAMPLES) -> dict | None:
    """``treatment`` against the draws ``members`` of ``family``, all against ``baseline`` (``stats.against_draws``);
    None when they share no question."""
    got = aligned(scores, [treatment, baseline, *members], column)
    if got is None:
        return None
    values, folds = got
    result = stats.against_draws(values[0], values[1], values[2:], strata=folds, n_resamples=n_resamples,
                                 seed=_seed(treatment, family, column))
    entry = _paired_entry(result.vs_draw_mean)
    entry["test"] += " against the draws' per-question mean"
    return {"row": treatment, "reference": family, "kind": "draws", "metric": column, **entry,
            "folds": sorted({int(f) for f in folds}), "draws": result.n_draws, "rank_p": result.rank_p,
            "draws_at_or_above": result.n_draws_at_or_above, "gain": result.gain,
            "draw_gain_mean": result.draw_gain_mean, "draw_gain_sd": result.draw_gain_sd,
            "draw_gain_min": result.draw_gain_min, "draw_gain_max": result.draw_gain_max}


def families(rows: list[str]) -> dict[str, list[str]]:
    """{family: its draw rows, in order} among ``rows``."""
    out: dict[str, list[str]] = {}
    for row in rows:
        group = draw_group(row)
        if group is not None:
            out.setdefault(group, []).append(row)
    return out


def table_comparisons(scores: dict, rows: list[str], *, table: str = "main", baseline: str = BASELINE,
                      treatment: str = TREATMENT, columns: tuple[str, ...] = tuple(PER_QUESTION),
                      n_resamples: int = N_RESAMPLES) -> list[dict]:
    """The comparisons of one table with ``rows``: each row against ``baseline``, ``treatment`` against each family
    of draws among ``rows``; Holm-adjusted across them (``with_holm``)."""
    out = []
    for row in rows:
        if row == baseline:
            continue
        for column in columns:
            entry = compare_rows(scores, row, baseline, column, n_resamples=n_resamples)
            if entry is not None:
                out.append(dict(entry, table=table, in_holm=draw_group(row) is None))
    for row, reference in HEAD_TO_HEAD.items():
        if row in rows and reference in rows:
            for column in columns:
                entry = compare_rows(scores, row, reference, column, n_resamples=n_resamples)
                if entry is not None:
                    out.append(dict(entry, table=table, in_holm=True))
    if treatment in rows:
        for family, members in families(rows).items():
            for column in columns:
                entry = compare_family(scores, treatment, baseline, family, members, column, n_resamples=n_resamples)
                if entry is not None:
                    out.append(dict(entry, table=table, in_holm=True))
    return with_holm(out)


def with_holm(comparisons: list[dict], level: float = HOLM_LEVEL) -> list[dict]:
    """Each comparison with ``p_holm`` and ``survives`` (Holm at ``level`` across those ``in_holm``; None for the
    others) and ``holm_family`` (how many comparisons the correction spans)."""
    family = [c for c in comparisons if c.get("in_holm")]
    adjusted = stats.holm([c["p"] for c in family]) if family else []
    for c, p in zip(family, adjusted):
        c.update(p_holm=float(p), survives=bool(p <= level), holm_family=len(family))
    for c in comparisons:
        if not c.get("in_holm"):
            c.update(p_holm=None, survives=None, holm_family=len(family))
    return comparisons


def strata_gains(scores: dict, strata: dict, *, treatment: str = TREATMENT, baseline: str = BASELINE,
                 columns: tuple[str, ...] = tuple(PER_QUESTION), n_resamples: int = N_RESAMPLES) -> list[dict]:
    """``treatment`` against ``baseline`` within each stratum of ``strata`` (``answer_style.question_strata``:
    {"style": {qid: stratum}, "length": {qid: stratum}}): the paired Δ, CI and p of ``compare_rows``."""
    out = []
    if treatment not in scores or baseline not in scores:
        return out
    for split in ("style", "length"):
        labels = strata.get(split) or {}
        for stratum in sorted(set(labels.values())):
            for column in columns:
                entry = compare_rows(scores, treatment, baseline, column, n_resamples=n_resamples,
                                     keep=lambda q, s=stratum: labels.get(q) == s)
                if entry is not None:
                    out.append(dict(entry, split=split, stratum=stratum))
    return out


def by_row(comparisons: list[dict], reference: str = BASELINE) -> dict[str, dict[str, dict]]:
    """{row: {column: comparison}} of the comparisons against ``reference`` (a table's Δ columns)."""
    out: dict[str, dict[str, dict]] = {}
    for c in comparisons:
        if c["reference"] == reference and c["kind"] == "row":
            out.setdefault(c["row"], {})[c["metric"]] = c
    return out


def settings(n_resamples: int = N_RESAMPLES) -> dict:
    """What results.json records about how the comparisons were made."""
    return {"level": HOLM_LEVEL, "confidence": 0.95, "n_resamples": n_resamples, "strata": "fold",
            "columns": dict(PER_QUESTION),
            "p": "McNemar exact where both rows are 0/1 per question, else two-sided sign-flip permutation",
            "draws_p": "sign-flip against the draws' per-question mean (Holm); rank p beside it, unadjusted",
            "holm": "per table: rows against the baseline except single draws, and ITI against each family"}
