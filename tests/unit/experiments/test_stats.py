"""The experiment statistics, each checked against an independent implementation: statsmodels'
Welch test, a numerical inversion of the mixture likelihood ratio, a bootstrap of the delta
method, the Pearson correlation identity of CUPED, and simulated repeated looks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sps
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from feedforge.errors import ValidationError
from feedforge.experiments import stats


def test_welch_matches_statsmodels() -> None:
    rng = np.random.default_rng(0)
    t = rng.gamma(2.0, 3.0, 400)
    c = rng.gamma(2.0, 2.8, 650)
    lift = stats.welch(t, c, alpha=0.05)
    _, p, _ = ttest_ind(t, c, usevar="unequal")
    lo, hi = CompareMeans(DescrStatsW(t), DescrStatsW(c)).tconfint_diff(
        alpha=0.05, usevar="unequal"
    )
    assert lift.p_value == pytest.approx(p, rel=1e-9)
    assert lift.absolute_ci == pytest.approx((lo, hi), rel=1e-9)
    assert lift.absolute == pytest.approx(t.mean() - c.mean())
    assert (lift.n_treatment, lift.n_control) == (400, 650)


def test_relative_lift_interval_covers_like_a_bootstrap() -> None:
    # The delta method's standard error of m_t/m_c - 1 against a bootstrap's.
    rng = np.random.default_rng(1)
    t = rng.exponential(5.5, 2000)
    c = rng.exponential(5.0, 2000)
    lift = stats.welch(t, c)
    boots = [rng.choice(t, len(t)).mean() / rng.choice(c, len(c)).mean() - 1 for _ in range(2000)]
    se_delta = (lift.relative_ci[1] - lift.relative_ci[0]) / (2 * sps.norm.ppf(0.975))
    assert se_delta == pytest.approx(np.std(boots, ddof=1), rel=0.08)
    assert lift.relative == pytest.approx(t.mean() / c.mean() - 1)


def test_ratio_metric_variance_matches_a_bootstrap_over_units() -> None:
    # CTR per arm: units (users) are resampled, not impressions.
    rng = np.random.default_rng(2)
    impressions = rng.poisson(20, 3000) + 1
    clicks = rng.binomial(impressions, rng.beta(2, 18, 3000))
    ratio, var = stats.ratio_estimate(clicks, impressions)
    assert ratio == pytest.approx(clicks.sum() / impressions.sum())
    boots = []
    for _ in range(2000):
        pick = rng.integers(0, 3000, 3000)
        boots.append(clicks[pick].sum() / impressions[pick].sum())
    assert math.sqrt(var) == pytest.approx(np.std(boots, ddof=1), rel=0.08)


def test_delta_ratio_interval_covers_the_true_ctr_difference() -> None:
    # 400 simulated experiments with a known CTR difference: ~95% of intervals cover it.
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(400):
        arms = []
        for ctr in (0.11, 0.10):
            n = rng.poisson(15, 500) + 1
            arms.append((rng.binomial(n, ctr), n))
        lift = stats.delta_ratio(arms[0], arms[1])
        covered += lift.absolute_ci[0] <= 0.01 <= lift.absolute_ci[1]
    assert 0.92 <= covered / 400 <= 0.98


def test_cuped_reduction_is_the_squared_correlation() -> None:
    rng = np.random.default_rng(4)
    x = rng.gamma(2, 10, 5000)
    y = 0.8 * x + rng.normal(0, 8, 5000)
    result = stats.cuped(y, x)
    r = sps.pearsonr(y, x).statistic
    assert result.variance_reduction == pytest.approx(r**2, rel=1e-9)
    # theta is the OLS slope of y on x
    assert result.theta == pytest.approx(sps.linregress(x, y).slope, rel=1e-9)
    assert result.adjusted.mean() == pytest.approx(y.mean())


def test_cuped_with_a_constant_covariate_changes_nothing() -> None:
    y = np.arange(10, dtype=float)
    result = stats.cuped(y, np.ones(10))
    assert result.theta == 0.0
    assert np.array_equal(result.adjusted, y)
    assert result.variance_reduction == 0.0


def test_sample_ratio_flags_a_skew_and_matches_the_textbook_statistic() -> None:
    fine = stats.sample_ratio({"a": 5010, "b": 4990}, {"a": 0.5, "b": 0.5})
    assert not fine.mismatch
    assert fine.chi2 == pytest.approx((10**2 / 5000) * 2)
    # 1% of 100,000 units moved from b to a
    skew = stats.sample_ratio({"a": 51_000, "b": 49_000}, {"a": 0.5, "b": 0.5})
    assert skew.mismatch and skew.p_value < 0.001
    assert skew.p_value == pytest.approx(sps.chi2.sf(skew.chi2, 1))


def test_sample_ratio_refuses_arms_that_do_not_match() -> None:
    with pytest.raises(ValidationError, match="counted but"):
        stats.sample_ratio({"a": 1}, {"a": 0.5, "b": 0.5})


def test_msprt_interval_is_where_the_likelihood_ratio_stays_below_one_over_alpha() -> None:
    # Independent inversion: solve Lambda(theta) = 1/alpha numerically.
    diff, var, tau, alpha = 0.7, 0.09, 0.5, 0.05

    def log_lr(theta: float) -> float:
        total = var + tau**2
        return 0.5 * math.log(var / total) + tau**2 * (diff - theta) ** 2 / (2 * var * total)

    hi = optimize.brentq(lambda th: log_lr(th) - math.log(1 / alpha), diff, diff + 10)
    lo = optimize.brentq(lambda th: log_lr(th) - math.log(1 / alpha), diff - 10, diff)
    seq = stats.msprt(diff, var, tau, alpha)
    assert seq.ci == pytest.approx((lo, hi), rel=1e-9)
    assert seq.p_value == pytest.approx(math.exp(-log_lr(0.0)))


def test_msprt_is_wider_than_the_fixed_horizon_interval() -> None:
    seq = stats.msprt(0.0, 1.0, 1.0, 0.05)
    assert seq.ci[1] > sps.norm.ppf(0.975)
    assert seq.p_value == 1.0  # no evidence at all


def test_peeking_at_the_sequential_test_keeps_false_positives_below_alpha() -> None:
    # 400 A/A tests read after each of 20 batches: the fixed-horizon Welch test, peeked at,
    # rejects far more often than alpha; the mixture SPRT stays below it.
    rng = np.random.default_rng(5)
    runs, looks, per_look = 400, 20, 50
    naive = sequential = 0
    for _ in range(runs):
        t = rng.exponential(1.0, looks * per_look)
        c = rng.exponential(1.0, looks * per_look)
        hit_naive = hit_seq = False
        for look in range(1, looks + 1):
            n = look * per_look
            lift = stats.welch(t[:n], c[:n])
            sd = math.sqrt((t[:n].var(ddof=1) + c[:n].var(ddof=1)) / 2)
            hit_naive |= lift.p_value < 0.05
            hit_seq |= stats.sequential_lift(lift, sd, mixture_sd=0.1).p_value < 0.05
        naive += hit_naive
        sequential += hit_seq
    assert naive / runs > 0.15
    assert sequential / runs <= 0.05


def test_holm_matches_its_definition() -> None:
    p = [0.01, 0.04, 0.03, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.09, 0.09 (monotone), 0.5
    assert stats.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([]) == []


@pytest.mark.parametrize(
    ("values", "message"),
    [([1.0], "at least 2"), ([1.0, math.nan], "NaN"), ([[1.0, 2.0]], "one value per unit")],
)
def test_bad_arms_are_refused_with_the_reason(values: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        stats.welch(values, [1.0, 2.0, 3.0])
