"""The feed service's Prometheus metrics, served at ``GET /metrics``.

Each service instance keeps its metrics in its own ``CollectorRegistry`` (two apps in one
process, as in the tests, never share counters). Exported:

* ``feedforge_requests_total{endpoint, status}`` and
  ``feedforge_request_seconds{endpoint}``: every HTTP request by route;
* ``feedforge_stage_seconds{stage}``: the time of each stage of a personalised feed
  (``read``: the user's one online-store round trip, i.e. the version pointer, embedding,
  record and live history; ``retrieve``: the query vector and the ANN search;
  ``features``: the candidates' feature assembly; ``score``: the ranker's batched forward
  pass; ``rerank``);
* ``feedforge_feeds_total{strategy}``: feeds served, ``personalized`` or ``popular``;
* ``feedforge_degraded_feeds_total``: feeds answered from the in-process fallback while the
  online store was unavailable;
* ``feedforge_missing_features_total{kind}``: users (``kind="user"``) and candidates
  (``kind="item"``) scored with the documented default features because the online store
  had no record for them (:func:`~feedforge.features.item_table.raw_from_table`);
* ``feedforge_serving_version_info{version}``: 1 for the version being served.

With several worker processes each exports its own counts (scrape every worker, or sum
them); Prometheus' multiprocess mode is not set up here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Milliseconds matter: a feed has a 50 ms budget, its stages a few ms each.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
STAGES = ("read", "retrieve", "features", "score", "rerank")


class ServiceMetrics:
    """The metrics of one service instance (see the module docs for the names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "feedforge_requests",
            "HTTP requests by route and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "feedforge_request_seconds",
            "HTTP request latency by route",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "feedforge_stage_seconds",
            "Latency of each stage of a personalised feed",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.feeds = Counter(
            "feedforge_feeds", "Feeds served by strategy", ["strategy"], registry=self.registry
        )
        self.degraded = Counter(
            "feedforge_degraded_feeds",
            "Feeds answered from the in-process fallback while the online store was unavailable",
            registry=self.registry,
        )
        self.feed_log_errors = Counter(
            "feedforge_feed_log_errors",
            "Served feeds that could not be written to the feed log",
            registry=self.registry,
        )
        self.missing_features = Counter(
            "feedforge_missing_features",
            "Users and candidate items scored with default features (no online-store record)",
            ["kind"],
            registry=self.registry,
        )
        self.version = Gauge(
            "feedforge_serving_version_info",
            "The published version being served (value 1)",
            ["version"],
            registry=self.registry,
        )
        for stage in STAGES:  # exported from the start, before the first feed
            self.stage_seconds.labels(stage=stage)
        for kind in ("user", "item"):
            self.missing_features.labels(kind=kind)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block as the feed stage ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(stage=name).observe(time.perf_counter() - started)

    def serving(self, version: str) -> None:
        """Mark ``version`` as the one being served (clearing the previous one)."""
        self.version.clear()
        self.version.labels(version=version).set(1)

    def missing(self, kind: str) -> float:
        """The count of ``feedforge_missing_features_total{kind}`` so far."""
        value = self.registry.get_sample_value("feedforge_missing_features_total", {"kind": kind})
        return float(value or 0.0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
