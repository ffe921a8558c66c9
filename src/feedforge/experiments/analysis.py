"""The analysis of one experiment: every metric's lift with its intervals, CUPED, the
sample-ratio check, the always-valid sequential test, the multiple-comparison correction,
guardrails and, for interleaving, the units' preferences. The formulas are in
:mod:`feedforge.experiments.stats`.

The decision rule: no winner while the sample ratio mismatches (the result is marked
untrustworthy). Otherwise a treatment wins when its primary metric's **always-valid**
(sequential) p-value, Holm-adjusted over the treatments, is below alpha with a positive lift:
the rule holds at any time the analysis is read. The fixed-horizon Welch/delta results and
CUPED's are reported beside it for a reading at the planned end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps

from feedforge.errors import ValidationError
from feedforge.events.log import EventLog
from feedforge.experiments import stats
from feedforge.experiments.definition import METRICS, Experiment
from feedforge.experiments.online import OnlineMetrics, online_metrics, read_feed_log
from feedforge.workdir import Workdir


def _interval(ci: tuple[float, float]) -> list[float | None]:
    return [_num(ci[0]), _num(ci[1])]


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _lift_json(lift: stats.Lift) -> dict[str, Any]:
    return {
        "control_mean": _num(lift.control),
        "treatment_mean": _num(lift.treatment),
        "absolute_lift": _num(lift.absolute),
        "absolute_ci": _interval(lift.absolute_ci),
        "relative_lift": _num(lift.relative),
        "relative_ci": _interval(lift.relative_ci),
        "p_value": _num(lift.p_value),
        "method": lift.method,
    }


def analyze(
    experiment: Experiment,
    metrics: OnlineMetrics,
    alpha: float = 0.05,
    mixture_sd: float = 0.1,
) -> dict[str, Any]:
    """The analysis as a JSON-ready dict (see the module docs).

    Raises:
        ValidationError: an arm has fewer units than the methods need (names the experiment
            and the variant).
    """
    units = metrics.units
    control = experiment.control_variant
    names = [v.name for v in experiment.variants]
    counts = {name: int((units.get_column("variant") == name).sum()) for name in names}
    out: dict[str, Any] = {
        "experiment": experiment.id,
        "mode": experiment.mode,
        "status": experiment.status,
        "control": control,
        "primary_metric": experiment.primary_metric,
        "alpha": alpha,
        "units": counts,
        "period": [
            metrics.start.isoformat() if metrics.start else None,
            metrics.end.isoformat() if metrics.end else None,
        ],
        "data_quality": metrics.counts,
        "guardrails": metrics.guardrails,
    }
    if experiment.mode == "interleave":
        out["interleaving"] = interleaving_preference(experiment, metrics)
        winner = out["interleaving"]["winner"]
        out["decision"] = {
            "winner": winner,
            "reason": "the units' preference is significant"
            if winner
            else "no significant preference",
        }
        return out

    srm = stats.sample_ratio(counts, {v.name: v.weight for v in experiment.variants})
    out["srm"] = {
        "counts": srm.counts,
        "expected": srm.expected,
        "chi2": srm.chi2,
        "p_value": srm.p_value,
        "mismatch": srm.mismatch,
    }
    out["trustworthy"] = not srm.mismatch
    for name, n in counts.items():
        if n < stats.MIN_UNITS:
            raise ValidationError(
                f"experiment {experiment.id!r}: variant {name!r} has {n} exposed units; the "
                f"analysis needs at least {stats.MIN_UNITS} per variant"
            )
    treatments = [n for n in names if n != control]
    results: list[dict[str, Any]] = []
    corrected_alpha = alpha / (len(treatments) * len(METRICS))
    arm = {name: units.filter(pl.col("variant") == name) for name in names}
    for metric in METRICS:
        for treatment in treatments:
            t, c = arm[treatment], arm[control]
            row: dict[str, Any] = {"metric": metric, "variant": treatment}
            row["primary"] = metric == experiment.primary_metric
            if metric == "ctr":
                if t.get_column("impressions").sum() == 0 or c.get_column("impressions").sum() == 0:
                    row["skipped"] = "no impressions were attributed"
                    results.append(row)
                    continue
                pair_t = (t.get_column("clicks").to_numpy(), t.get_column("impressions").to_numpy())
                pair_c = (c.get_column("clicks").to_numpy(), c.get_column("impressions").to_numpy())
                lift = stats.delta_ratio(pair_t, pair_c, alpha)
                wide = stats.delta_ratio(pair_t, pair_c, corrected_alpha)
                pooled_sd = math.sqrt(lift.std_error**2 * min(len(t), len(c)) / 2)
            else:
                y_t, y_c = t.get_column(metric).to_numpy(), c.get_column(metric).to_numpy()
                lift = stats.welch(y_t, y_c, alpha)
                wide = stats.welch(y_t, y_c, corrected_alpha)
                pooled_sd = math.sqrt((y_t.var(ddof=1) + y_c.var(ddof=1)) / 2)
                row["cuped"] = _cuped(metric, t, c, alpha)
            row.update(_lift_json(lift))
            row["absolute_ci_corrected"] = _interval(wide.absolute_ci)
            if lift.std_error > 0 and pooled_sd > 0:
                seq = stats.sequential_lift(lift, pooled_sd, mixture_sd, alpha)
                row["sequential"] = {
                    "p_value": seq.p_value,
                    "ci": _interval(seq.ci),
                    "tau": seq.tau,
                }
            else:
                row["sequential"] = {"p_value": 1.0, "ci": [None, None], "tau": None}
            results.append(row)
    tested = [r for r in results if "p_value" in r]
    for row, adjusted in zip(tested, stats.holm([r["p_value"] for r in tested]), strict=True):
        row["p_value_holm"] = adjusted
    seq_adjusted = stats.holm([r["sequential"]["p_value"] for r in tested])
    for row, adjusted in zip(tested, seq_adjusted, strict=True):
        row["sequential"]["p_value_holm"] = adjusted
    out["metrics"] = results
    out["decision"] = _decide(experiment, results, srm.mismatch, alpha)
    out["corrections"] = {
        "comparisons": len(tested),
        "p_values": "holm",
        "intervals": f"bonferroni (alpha / {len(treatments) * len(METRICS)})",
    }
    return out


def _cuped(metric: str, t: pl.DataFrame, c: pl.DataFrame, alpha: float) -> dict[str, Any]:
    y = np.concatenate([t.get_column(metric).to_numpy(), c.get_column(metric).to_numpy()])
    x = np.concatenate(
        [t.get_column(f"pre_{metric}").to_numpy(), c.get_column(f"pre_{metric}").to_numpy()]
    )
    adjusted = stats.cuped(y, x)
    lift = stats.welch(adjusted.adjusted[: t.height], adjusted.adjusted[t.height :], alpha)
    return {
        **_lift_json(lift),
        "theta": adjusted.theta,
        "variance_reduction": adjusted.variance_reduction,
    }


def _decide(
    experiment: Experiment, results: list[dict[str, Any]], mismatch: bool, alpha: float
) -> dict[str, Any]:
    if mismatch:
        return {
            "winner": None,
            "reason": "sample ratio mismatch (p < 0.001): the allocation is broken, so the "
            "results are untrustworthy; find the cause before reading them",
        }
    primary = [r for r in results if r["primary"] and "sequential" in r and r.get("absolute_lift")]
    winners = [
        r
        for r in primary
        if r["sequential"]["p_value_holm"] < alpha and (r["absolute_lift"] or 0) > 0
    ]
    if not winners:
        return {
            "winner": None,
            "reason": f"no treatment beats {experiment.control_variant} on "
            f"{experiment.primary_metric} with an always-valid p < {alpha}",
        }
    best = max(winners, key=lambda r: r["absolute_lift"])
    return {
        "winner": best["variant"],
        "reason": f"{experiment.primary_metric}: always-valid Holm p "
        f"{best['sequential']['p_value_holm']:.3g} < {alpha}, lift {best['absolute_lift']:.4g}",
    }


def interleaving_preference(experiment: Experiment, metrics: OnlineMetrics) -> dict[str, Any]:
    """The units' preferences in an interleaving experiment.

    Per unit, ``d`` = the first variant's credit minus the second's (the objective's value
    earned on each team's slots over the unit's feeds). Two tests are reported:

    * **credit** (the decision): Welch's one-sample t-test of ``mean(d) = 0`` with its
      interval: the mean per-unit credit difference estimates the same kind of quantity as
      an A/B test's mean lift (what each list earns per user), so its direction agrees with
      the A/B winner's in expectation;
    * **preference**: the sign test (``scipy.stats.binomtest``) of the units with ``d != 0``
      against 1/2, the classic per-user vote. It weighs every unit alike, so a variant that
      wins small with many users and loses big with few wins the vote and loses the mean.

    Raises:
        ValidationError: no unit earned credit for either team, or fewer than
            :data:`~feedforge.experiments.stats.MIN_UNITS` units.
    """
    frame = metrics.interleaving
    a, b = (v.name for v in experiment.variants)
    if frame is None or not frame.height:
        raise ValidationError(f"experiment {experiment.id!r}: no interleaved feed in the log")
    diff = (frame.get_column(f"credit_{a}") - frame.get_column(f"credit_{b}")).to_numpy()
    wins_a, wins_b = int((diff > 0).sum()), int((diff < 0).sum())
    if wins_a + wins_b == 0:
        raise ValidationError(
            f"experiment {experiment.id!r}: no unit earned credit on an interleaved slot yet; "
            "the tests need at least one"
        )
    if len(diff) < stats.MIN_UNITS:
        raise ValidationError(
            f"experiment {experiment.id!r}: {len(diff)} interleaved units; the credit test "
            f"needs at least {stats.MIN_UNITS}"
        )
    sign = sps.binomtest(wins_a, wins_a + wins_b, 0.5)
    share_ci = sign.proportion_ci(0.95)
    credit = sps.ttest_1samp(diff, 0.0)
    mean = float(diff.mean())
    half = float(sps.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
    significant = bool(credit.pvalue < 0.05)
    return {
        "units": int(frame.height),
        "credit": {
            "mean_difference": mean,
            "ci": [mean - half, mean + half],
            "p_value": float(credit.pvalue),
            "first": a,
        },
        "prefer": {a: wins_a, b: wins_b, "tie": int(frame.height - wins_a - wins_b)},
        "delta": (wins_a - wins_b) / (wins_a + wins_b),
        "share_preferring_first": wins_a / (wins_a + wins_b),
        "share_ci": [float(share_ci.low), float(share_ci.high)],
        "p_value": float(sign.pvalue),
        "winner": (a if mean > 0 else b) if significant else None,
    }


def analyze_logged(
    experiment: Experiment,
    workdir: Workdir,
    value: Mapping[str, float],
    alpha: float = 0.05,
    mixture_sd: float = 0.1,
) -> dict[str, Any]:
    """:func:`analyze` of an experiment from a work directory's feed and event logs.

    Raises:
        DataError: no feed was logged.
        ValidationError: an arm has too few units (see :func:`analyze`).
    """
    log = EventLog(workdir.events_dir)
    with log.reading():
        metrics = online_metrics(experiment, read_feed_log(workdir.feedlog_dir), log.scan(), value)
    return analyze(experiment, metrics, alpha=alpha, mixture_sd=mixture_sd)
