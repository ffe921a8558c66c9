"""The live dashboard's numbers, from the service's own Prometheus metrics.

A :class:`Snapshot` reads the metric families one scrape of ``/metrics`` would return (the
whole service's counts in multiprocess mode, so any worker answers for all): cumulative feed
requests by status, the feed latency histogram's buckets, degraded feeds, requests over the
budget, and the computed gauges (KPIs per version and variant, drift, freshness, experiment
feeds). :class:`History` keeps the snapshots of the last ``keep`` samples; the live series
(request rate, latency percentiles, error and degraded rates) is the difference of
consecutive snapshots, so every point describes its own interval, not the time since start.

Latency percentiles come from the histogram the way Prometheus' ``histogram_quantile``
computes them (:func:`histogram_quantile`): linear interpolation inside the bucket that holds
the quantile, the highest finite bound when it falls in the ``+Inf`` bucket.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric

FEED_ENDPOINT = "/recommend"
QUANTILES = (0.5, 0.95, 0.99)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (Prometheus' ``histogram_quantile``).

    Args:
        q: In ``[0, 1]``.
        buckets: ``(upper bound, cumulative count)`` sorted by bound, the last ``+Inf``.

    Returns:
        The estimate, or None for an empty histogram.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the highest finite bound
            if count == lower_count:
                return bound
            # Prometheus' own order of operations, so the estimates agree to the last bit.
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class Snapshot:
    """The cumulative counters and current gauges of one moment (see the module docs)."""

    at: float
    requests: float = 0.0
    errors: float = 0.0
    feeds: float = 0.0
    degraded: float = 0.0
    over_budget: float = 0.0
    buckets: list[tuple[float, float]] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    kpis: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    freshness: dict[str, float] = field(default_factory=dict)

    @classmethod
    def read(cls, families: Iterable[Metric], at: float) -> Snapshot:
        """A snapshot from collected metric families (``registry.collect()``)."""
        snap = cls(at=at)
        bounds: dict[float, float] = {}
        drift: dict[tuple[str, str, str], dict[str, Any]] = {}
        for family in families:
            for sample in family.samples:
                snap._add(family.name, sample.name, sample.labels, sample.value, bounds, drift)
        snap.buckets = sorted(bounds.items())
        snap.drift = list(drift.values())
        return snap

    def _add(
        self,
        family: str,
        name: str,
        labels: dict[str, str],
        value: float,
        bounds: dict[float, float],
        drift: dict[tuple[str, str, str], dict[str, Any]],
    ) -> None:
        feed = labels.get("endpoint") == FEED_ENDPOINT
        if name == "feedforge_requests_total" and feed:
            self.requests += value
            if labels.get("status", "").startswith("5"):
                self.errors += value
        elif name == "feedforge_request_seconds_bucket" and feed:
            bound = float(labels["le"])
            bounds[bound] = bounds.get(bound, 0.0) + value
        elif name == "feedforge_feeds_total":
            self.feeds += value
        elif name == "feedforge_degraded_feeds_total":
            self.degraded += value
        elif name == "feedforge_requests_over_budget_total" and feed:
            self.over_budget += value
        elif name == "feedforge_serving_version_info" and value > 0:
            self.versions.append(labels["version"])
        elif name == "feedforge_kpi":
            self.kpis.append({**labels, "value": value})
        elif name == "feedforge_experiment_feeds_total":
            self.experiments.append({**labels, "feeds": value})
        elif family in ("feedforge_feature_drift", "feedforge_feature_drifted"):
            key = (labels["feature"], labels["version"], labels["variant"])
            entry = drift.setdefault(key, {"feature": key[0], "version": key[1], "variant": key[2]})
            if family == "feedforge_feature_drifted":
                entry["drifted"] = bool(value)
            else:
                entry[labels["statistic"]] = value
        elif name.endswith("_age_seconds") and name.startswith("feedforge_"):
            self.freshness[name.removeprefix("feedforge_").removesuffix("_age_seconds")] = value


def interval_point(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """The live numbers of the interval between two snapshots: feed requests per second,
    latency percentiles (ms), and error, degraded and over-budget rates (None without
    requests in the interval)."""
    seconds = max(after.at - before.at, 1e-9)
    requests = max(after.requests - before.requests, 0.0)
    earlier = dict(before.buckets)
    delta = [(b, max(c - earlier.get(b, 0.0), 0.0)) for b, c in after.buckets]
    point: dict[str, Any] = {"t": after.at, "rps": requests / seconds}
    for q in QUANTILES:
        value = histogram_quantile(q, delta) if requests else None
        point[f"p{round(q * 100)}_ms"] = None if value is None else value * 1e3
    feeds = max(after.feeds - before.feeds, 0.0)
    point["error_rate"] = (after.errors - before.errors) / requests if requests else None
    point["over_budget_rate"] = (
        (after.over_budget - before.over_budget) / requests if requests else None
    )
    point["degraded_rate"] = (after.degraded - before.degraded) / feeds if feeds else None
    return point


class History:
    """The last ``keep`` snapshots, at least ``every_s`` apart (thread-safe)."""

    def __init__(self, keep: int, every_s: float) -> None:
        self.every_s = every_s
        self._snapshots: deque[Snapshot] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, snapshot: Snapshot) -> bool:
        """Keep ``snapshot`` if the last kept one is at least ``every_s`` older; returns
        whether it was kept."""
        with self._lock:
            if self._snapshots and snapshot.at - self._snapshots[-1].at < self.every_s:
                return False
            self._snapshots.append(snapshot)
            return True

    def series(self, latest: Snapshot | None = None) -> list[dict[str, Any]]:
        """One :func:`interval_point` per pair of consecutive snapshots (and from the last
        kept one to ``latest``, when given and newer)."""
        with self._lock:
            snapshots = list(self._snapshots)
        if latest is not None and (not snapshots or latest.at > snapshots[-1].at):
            snapshots.append(latest)
        return [interval_point(a, b) for a, b in itertools.pairwise(snapshots)]
