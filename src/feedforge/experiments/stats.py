"""The statistics of an online experiment: lifts with intervals, CUPED, sample-ratio checks,
always-valid sequential tests and multiple-comparison corrections.

Every function takes one value per **unit** (user) and arm, so units, not feeds or
impressions, are the independent observations. scipy supplies the distributions and the
chi-square test, statsmodels the multiple-testing corrections; what they lack (the delta
method's ratio variances, CUPED's adjustment, the mixture SPRT) is written here and
cross-checked against independent implementations in ``tests/unit/experiments``.

Formulas (``t`` treatment, ``c`` control, ``n`` units, ``m`` the mean of a unit metric,
``s^2`` its sample variance, ``V = s_t^2/n_t + s_c^2/n_c``):

* **Welch** (means): ``d = m_t - m_c``, interval ``d +- t_{1-a/2, nu} sqrt(V)`` with
  Welch-Satterthwaite ``nu = V^2 / ((s_t^2/n_t)^2/(n_t-1) + (s_c^2/n_c)^2/(n_c-1))``.
* **Relative lift** ``r = m_t/m_c - 1`` by the delta method:
  ``Var(r) = s_t^2/(n_t m_c^2) + m_t^2 s_c^2/(n_c m_c^4)``, normal interval.
* **Ratio metrics** (CTR = clicks/impressions, summed per arm over units): per arm
  ``R = mean(x)/mean(y)`` with ``Var(R) = (s_x^2 - 2 R s_xy + R^2 s_y^2) / (n mean(y)^2)``
  (Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric Analytics"); the difference
  and the relative lift then as above, with normal intervals.
* **CUPED** (Deng, Xu, Kohavi & Walker 2013): ``y' = y - theta (x - mean(x))`` with
  ``theta = cov(y, x) / var(x)`` pooled over both arms, ``x`` the unit's pre-experiment value
  of the same metric. The variance reduction is ``1 - var(y')/var(y) = corr(y, x)^2``.
* **Sample-ratio mismatch**: Pearson's chi-square of the units per arm against the
  configured weights (``scipy.stats.chisquare``); ``p < 0.001`` flags the experiment.
* **Sequential (always valid)**: the mixture SPRT of Johari, Koomen, Pekelis & Walsh
  ("Always Valid Inference", 2017/2022) with a normal mixing distribution ``N(0, tau^2)`` on
  the effect ``d``: ``Lambda = sqrt(V/(V+tau^2)) exp(tau^2 d^2 / (2 V (V+tau^2)))``. The
  always-valid p-value is ``min(1, 1/Lambda)`` and the confidence sequence is
  ``d +- sqrt(V (V+tau^2)/tau^2 (2 log(1/a) + log((V+tau^2)/V)))``. By Ville's inequality the
  chance that ``p <= a`` at *any* look, or that the sequence ever misses the true effect, is at
  most ``a`` (under the normal approximation of ``d``), so results may be read at any time.
  ``tau = mixture_sd * s`` with ``s`` the pooled standard deviation of the metric.
* **Several comparisons**: Holm's step-down adjusted p-values (statsmodels); intervals are
  widened by Bonferroni (``a/k`` for ``k`` comparisons), which Holm's test never contradicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from feedforge.errors import ValidationError

SRM_ALPHA = 0.001
"""The sample-ratio check's significance level: below it the allocation is broken."""
MIN_UNITS = 2
"""Fewest units per arm a variance needs."""


@dataclass(frozen=True)
class Lift:
    """Treatment against control on one metric.

    Attributes:
        control: Control's estimate (mean, or ratio for a ratio metric).
        treatment: Treatment's estimate.
        n_control: Units in control.
        n_treatment: Units in treatment.
        absolute: ``treatment - control``.
        absolute_ci: Its interval at the requested level.
        relative: ``treatment / control - 1`` (NaN when control is 0).
        relative_ci: Its delta-method interval.
        p_value: Two-sided p-value of no difference.
        std_error: Standard error of ``absolute``.
        method: ``"welch"`` or ``"delta"``.
    """

    control: float
    treatment: float
    n_control: int
    n_treatment: int
    absolute: float
    absolute_ci: tuple[float, float]
    relative: float
    relative_ci: tuple[float, float]
    p_value: float
    std_error: float
    method: str


@dataclass(frozen=True)
class Sequential:
    """The always-valid mixture SPRT of one difference (see the module docs).

    Attributes:
        p_value: Always-valid p-value at this look.
        ci: The confidence sequence's interval at this look.
        tau: The mixing distribution's standard deviation (metric units).
    """

    p_value: float
    ci: tuple[float, float]
    tau: float


@dataclass(frozen=True)
class SampleRatio:
    """The sample-ratio-mismatch check.

    Attributes:
        counts: Units per arm.
        expected: Units per arm the weights expect.
        chi2: Pearson's statistic.
        p_value: Its p-value.
        mismatch: ``p_value < alpha``: the allocation is broken and no winner is declared.
    """

    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool


def _values(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValidationError(f"{name}: expected one value per unit, got shape {array.shape}")
    if len(array) < MIN_UNITS:
        raise ValidationError(f"{name}: {len(array)} units; at least {MIN_UNITS} are needed")
    if not np.isfinite(array).all():
        raise ValidationError(f"{name}: holds NaN or infinite values")
    return array


def _relative(
    t: float, c: float, var_t: float, var_c: float, z: float
) -> tuple[float, tuple[float, float]]:
    """``t/c - 1`` and its delta-method interval from the two estimates' variances."""
    if c == 0:
        return math.nan, (math.nan, math.nan)
    rel = t / c - 1.0
    se = math.sqrt(var_t / c**2 + t**2 * var_c / c**4)
    return rel, (rel - z * se, rel + z * se)


def welch(
    treatment: Sequence[float] | np.ndarray,
    control: Sequence[float] | np.ndarray,
    alpha: float = 0.05,
) -> Lift:
    """Difference of two means with Welch's interval and test (see the module docs).

    Args:
        treatment: One value per treatment unit.
        control: One value per control unit.
        alpha: 1 - the interval's level.

    Raises:
        ValidationError: an arm has fewer than :data:`MIN_UNITS` units or non-finite values.
    """
    t = _values("treatment", treatment)
    c = _values("control", control)
    vt, vc = t.var(ddof=1) / len(t), c.var(ddof=1) / len(c)
    var = vt + vc
    diff = float(t.mean() - c.mean())
    if var == 0:
        df = float(len(t) + len(c) - 2)
        p = 1.0 if diff == 0 else 0.0
    else:
        df = var**2 / (vt**2 / (len(t) - 1) + vc**2 / (len(c) - 1))
        p = float(2 * sps.t.sf(abs(diff) / math.sqrt(var), df))
    half = float(sps.t.ppf(1 - alpha / 2, df)) * math.sqrt(var)
    rel, rel_ci = _relative(
        float(t.mean()), float(c.mean()), vt, vc, float(sps.norm.ppf(1 - alpha / 2))
    )
    return Lift(
        control=float(c.mean()),
        treatment=float(t.mean()),
        n_control=len(c),
        n_treatment=len(t),
        absolute=diff,
        absolute_ci=(diff - half, diff + half),
        relative=rel,
        relative_ci=rel_ci,
        p_value=p,
        std_error=math.sqrt(var),
        method="welch",
    )


def ratio_estimate(
    numerator: Sequence[float] | np.ndarray, denominator: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """``sum(numerator) / sum(denominator)`` over one arm's units and its delta-method
    variance (see the module docs).

    Raises:
        ValidationError: the arrays differ in length, hold too few units, or the
            denominator sums to 0.
    """
    x = _values("numerator", numerator)
    y = _values("denominator", denominator)
    if len(x) != len(y):
        raise ValidationError(f"ratio: {len(x)} numerators but {len(y)} denominators")
    my = y.mean()
    if my == 0:
        raise ValidationError("ratio: the denominator sums to 0 (no impressions?)")
    ratio = x.mean() / my
    cov = np.cov(x, y, ddof=1)
    var = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (len(x) * my**2)
    return float(ratio), float(max(var, 0.0))


def delta_ratio(
    treatment: tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray],
    control: tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray],
    alpha: float = 0.05,
) -> Lift:
    """Difference of two ratio metrics (e.g. CTR), each arm given as per-unit
    ``(numerators, denominators)``, with delta-method normal intervals.

    Raises:
        ValidationError: see :func:`ratio_estimate`.
    """
    rt, vt = ratio_estimate(*treatment)
    rc, vc = ratio_estimate(*control)
    z = float(sps.norm.ppf(1 - alpha / 2))
    se = math.sqrt(vt + vc)
    diff = rt - rc
    p = float(2 * sps.norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    rel, rel_ci = _relative(rt, rc, vt, vc, z)
    return Lift(
        control=rc,
        treatment=rt,
        n_control=len(control[0]),
        n_treatment=len(treatment[0]),
        absolute=diff,
        absolute_ci=(diff - z * se, diff + z * se),
        relative=rel,
        relative_ci=rel_ci,
        p_value=p,
        std_error=se,
        method="delta",
    )


@dataclass(frozen=True)
class Cuped:
    """CUPED-adjusted values (see the module docs).

    Attributes:
        adjusted: ``y - theta (x - mean(x))``, aligned with the input.
        theta: The pooled regression coefficient.
        variance_reduction: ``1 - var(adjusted)/var(y)``.
    """

    adjusted: np.ndarray
    theta: float
    variance_reduction: float


def cuped(values: Sequence[float] | np.ndarray, covariate: Sequence[float] | np.ndarray) -> Cuped:
    """Adjust per-unit ``values`` by their pre-experiment ``covariate`` (all arms pooled,
    so the adjustment is the same function of ``x`` in every arm and the lift stays unbiased).

    A constant covariate (no pre-period signal) leaves the values as they are (theta 0).

    Raises:
        ValidationError: the arrays differ in length or hold too few or non-finite values.
    """
    y = _values("values", values)
    x = _values("covariate", covariate)
    if len(x) != len(y):
        raise ValidationError(f"cuped: {len(y)} values but {len(x)} covariates")
    var_x = x.var(ddof=1)
    theta = float(np.cov(y, x, ddof=1)[0, 1] / var_x) if var_x > 0 else 0.0
    adjusted = y - theta * (x - x.mean())
    var_y = y.var(ddof=1)
    reduction = float(1 - adjusted.var(ddof=1) / var_y) if var_y > 0 else 0.0
    return Cuped(adjusted=adjusted, theta=theta, variance_reduction=reduction)


def sample_ratio(
    counts: Mapping[str, int], weights: Mapping[str, float], alpha: float = SRM_ALPHA
) -> SampleRatio:
    """Pearson's chi-square of units per arm against the configured weights.

    Raises:
        ValidationError: arms of ``counts`` and ``weights`` differ, or no unit was counted.
    """
    if set(counts) != set(weights):
        raise ValidationError(
            f"sample ratio: arms {sorted(counts)} counted but {sorted(weights)} configured"
        )
    arms = sorted(counts)
    observed = np.array([counts[a] for a in arms], dtype=np.float64)
    total = observed.sum()
    if total <= 0:
        raise ValidationError("sample ratio: no units were counted")
    w = np.array([weights[a] for a in arms], dtype=np.float64)
    expected = total * w / w.sum()
    chi2, p = sps.chisquare(observed, expected)
    return SampleRatio(
        counts={a: int(counts[a]) for a in arms},
        expected={a: float(e) for a, e in zip(arms, expected, strict=True)},
        chi2=float(chi2),
        p_value=float(p),
        mismatch=bool(p < alpha),
    )


def msprt(
    diff: float, variance: float, tau: float, alpha: float = 0.05, null: float = 0.0
) -> Sequential:
    """The normal-mixture SPRT of a difference ``diff`` with variance ``variance``
    (see the module docs): an always-valid p-value of ``d = null`` and the confidence
    sequence at level ``1 - alpha``.

    Raises:
        ValidationError: ``variance`` or ``tau`` is not positive.
    """
    if not (variance > 0 and tau > 0):
        raise ValidationError(f"msprt: variance {variance} and tau {tau} must be positive")
    tau2 = tau * tau
    total = variance + tau2
    log_lr = 0.5 * math.log(variance / total) + tau2 * (diff - null) ** 2 / (2 * variance * total)
    p = 1.0 if log_lr <= 0 else min(1.0, math.exp(-log_lr))
    half = math.sqrt(
        variance * total / tau2 * (2 * math.log(1 / alpha) + math.log(total / variance))
    )
    return Sequential(p_value=p, ci=(diff - half, diff + half), tau=tau)


def sequential_lift(
    lift: Lift, pooled_sd: float, mixture_sd: float = 0.1, alpha: float = 0.05
) -> Sequential:
    """:func:`msprt` of a :class:`Lift`'s difference, with ``tau = mixture_sd * pooled_sd``.

    Raises:
        ValidationError: the lift has no variance or ``mixture_sd`` is not positive.
    """
    if mixture_sd <= 0:
        raise ValidationError(f"sequential: mixture_sd must be positive, got {mixture_sd}")
    return msprt(lift.absolute, lift.std_error**2, mixture_sd * pooled_sd, alpha)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in input order."""
    if not len(p_values):
        return []
    return [float(p) for p in multipletests(list(p_values), method="holm")[1]]
