"""Drift: how far what the service serves has moved from a baseline, per feature and score.

Computed from profiles (:mod:`feedforge.monitoring.profile`), never raw rows, so it is cheap
enough to run continuously. Per column, over the baseline's bins (a null count is one more
bin):

* **PSI**, the population stability index ``sum_i (q_i - p_i) ln(q_i / p_i)`` of the
  baseline's shares ``p`` and the served shares ``q``, each share floored at
  :data:`PSI_FLOOR` (an empty bin would make it infinite), i.e. the symmetric
  Kullback-Leibler divergence. Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 shift.
* a second statistic by type: for a **numeric** column the two-sample
  **Kolmogorov-Smirnov** statistic ``max_b |P(x < e_b) - Q(x < e_b)|`` at the bin edges
  (exactly scipy's ``ks_2samp`` statistic of the rows' bin indices; a lower bound of the raw
  rows' statistic that the quantile bins keep within about one bin's share of it); for a
  **categorical** column the **Jensen-Shannon divergence** in bits (0 identical, 1
  disjoint), scipy's ``jensenshannon(p, q, base=2) ** 2``.

A column *drifts* when the served profile holds at least ``drift_min_rows`` rows and its PSI
or its second statistic is over the configured threshold (``monitoring.psi_threshold``,
``ks_threshold``, ``js_threshold``; columns in ``drift_ignore`` are reported, never flagged)
**and** the shift is significant for the rows compared, so that a small sample's noise cannot
cross an effect-size threshold. Each column is tested at ``monitoring.drift_alpha`` divided by
the number of columns tested (Bonferroni), so ``drift_alpha`` bounds the chance that a check
flags any column when nothing moved:

* PSI: with ``n`` baseline and ``m`` served rows over ``B`` non-empty bins, ``PSI * n m /
  (n + m)`` is asymptotically chi-square with ``B - 1`` degrees of freedom when nothing moved
  (PSI is a symmetric KL divergence: Yurdakul, *Statistical properties of the population
  stability index*, 2018), so the gate is ``PSI > chi2.ppf(1 - alpha, B - 1) (1/n + 1/m)``;
  the Jensen-Shannon divergence (over the same bins) uses the same gate;
* KS: the two-sample critical value ``sqrt(-ln(alpha / 2) / 2) sqrt(1/n + 1/m)``.

The baseline (``monitoring.drift_baseline``) is the version's own first served
windows holding ``baseline_rows`` rows (default), or its reference profile: the ranker's
training rows, written at publish. The second differs from any served feed by the logging
policy's selection (the served rows are the ranker's top picks, the training rows what an
older policy showed), so it measures the training-serving gap rather than change over time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import chi2

from feedforge.config import MonitoringConfig
from feedforge.monitoring.profile import ColumnCounts, ColumnSpec, Profile

PSI_FLOOR = 1e-4
"""Shares below this count as this much in PSI (so an empty bin costs a bounded amount)."""


def _shares(counts: ColumnCounts) -> np.ndarray:
    full = np.append(counts.bins, counts.nulls).astype(np.float64)
    total = full.sum()
    return full / total if total else full


def psi(baseline: ColumnCounts, served: ColumnCounts) -> float:
    """The population stability index of two columns' counts over the same bins (see the
    module docs)."""
    p = np.maximum(_shares(baseline), PSI_FLOOR)
    q = np.maximum(_shares(served), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(baseline: ColumnCounts, served: ColumnCounts) -> float:
    """The two-sample Kolmogorov-Smirnov statistic over the bins (nulls left out)."""
    p, q = baseline.bins.astype(np.float64), served.bins.astype(np.float64)
    if not p.sum() or not q.sum():
        return 0.0
    return float(np.max(np.abs(np.cumsum(p) / p.sum() - np.cumsum(q) / q.sum())))


def js_divergence(baseline: ColumnCounts, served: ColumnCounts) -> float:
    """The Jensen-Shannon divergence (base 2) of two columns' shares (nulls a category)."""
    p, q = _shares(baseline), _shares(served)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return max(0.0, (kl(p) + kl(q)) / 2)


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift.

    Attributes:
        feature: The column (a feature, ``score`` or ``score_<head>``).
        kind: ``numeric`` or ``categorical``.
        psi: Population stability index.
        statistic: The second statistic's name, ``ks`` (numeric) or ``js`` (categorical).
        value: The second statistic's value.
        baseline_rows: Rows of the baseline.
        served_rows: Rows served.
        null_rate: Served share of nulls (baseline's in ``baseline_null_rate``).
        default_rate: Served share of rows at the missing-record default (baseline's in
            ``baseline_default_rate``).
        drifted: Over a threshold, with at least ``drift_min_rows`` rows served.
        reason: Which threshold it crossed (``""`` when none or too few rows).
    """

    feature: str
    kind: str
    psi: float
    statistic: str
    value: float
    baseline_rows: int
    served_rows: int
    null_rate: float
    baseline_null_rate: float
    default_rate: float
    baseline_default_rate: float
    drifted: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The drift as a JSON object."""
        return asdict(self)


def _rate(n: int, total: int) -> float:
    return n / total if total else 0.0


def psi_critical(baseline: ColumnCounts, served: ColumnCounts, alpha: float) -> float:
    """The PSI a column must pass to be significant at ``alpha`` (see the module docs)."""
    n, m = baseline.rows, served.rows
    if not n or not m:
        return math.inf
    full = np.append(baseline.bins + served.bins, baseline.nulls + served.nulls)
    dof = max(int(np.count_nonzero(full)) - 1, 1)
    return float(chi2.ppf(1.0 - alpha, dof)) * (1.0 / n + 1.0 / m)


def ks_critical(baseline: ColumnCounts, served: ColumnCounts, alpha: float) -> float:
    """The KS statistic a column must pass to be significant at ``alpha``."""
    n, m = int(baseline.bins.sum()), int(served.bins.sum())
    if not n or not m:
        return math.inf
    return math.sqrt(-math.log(alpha / 2.0) / 2.0) * math.sqrt(1.0 / n + 1.0 / m)


def column_drift(
    spec: ColumnSpec,
    baseline: ColumnCounts,
    served: ColumnCounts,
    config: MonitoringConfig,
    served_rows: int | None = None,
    alpha: float | None = None,
) -> ColumnDrift:
    """One column's drift against the thresholds of ``config``; ``served_rows`` is the
    served profile's row count (default: the column's own), which ``drift_min_rows``
    applies to; ``alpha`` the column's significance level (default ``drift_alpha``)."""
    alpha = config.drift_alpha if alpha is None else alpha
    value_psi = psi(baseline, served)
    psi_gate = psi_critical(baseline, served, alpha)
    if spec.kind == "numeric":
        statistic, value, limit = "ks", ks_statistic(baseline, served), config.ks_threshold
        gate = ks_critical(baseline, served, alpha)
    else:
        statistic, value, limit = "js", js_divergence(baseline, served), config.js_threshold
        gate = psi_gate if value_psi > psi_gate else math.inf
    enough = (
        (served.rows if served_rows is None else served_rows) >= config.drift_min_rows
        and baseline.rows > 0
        and spec.name not in config.drift_ignore
    )
    reasons = []
    if enough and value_psi > config.psi_threshold and value_psi > psi_gate:
        reasons.append(f"psi {value_psi:.3f} > {config.psi_threshold:g}")
    if enough and value > limit and value > gate:
        reasons.append(f"{statistic} {value:.3f} > {limit:g}")
    return ColumnDrift(
        feature=spec.name,
        kind=spec.kind,
        psi=value_psi,
        statistic=statistic,
        value=value,
        baseline_rows=baseline.rows,
        served_rows=served.rows,
        null_rate=_rate(served.nulls, served.rows),
        baseline_null_rate=_rate(baseline.nulls, baseline.rows),
        default_rate=_rate(served.defaults, served.rows),
        baseline_default_rate=_rate(baseline.defaults, baseline.rows),
        drifted=bool(reasons),
        reason="; ".join(reasons),
    )


def compare(baseline: Profile, served: Profile, config: MonitoringConfig) -> list[ColumnDrift]:
    """Every column's drift from ``baseline`` to ``served`` (profiles over the same bins),
    each column tested at ``drift_alpha`` divided by the columns tested (Bonferroni), so
    ``drift_alpha`` bounds the chance that a check flags any column when nothing moved."""
    rows = served.rows
    columns = [spec for spec in baseline.spec.columns if spec.name in served.counts]
    tested = sum(spec.name not in config.drift_ignore for spec in columns)
    alpha = config.drift_alpha / max(tested, 1)
    return [
        column_drift(
            spec, baseline.counts[spec.name], served.counts[spec.name], config, rows, alpha
        )
        for spec in columns
    ]


def total(profiles: Iterable[Profile], start: Profile) -> Profile:
    """``start`` merged with every profile of ``profiles``."""
    out = start
    for profile in profiles:
        out = out.merge(profile)
    return out


def recent(windows: dict[int, Profile], min_rows: int, empty: Profile) -> Profile:
    """The newest windows merged, going back until they hold ``min_rows`` rows (all of them
    when they never do): the served profile drift is measured on."""
    out = empty
    for start in sorted(windows, reverse=True):
        out = out.merge(windows[start])
        if out.rows >= min_rows:
            break
    return out


def earliest(windows: dict[int, Profile], min_rows: int, empty: Profile) -> tuple[Profile, int]:
    """The oldest windows merged until they hold ``min_rows`` rows, and the start of the
    last one taken: a version's own serving baseline (``monitoring.drift_baseline:
    serving``)."""
    out, last = empty, -1
    for start in sorted(windows):
        out, last = out.merge(windows[start]), start
        if out.rows >= min_rows:
            break
    return out, last


def measured(
    windows: dict[int, Profile], reference: Profile, config: MonitoringConfig
) -> tuple[Profile, Profile] | None:
    """The baseline and the served profile drift compares (see the module docs), or None
    while the serving baseline is still filling (no window after it yet)."""
    empty = reference.spec.empty()
    if config.drift_baseline == "training":
        return reference, recent(windows, config.drift_min_rows, empty)
    baseline, last = earliest(windows, config.baseline_rows, empty)
    later = {start: p for start, p in windows.items() if start > last}
    if not later:
        return None
    return baseline, recent(later, config.drift_min_rows, empty)
