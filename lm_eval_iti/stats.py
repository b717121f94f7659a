"""Statistics for comparing result rows: pure functions on per-question scores (numpy + scipy, no model).

Every function takes per-question scores aligned by question (element ``i`` of every array is question ``i``).
Convention: a comparison of ``a`` (baseline) and ``b`` (treatment) reports ``delta = mean(b) - mean(a)``, i.e.
treatment minus baseline; a positive delta means the treatment scores higher.

- ``paired_difference``: delta with a question-level percentile bootstrap CI (resampling questions within each
  fold when ``strata`` is given) and a two-sided paired sign-flip permutation p-value (exact enumeration when at
  most ``EXACT_MAX_NONZERO`` questions differ, else Monte Carlo with the ``(1 + count) / (1 + n_resamples)``
  correction).
- ``mcnemar_exact``: McNemar's exact test for 0/1 metrics (MC1, MC3 as 0/1, acc).
- ``against_draws``: a treatment row against a family of control draws (e.g. random-direction rows): the rank
  p-value of its gain among the draws' gains, and the paired test against the draws' per-question mean.
- ``holm`` / ``holm_reject``: Holm's step-down correction across the comparisons one table makes.

Randomised parts are deterministic for a given ``seed``; the bootstrap and the permutation test draw from separate
streams spawned from it, so one never shifts the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
from scipy import stats as _sps

from .errors import ITIError

#: the permutation test enumerates all 2**k sign flips when k (questions whose difference is nonzero) is at most this
EXACT_MAX_NONZERO = 16
_CHUNK = 1000  # resamples per block, to bound memory (block x n_questions)


# ----------------------------------------------------------------------------------------------------------- inputs
def _scores(x: Any, name: str) -> np.ndarray:
    """``x`` as a finite, non-empty 1-D float array, or an ITIError naming ``name``."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise ITIError(f"{name}: per-question scores must be numbers ({e})") from None
    if arr.ndim != 1:
        raise ITIError(f"{name}: per-question scores must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ITIError(f"{name}: no questions (empty array)")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ITIError(f"{name}: {int(bad.sum())} of {arr.size} scores are NaN or infinite (first at question "
                       f"{int(np.flatnonzero(bad)[0])})")
    return arr


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ITIError("rows are not aligned by question: lengths "
                       + ", ".join(f"{name}={n}" for name, n in lengths.items()))
    return next(iter(lengths.values()))


def _strata_codes(strata: Any, n: int) -> np.ndarray | None:
    """Stratum (fold) labels as integer codes 0..k-1, or None; ITIError unless there is one label per question."""
    if strata is None:
        return None
    labels = np.asarray(strata)
    if labels.ndim != 1 or len(labels) != n:
        raise ITIError(f"strata: need one fold id per question ({n}), got shape {labels.shape}")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ITIError("strata: fold ids contain NaN")
    try:
        _, codes = np.unique(labels, return_inverse=True)
    except TypeError as e:
        raise ITIError(f"strata: fold ids must be comparable values of one type ({e})") from None
    return codes.reshape(-1)


def _check_options(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ITIError(f"n_resamples={n_resamples} must be a positive integer")
    if not 0.0 < confidence < 1.0:
        raise ITIError(f"confidence={confidence} must be between 0 and 1 (exclusive)")


def is_binary(x: Any) -> bool:
    """Whether every score is 0 or 1 (a 0/1 metric such as MC1 or acc, for which McNemar's test applies)."""
    arr = np.asarray(x, dtype=float)
    return arr.size > 0 and bool(np.isin(arr, (0.0, 1.0)).all())


# ----------------------------------------------------------------------------------------------- building blocks
def sign_flip_pvalue(diff: Any, *, n_resamples: int = 10000, seed: int | np.random.SeedSequence = 0
                     ) -> tuple[float, str]:
    """Two-sided paired permutation p-value of ``mean(diff)`` under random sign flips, and a method string.

    The null is that each question's difference is symmetric about 0. Questions with a zero difference are
    unaffected by a flip, so only the k nonzero ones are flipped: exactly (all 2**k sign vectors) when
    k <= EXACT_MAX_NONZERO, else ``n_resamples`` random sign vectors with p = (1 + count) / (1 + n_resamples).
    The count is of ``|statistic| >= |observed|`` (with a tiny relative tolerance for floating-point ties).
    """
    d = _scores(diff, "diff")
    nz = d[d != 0.0]
    k = nz.size
    if k == 0:
        return 1.0, "sign-flip permutation: no question differs, p = 1"
    observed = abs(nz.sum())
    tol = 1e-9 * np.abs(nz).sum()
    if k <= EXACT_MAX_NONZERO:
        bits = (np.arange(2 ** k, dtype=np.int64)[:, None] >> np.arange(k)) & 1
        sums = (bits * 2 - 1) @ nz
        count = int((np.abs(sums) >= observed - tol).sum())
        return count / 2 ** k, f"sign-flip permutation, exact over 2^{k} sign vectors ({k} questions differ)"
    rng = np.random.default_rng(seed)
    count = 0
    done = 0
    while done < n_resamples:
        c = min(_CHUNK, n_resamples - done)
        signs = rng.integers(0, 2, size=(c, k), dtype=np.int8) * 2 - 1
        count += int((np.abs(signs @ nz) >= observed - tol).sum())
        done += c
    return (1 + count) / (1 + n_resamples), f"sign-flip permutation, Monte Carlo ({n_resamples} resamples)"


def bootstrap_mean_ci(values: Any, *, strata: Any = None, n_resamples: int = 10000, confidence: float = 0.95,
                      seed: int | np.random.SeedSequence = 0) -> tuple[float, float, str]:
    """Percentile bootstrap CI of ``mean(values)`` over questions, and a method string.

    Each resample draws questions with replacement; with ``strata`` (a fold id per question) it draws within each
    fold, keeping every fold's size, so the resampled means keep the fold composition of the data.
    """
    v = _scores(values, "values")
    n = v.size
    _check_options(n_resamples, confidence)
    codes = _strata_codes(strata, n)
    groups = [np.arange(n)] if codes is None else [np.flatnonzero(codes == s) for s in range(int(codes.max()) + 1)]
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    done = 0
    while done < n_resamples:
        c = min(_CHUNK, n_resamples - done)
        total = np.zeros(c)
        for idx in groups:
            group = v[idx]
            total += group[rng.integers(0, group.size, size=(c, group.size))].sum(axis=1)
        means[done:done + c] = total / n
        done += c
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    if codes is None:
        method = f"percentile bootstrap over questions ({n_resamples} resamples)"
    else:
        method = f"percentile bootstrap over questions within {len(groups)} folds ({n_resamples} resamples)"
    return float(low), float(high), method


# --------------------------------------------------------------------------------------------------- two rows
@dataclass(frozen=True)
class PairedResult:
    """Treatment ``b`` against baseline ``a`` over the same questions; ``delta = mean_b - mean_a``."""

    n: int  # questions
    mean_a: float  # baseline
    mean_b: float  # treatment
    delta: float  # mean(b - a) = mean_b - mean_a
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float  # two-sided, sign-flip permutation on the per-question differences
    n_differ: int  # questions whose scores differ
    ci_method: str
    test_method: str

    def as_dict(self) -> dict:
        return asdict(self)


def paired_difference(a: Any, b: Any, *, strata: Any = None, n_resamples: int = 10000, confidence: float = 0.95,
                      seed: int = 0) -> PairedResult:
    """Compare treatment ``b`` with baseline ``a`` (per-question scores, aligned by question).

    ``delta = mean(b) - mean(a)``; CI: percentile bootstrap of the mean per-question difference, resampling
    questions within each fold when ``strata`` is given; p-value: two-sided paired sign-flip permutation test (see
    ``sign_flip_pvalue``). Identical rows give delta 0, CI [0, 0] and p = 1.
    """
    a = _scores(a, "a")
    b = _scores(b, "b")
    n = _same_length(a=a, b=b)
    _check_options(n_resamples, confidence)
    diff = b - a
    boot_seed, perm_seed = np.random.SeedSequence(seed).spawn(2)
    low, high, ci_method = bootstrap_mean_ci(diff, strata=strata, n_resamples=n_resamples, confidence=confidence,
                                             seed=boot_seed)
    p, test_method = sign_flip_pvalue(diff, n_resamples=n_resamples, seed=perm_seed)
    return PairedResult(n=n, mean_a=float(a.mean()), mean_b=float(b.mean()), delta=float(diff.mean()),
                        ci_low=low, ci_high=high, confidence=float(confidence), p_value=float(p),
                        n_differ=int((diff != 0).sum()), ci_method=ci_method, test_method=test_method)


class McNemarResult(NamedTuple):
    """Discordant pairs of a 0/1 comparison: ``b01`` = baseline wrong, treatment right; ``b10`` = the reverse."""

    b01: int
    b10: int
    p_value: float


def mcnemar_exact(a: Any, b: Any) -> McNemarResult:
    """McNemar's exact test of 0/1 baseline ``a`` against 0/1 treatment ``b``: a two-sided binomial test
    (p = 1/2) on the discordant pairs; p = 1 when no question is discordant."""
    a = _scores(a, "a")
    b = _scores(b, "b")
    _same_length(a=a, b=b)
    for name, arr in (("a", a), ("b", b)):
        if not is_binary(arr):
            bad = np.flatnonzero(~np.isin(arr, (0.0, 1.0)))
            raise ITIError(f"{name}: McNemar's test needs 0/1 scores, got {arr[bad[0]]!r} at question {int(bad[0])} "
                           f"({bad.size} non-0/1 values)")
    b01 = int(((a == 0) & (b == 1)).sum())
    b10 = int(((a == 1) & (b == 0)).sum())
    if b01 + b10 == 0:
        return McNemarResult(0, 0, 1.0)
    p = _sps.binomtest(b01, b01 + b10, 0.5, alternative="two-sided").pvalue
    return McNemarResult(b01, b10, float(min(1.0, p)))


# ------------------------------------------------------------------------------------------ row against draws
@dataclass(frozen=True)
class DrawsResult:
    """A treatment row against a family of control draws, each compared with the same baseline row."""

    n: int  # questions
    n_draws: int
    gain: float  # mean(treatment) - mean(baseline)
    draw_gain_mean: float  # of mean(draw) - mean(baseline) over draws
    draw_gain_sd: float  # ddof 1; 0.0 for a single draw
    draw_gain_min: float
    draw_gain_max: float
    n_draws_at_or_above: int  # draws whose gain >= the treatment's gain
    rank_p: float  # (1 + n_draws_at_or_above) / (1 + n_draws); one-sided, at least 1 / (1 + n_draws)
    vs_draw_mean: PairedResult  # treatment against the draws' per-question mean (delta = treatment - draw mean)

    def as_dict(self) -> dict:
        return asdict(self)


def against_draws(treatment: Any, baseline: Any, draws: Any, *, strata: Any = None, n_resamples: int = 10000,
                  confidence: float = 0.95, seed: int = 0) -> DrawsResult:
    """Compare a treatment row with ``draws`` (shape (n_draws, n_questions): per-question scores of control rows,
    e.g. random directions), all measured against ``baseline``.

    Rank test: gain = mean(treatment) - mean(baseline), each draw's gain = mean(draw) - mean(baseline),
    ``rank_p = (1 + #{draw gains >= gain}) / (1 + n_draws)`` (one-sided: is the treatment better than the controls?
    ties count against it). Paired test: ``paired_difference(draws.mean(axis=0), treatment)``.
    """
    t = _scores(treatment, "treatment")
    base = _scores(baseline, "baseline")
    n = _same_length(treatment=t, baseline=base)
    try:
        d = np.asarray(draws, dtype=float)
    except (TypeError, ValueError) as e:
        raise ITIError(f"draws: need an array of per-question scores, shape (n_draws, n_questions) ({e})") from None
    if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] != n:
        raise ITIError(f"draws: need shape (n_draws >= 1, {n} questions), got {d.shape}")
    bad = ~np.isfinite(d)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ITIError(f"draws: {int(bad.sum())} scores are NaN or infinite (first at draw {row}, question {col})")
    base_mean = base.mean()
    gain = float(t.mean() - base_mean)
    draw_gains = d.mean(axis=1) - base_mean
    tol = 64 * np.finfo(float).eps * max(1.0, abs(t.mean()), abs(base_mean), float(np.abs(d.mean(axis=1)).max()))
    at_or_above = int((draw_gains >= gain - tol).sum())
    n_draws = d.shape[0]
    paired = paired_difference(d.mean(axis=0), t, strata=strata, n_resamples=n_resamples, confidence=confidence,
                               seed=seed)
    return DrawsResult(n=n, n_draws=n_draws, gain=gain, draw_gain_mean=float(draw_gains.mean()),
                       draw_gain_sd=float(draw_gains.std(ddof=1)) if n_draws > 1 else 0.0,
                       draw_gain_min=float(draw_gains.min()), draw_gain_max=float(draw_gains.max()),
                       n_draws_at_or_above=at_or_above, rank_p=(1 + at_or_above) / (1 + n_draws),
                       vs_draw_mean=paired)


# ------------------------------------------------------------------------------------------- multiple testing
def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order: sorted ascending, the i-th (0-based) of m becomes
    ``max over j <= i of min(1, (m - j) * p_(j))`` (monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    if p.size == 0:
        return p
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ITIError(f"holm: p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def holm_reject(p_values: Sequence[float] | np.ndarray, alpha: float = 0.05) -> list[bool]:
    """Which hypotheses Holm's procedure rejects at family-wise level ``alpha`` (adjusted p <= alpha)."""
    if not 0.0 < alpha < 1.0:
        raise ITIError(f"alpha={alpha} must be between 0 and 1 (exclusive)")
    return [bool(x) for x in holm(p_values) <= alpha]
