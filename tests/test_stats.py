"""lm_eval_iti.stats against independent implementations (scipy.stats.permutation_test, scipy.stats.bootstrap,
statsmodels' McNemar and Holm) on synthetic data, and on data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from lm_eval_iti.errors import ITIError
from lm_eval_iti.stats import (
    EXACT_MAX_NONZERO,
    DrawsResult,
    PairedResult,
    against_draws,
    bootstrap_mean_ci,
    holm,
    holm_reject,
    is_binary,
    mcnemar_exact,
    paired_difference,
    sign_flip_pvalue,
)


def _statsmodels():
    """(mcnemar, multipletests) from statsmodels (the ``test`` extra); the tests that use them skip without it."""
    pytest.importorskip("statsmodels")
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.multitest import multipletests
    return mcnemar, multipletests


def _mean_diff(x, y, axis=-1):
    return np.mean(y - x, axis=axis)


def _scipy_paired_p(a, b, n_resamples, seed=0):
    res = sps.permutation_test((a, b), _mean_diff, permutation_type="samples", vectorized=True,
                               n_resamples=n_resamples, alternative="two-sided", random_state=seed)
    return res.pvalue


# ------------------------------------------------------------------------------------------- permutation test
@pytest.mark.parametrize("n,seed", [(8, 1), (12, 2), (EXACT_MAX_NONZERO, 3)])
def test_exact_sign_flip_matches_scipy_exact(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = a + rng.normal(0.4, 1.0, size=n)
    # scipy enumerates every pairing exactly when 2**n <= n_resamples
    expected = _scipy_paired_p(a, b, n_resamples=np.inf)
    res = paired_difference(a, b)
    assert "exact" in res.test_method
    assert res.p_value == pytest.approx(expected, abs=1e-12)


def test_exact_sign_flip_with_discrete_ties_matches_scipy():
    # 0/1 scores: many zero differences and many tied statistics; both tests enumerate exactly
    a = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0], dtype=float)
    b = np.array([1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 1, 1], dtype=float)
    expected = _scipy_paired_p(a, b, n_resamples=np.inf)
    assert paired_difference(a, b).p_value == pytest.approx(expected, abs=1e-12)


def test_monte_carlo_sign_flip_matches_scipy_exact():
    rng = np.random.default_rng(5)
    n = 18  # above EXACT_MAX_NONZERO, so ours is Monte Carlo; scipy enumerates 2**18 exactly
    a = rng.normal(size=n)
    b = a + rng.normal(0.6, 1.0, size=n)
    expected = _scipy_paired_p(a, b, n_resamples=np.inf)
    assert 0.02 < expected < 0.5  # a p-value where Monte Carlo error is visible
    res = paired_difference(a, b, n_resamples=20000)
    assert "Monte Carlo" in res.test_method
    se = np.sqrt(expected * (1 - expected) / 20000)
    assert abs(res.p_value - expected) < 5 * se


def test_monte_carlo_sign_flip_matches_scipy_monte_carlo_large_n():
    rng = np.random.default_rng(6)
    n = 300
    a = rng.binomial(1, 0.5, size=n).astype(float)
    b = a.copy()
    # 40 discordant questions, 26 won and 14 lost by b: a modest effect on a 0/1 metric
    discordant = rng.choice(n, size=40, replace=False)
    a[discordant[:26]], b[discordant[:26]] = 0.0, 1.0
    a[discordant[26:]], b[discordant[26:]] = 1.0, 0.0
    ours = paired_difference(a, b, n_resamples=10000).p_value
    theirs = _scipy_paired_p(a, b, n_resamples=10000)
    assert 0.01 < theirs < 0.9
    se = np.sqrt(theirs * (1 - theirs) / 10000)
    assert abs(ours - theirs) < 6 * se


def test_sign_flip_hand_example():
    # d = [1, 1, 1]: of the 8 sign vectors only +++ and --- reach |sum| = 3
    p, method = sign_flip_pvalue([1.0, 1.0, 1.0])
    assert p == pytest.approx(2 / 8)
    assert "2^3" in method
    # zeros do not count: the same with zero differences added
    assert sign_flip_pvalue([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])[0] == pytest.approx(2 / 8)


def test_permutation_pvalues_are_roughly_uniform_under_the_null():
    rng = np.random.default_rng(11)
    ps = np.array([sign_flip_pvalue(rng.normal(size=40), n_resamples=500, seed=i)[0] for i in range(300)])
    rate = (ps <= 0.05).mean()
    assert 0.01 <= rate <= 0.10  # nominal 0.05; binomial sd ~0.013


# ------------------------------------------------------------------------------------------------ bootstrap CI
def test_bootstrap_ci_matches_scipy_bootstrap():
    rng = np.random.default_rng(7)
    n = 200
    a = rng.normal(size=n)
    b = a + rng.normal(0.1, 0.8, size=n)
    diff = b - a
    res = paired_difference(a, b, n_resamples=20000)
    ref = sps.bootstrap((diff,), np.mean, method="percentile", confidence_level=0.95, n_resamples=20000,
                        random_state=1).confidence_interval
    se = diff.std(ddof=1) / np.sqrt(n)
    # Monte Carlo error of a 2.5% quantile with 20000 resamples is ~0.02 se; allow 0.12 se
    assert res.ci_low == pytest.approx(ref.low, abs=0.12 * se)
    assert res.ci_high == pytest.approx(ref.high, abs=0.12 * se)
    assert res.delta == pytest.approx(diff.mean())
    assert res.delta == pytest.approx(res.mean_b - res.mean_a)


@pytest.mark.parametrize("confidence", [0.8, 0.99])
def test_bootstrap_confidence_level_matches_scipy(confidence):
    rng = np.random.default_rng(8)
    diff = rng.exponential(size=150) - 0.8
    low, high, _ = bootstrap_mean_ci(diff, n_resamples=20000, confidence=confidence)
    ref = sps.bootstrap((diff,), np.mean, method="percentile", confidence_level=confidence, n_resamples=20000,
                        random_state=2).confidence_interval
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    tol = (0.2 if confidence == 0.99 else 0.1) * se
    assert low == pytest.approx(ref.low, abs=tol)
    assert high == pytest.approx(ref.high, abs=tol)


def _hand_stratified_ci(values, folds, n_resamples, confidence, seed):
    """An independent stratified bootstrap: a plain loop, resampling each fold's questions with replacement."""
    rng = np.random.default_rng(seed)
    members = {f: [i for i, g in enumerate(folds) if g == f] for f in sorted(set(folds))}
    means = []
    for _ in range(n_resamples):
        picked = []
        for idx in members.values():
            picked.extend(values[j] for j in rng.choice(idx, size=len(idx), replace=True))
        means.append(sum(picked) / len(picked))
    alpha = (1 - confidence) / 2
    return np.percentile(means, 100 * alpha), np.percentile(means, 100 * (1 - alpha))


def test_stratified_bootstrap_matches_hand_written_resampling():
    rng = np.random.default_rng(9)
    folds = np.repeat([0, 1, 2], [30, 50, 20])
    rng.shuffle(folds)  # folds interleaved with questions, as in real data
    diff = np.array([0.5, -0.2, 0.1])[folds] + rng.normal(0, 0.3, size=folds.size)
    low, high, method = bootstrap_mean_ci(diff, strata=folds, n_resamples=4000, seed=3)
    ref_low, ref_high = _hand_stratified_ci(diff.tolist(), folds.tolist(), 4000, 0.95, seed=4)
    assert "3 folds" in method
    # the stratified standard error: within-fold variance only
    se = np.sqrt(sum((folds == f).sum() * diff[folds == f].var() for f in range(3))) / diff.size
    assert low == pytest.approx(ref_low, abs=0.15 * se)
    assert high == pytest.approx(ref_high, abs=0.15 * se)


def test_stratification_narrows_the_ci_when_folds_differ():
    rng = np.random.default_rng(10)
    folds = rng.integers(0, 4, size=400)
    diff = np.array([1.0, -1.0, 0.5, -0.5])[folds] + rng.normal(0, 0.1, size=folds.size)
    plain = bootstrap_mean_ci(diff, n_resamples=2000)
    strat = bootstrap_mean_ci(diff, strata=folds, n_resamples=2000)
    assert (strat[1] - strat[0]) < 0.5 * (plain[1] - plain[0])
    assert strat[0] < diff.mean() < strat[1]


def test_a_single_stratum_is_the_plain_bootstrap():
    rng = np.random.default_rng(12)
    diff = rng.normal(size=50)
    plain = bootstrap_mean_ci(diff, seed=5)[:2]
    assert bootstrap_mean_ci(diff, strata=np.zeros(50, dtype=int), seed=5)[:2] == plain
    assert bootstrap_mean_ci(diff, strata=["fold-a"] * 50, seed=5)[:2] == plain


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(13)
    hits = 0
    trials = 200
    for i in range(trials):
        diff = rng.normal(0.3, 1.0, size=60)
        low, high, _ = bootstrap_mean_ci(diff, n_resamples=1000, seed=i)
        hits += low <= 0.3 <= high
    assert 0.88 <= hits / trials <= 0.99


# ---------------------------------------------------------------------------------------------- known answers
def test_identical_rows_give_p_one_and_a_zero_ci():
    rng = np.random.default_rng(14)
    for a in (rng.normal(size=300), rng.binomial(1, 0.4, size=817).astype(float)):
        res = paired_difference(a, a.copy(), strata=np.arange(a.size) % 5)
        assert isinstance(res, PairedResult)
        assert res.p_value == 1.0
        assert res.delta == 0.0
        assert res.ci_low == 0.0 and res.ci_high == 0.0
        assert res.ci_low <= 0.0 <= res.ci_high
        assert res.n_differ == 0


def test_a_constant_shift_is_detected():
    rng = np.random.default_rng(15)
    a = rng.random(200)
    res = paired_difference(a, a + 0.1)
    assert res.delta == pytest.approx(0.1)
    assert res.p_value < 0.01
    assert res.p_value == pytest.approx(1 / 10001)  # only the all-plus and all-minus flips reach it: never drawn
    assert res.ci_low > 0 and res.ci_low == pytest.approx(0.1) and res.ci_high == pytest.approx(0.1)


def test_a_clear_noisy_effect_is_detected_with_strata():
    rng = np.random.default_rng(16)
    a = rng.normal(size=200)
    b = a + rng.normal(0.5, 1.0, size=200)
    res = paired_difference(a, b, strata=np.arange(200) % 2)
    assert res.p_value < 0.01
    assert res.ci_low > 0
    assert res.ci_low < res.delta < res.ci_high
    # swapping the rows flips the sign of delta and the CI, not the p-value
    rev = paired_difference(b, a, strata=np.arange(200) % 2)
    assert rev.delta == pytest.approx(-res.delta)
    assert rev.ci_high < 0


def test_results_are_deterministic_for_a_seed():
    rng = np.random.default_rng(17)
    a = rng.normal(size=120)
    b = a + rng.normal(0.1, 1.0, size=120)
    assert paired_difference(a, b, seed=3) == paired_difference(a, b, seed=3)
    assert paired_difference(a, b, seed=3).ci_low != paired_difference(a, b, seed=4).ci_low


# --------------------------------------------------------------------------------------------------- McNemar
def test_mcnemar_matches_statsmodels():
    sm_mcnemar, _ = _statsmodels()
    rng = np.random.default_rng(18)
    for trial in range(40):
        n = int(rng.integers(5, 400))
        a = rng.binomial(1, 0.5, size=n)
        flip = rng.random(n) < rng.uniform(0.01, 0.3)
        b = np.where(flip & (rng.random(n) < rng.uniform(0.2, 0.8)), 1 - a, a)
        b01, b10, p = mcnemar_exact(a, b)
        table = [[((a == 0) & (b == 0)).sum(), b01], [b10, ((a == 1) & (b == 1)).sum()]]
        assert b01 == int(((a == 0) & (b == 1)).sum()) and b10 == int(((a == 1) & (b == 0)).sum())
        assert p == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9, abs=1e-15), trial


def test_mcnemar_known_answers():
    same = np.array([0, 1, 1, 0, 1])
    assert mcnemar_exact(same, same) == (0, 0, 1.0)
    # 6 wins, 0 losses: p = 2 * 0.5**6
    a = np.zeros(10)
    b = np.r_[np.ones(6), np.zeros(4)]
    res = mcnemar_exact(a, b)
    assert (res.b01, res.b10) == (6, 0)
    assert res.p_value == pytest.approx(2 * 0.5 ** 6)
    assert mcnemar_exact([True, False], [True, True]).b01 == 1


def test_mcnemar_rejects_non_binary_scores():
    with pytest.raises(ITIError, match="0/1"):
        mcnemar_exact([0, 1, 0.5], [0, 1, 1])
    assert is_binary([0, 1, 1.0]) and not is_binary([0, 2]) and not is_binary([])


# ------------------------------------------------------------------------------------------------------- Holm
def test_holm_matches_statsmodels():
    _, multipletests = _statsmodels()
    rng = np.random.default_rng(19)
    for m in (1, 2, 5, 12):
        for _ in range(4):
            p = rng.random(m) ** 3
            if m > 2:
                p[1] = p[0]  # a tie
            reject, adjusted, _, _ = multipletests(p, alpha=0.05, method="holm")
            np.testing.assert_allclose(holm(p), adjusted, rtol=1e-12, atol=0)
            assert holm_reject(p, alpha=0.05) == reject.tolist()


def test_holm_hand_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert holm_reject(p) == [True, False, False, True]
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]
    assert holm([]).size == 0 and holm_reject([]) == []
    with pytest.raises(ITIError):
        holm([0.1, float("nan")])


# ----------------------------------------------------------------------------------------------------- draws
def test_rank_p_hand_example():
    baseline = np.zeros(4)
    treatment = np.array([0.5, 0.5, 0.5, 0.5])  # gain 0.5
    draws = np.array([[0.1] * 4, [0.6] * 4, [0.5] * 4, [0.2] * 4])  # gains 0.1, 0.6, 0.5 (a tie), 0.2
    res = against_draws(treatment, baseline, draws)
    assert isinstance(res, DrawsResult)
    assert res.gain == pytest.approx(0.5)
    assert res.n_draws == 4 and res.n_draws_at_or_above == 2
    assert res.rank_p == pytest.approx(3 / 5)
    assert res.draw_gain_mean == pytest.approx(0.35)
    assert res.draw_gain_sd == pytest.approx(np.std([0.1, 0.6, 0.5, 0.2], ddof=1))
    assert (res.draw_gain_min, res.draw_gain_max) == pytest.approx((0.1, 0.6))
    # the paired part: treatment against the draws' per-question mean (0.35)
    assert res.vs_draw_mean.delta == pytest.approx(0.15)
    assert res.vs_draw_mean.mean_a == pytest.approx(0.35)


def test_rank_p_with_five_draws_cannot_go_below_one_sixth():
    rng = np.random.default_rng(20)
    baseline = rng.random(100)
    treatment = baseline + 1.0
    draws = baseline + rng.normal(0, 0.01, size=(5, 100))
    res = against_draws(treatment, baseline, draws)
    assert res.n_draws_at_or_above == 0
    assert res.rank_p == pytest.approx(1 / 6)
    assert res.vs_draw_mean.p_value < 0.01 and res.vs_draw_mean.ci_low > 0.9


def test_a_treatment_equal_to_every_draw_ranks_last():
    rng = np.random.default_rng(21)
    baseline = rng.random(50)
    treatment = rng.random(50)
    res = against_draws(treatment, baseline, np.tile(treatment, (3, 1)))
    assert res.n_draws_at_or_above == 3 and res.rank_p == 1.0
    assert res.vs_draw_mean.p_value == 1.0 and res.vs_draw_mean.delta == 0.0
    assert res.draw_gain_sd == 0.0


def test_single_draw_and_strata_pass_through():
    rng = np.random.default_rng(22)
    base, treat, draw = rng.random((3, 40))
    res = against_draws(treat, base, draw[None, :], strata=np.arange(40) % 4, seed=2)
    assert res.n_draws == 1 and res.draw_gain_sd == 0.0
    assert res.rank_p in (0.5, 1.0)
    assert res.vs_draw_mean == paired_difference(draw, treat, strata=np.arange(40) % 4, seed=2)


# ------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("call,match", [
    (lambda: paired_difference([1.0, 2.0], [1.0, 2.0, 3.0]), "lengths a=2, b=3"),
    (lambda: paired_difference([], []), "empty"),
    (lambda: paired_difference([1.0, float("nan")], [1.0, 2.0]), "NaN"),
    (lambda: paired_difference([1.0, 2.0], [1.0, float("inf")]), "NaN or infinite"),
    (lambda: paired_difference([1.0, 2.0], [1.0, 2.0], strata=[0, 1, 1]), "one fold id per question"),
    (lambda: paired_difference([[1.0]], [[1.0]]), "1-D"),
    (lambda: paired_difference([1.0], [1.0], n_resamples=0), "n_resamples"),
    (lambda: paired_difference([1.0], [1.0], confidence=1.0), "confidence"),
    (lambda: mcnemar_exact([0, 1], [0]), "lengths"),
    (lambda: against_draws([1.0, 2.0], [1.0, 2.0], [1.0, 2.0]), "shape"),
    (lambda: against_draws([1.0, 2.0], [1.0, 2.0], [[1.0, 2.0, 3.0]]), "shape"),
    (lambda: against_draws([1.0, 2.0], [1.0, 2.0], [[1.0, float("nan")]]), "draw 0, question 1"),
    (lambda: against_draws([1.0, 2.0], [1.0], [[1.0, 2.0]]), "lengths"),
    (lambda: holm_reject([0.1], alpha=0), "alpha"),
])
def test_bad_input_raises_one_line_iti_error(call, match):
    with pytest.raises(ITIError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
