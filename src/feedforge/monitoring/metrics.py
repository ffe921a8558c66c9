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
* ``feedforge_experiment_feeds_total{experiment, variant}``: feeds served under a running
  experiment (``variant="interleaved"`` in an interleaving one);
* ``feedforge_serving_version_info{version}``: 1 for the version being served;
* ``feedforge_requests_over_budget_total{endpoint}``: requests answered slower than
  ``serving.latency_budget_ms`` (the latency SLO's bad events);
* ``feedforge_ingestion_lag_seconds``: per ingested event, its arrival time minus its
  timestamp;
* ``feedforge_profiled_rows_total{version, variant}``: served rows entered in the serving
  profile (:mod:`feedforge.monitoring.recorder`);
* ``feedforge_worker_cpu_seconds``, ``feedforge_worker_resident_memory_bytes``,
  ``feedforge_worker_open_fds``: each worker process's own (with ``pid`` in multiprocess
  mode), refreshed by the worker's monitor thread.

Values the answering worker computes when scraped (drift, freshness, KPIs, the configured
thresholds) come from collectors the service attaches (:meth:`ServiceMetrics.attach`; their
names are in :data:`COMPUTED_FAMILIES`).

With several worker processes (``feedforge serve --workers N``) the metrics use
prometheus-client's multiprocess mode, so every worker answers a scrape with the counts of the
whole service and counters never go down from one scrape to the next, whichever worker
answers: ``feedforge serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a directory of its own
(:func:`multiprocess_metrics`: the one the variable names, emptied at start, or a new
temporary one, removed at exit) before the workers start; each worker writes its values to
files there, ``/metrics`` merges them (``MultiProcessCollector``), and a worker that shuts
down marks itself dead (:func:`mark_worker_dead`). Counters and histograms of exited workers
keep counting; ``feedforge_serving_version_info`` is the largest value over the live workers
(``livemax``): 1 for each version some worker serves, 0 for versions served before. A single
process without the variable keeps one registry per service instance, as described above.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Milliseconds matter: a feed has a 50 ms budget, its stages a few ms each.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# Event ingestion lag: from a fraction of a second (live clients) to days (a backfill).
_LAG_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
STAGES = ("read", "retrieve", "features", "score", "rerank")
COMPUTED_FAMILIES = (
    "feedforge_threshold",
    "feedforge_version_published_timestamp_seconds",
    "feedforge_version_age_seconds",
    "feedforge_feature_snapshot_timestamp_seconds",
    "feedforge_feature_snapshot_age_seconds",
    "feedforge_newest_event_timestamp_seconds",
    "feedforge_newest_event_age_seconds",
    "feedforge_precomputed_feeds_timestamp_seconds",
    "feedforge_precomputed_feeds_age_seconds",
    "feedforge_feature_drift",
    "feedforge_feature_drifted",
    "feedforge_kpi",
)
"""Gauges computed when scraped by the collectors the service attaches (see the module
docs), listed so dashboards and alert rules can be checked against them."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The variable that turns on prometheus-client's multiprocess mode; it must be set before
``prometheus_client`` is first imported in a worker."""


def multiprocess_dir() -> Path | None:
    """The multiprocess directory of this process, or None in single-process mode."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def prepare_multiprocess_dir(directory: Path) -> None:
    """Create ``directory`` and delete the metric files an earlier run left there (their
    counts would be added to this run's)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


@contextmanager
def multiprocess_metrics(workers: int) -> Iterator[Path | None]:
    """Set up multiprocess mode for a service about to start ``workers`` processes.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, that directory is emptied; else, with more than
    one worker, a new temporary directory is made, exported in the variable (the workers
    inherit it) and removed on exit. One worker without the variable keeps the
    single-process registry. Yields the directory in use, or None.
    """
    directory = multiprocess_dir()
    temporary = directory is None and workers > 1
    if temporary:
        directory = Path(tempfile.mkdtemp(prefix="feedforge-metrics-"))
        os.environ[MULTIPROC_ENV] = str(directory)
    if directory is not None:
        prepare_multiprocess_dir(directory)
    try:
        yield directory
    finally:
        if temporary and directory is not None:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(directory, ignore_errors=True)


def mark_worker_dead(pid: int | None = None) -> None:
    """Drop the live-gauge values of an exiting worker (multiprocess mode; else nothing)."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid if pid is not None else os.getpid(), str(directory))


class ServiceMetrics:
    """The metrics of one service instance (see the module docs for the names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._multiprocess_dir = multiprocess_dir()
        self._versions: set[str] = set()
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
        self.experiment_feeds = Counter(
            "feedforge_experiment_feeds",
            "Feeds served under a running experiment, by experiment and variant",
            ["experiment", "variant"],
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
            multiprocess_mode="livemax",
        )
        self.over_budget = Counter(
            "feedforge_requests_over_budget",
            "Requests answered slower than serving.latency_budget_ms",
            ["endpoint"],
            registry=self.registry,
        )
        self.ingestion_lag = Histogram(
            "feedforge_ingestion_lag_seconds",
            "Per ingested event: its arrival at the service minus its timestamp",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.profiled_rows = Counter(
            "feedforge_profiled_rows",
            "Served rows entered in the serving profile, by version and experiment variant",
            ["version", "variant"],
            registry=self.registry,
        )
        self.worker_cpu = Gauge(
            "feedforge_worker_cpu_seconds",
            "CPU time (user + system) of the worker process",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.worker_rss = Gauge(
            "feedforge_worker_resident_memory_bytes",
            "Resident memory of the worker process",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.worker_fds = Gauge(
            "feedforge_worker_open_fds",
            "Open file descriptors of the worker process",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self._process = ProcessCollector(registry=None)
        self._attached: list[Collector] = []
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
        if self._multiprocess_dir is None:
            self.version.clear()
        else:  # a cleared label set stays in the worker's file: set it to 0 instead
            for previous in self._versions - {version}:
                self.version.labels(version=previous).set(0)
            self._versions.add(version)
        self.version.labels(version=version).set(1)

    def attach(self, collector: Collector) -> None:
        """Add a collector whose values the answering worker computes when scraped (e.g.
        drift and freshness)."""
        self._attached.append(collector)
        if self._multiprocess_dir is None:
            self.registry.register(collector)

    def sample_process(self) -> None:
        """Refresh this worker's process gauges (CPU, resident memory, open files) from
        prometheus-client's own reading of ``/proc``."""
        values = {
            family.name: family.samples[0].value
            for family in self._process.collect()
            if family.samples
        }
        if "process_cpu_seconds" in values:
            self.worker_cpu.set(values["process_cpu_seconds"])
        if "process_resident_memory_bytes" in values:
            self.worker_rss.set(values["process_resident_memory_bytes"])
        if "process_open_fds" in values:
            self.worker_fds.set(values["process_open_fds"])

    def missing(self, kind: str) -> float:
        """The count of ``feedforge_missing_features_total{kind}`` so far."""
        value = self.registry.get_sample_value("feedforge_missing_features_total", {"kind": kind})
        return float(value or 0.0)

    def _scraped(self) -> CollectorRegistry:
        """What a scrape reads: this registry, or in multiprocess mode every worker's
        values merged, with the attached collectors."""
        if self._multiprocess_dir is None:
            return self.registry
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self._multiprocess_dir))
        for collector in self._attached:
            merged.register(collector)
        return merged

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (of every worker in multiprocess
        mode)."""
        return generate_latest(self._scraped()), CONTENT_TYPE_LATEST

    def families(self) -> list[Metric]:
        """The metric families a scrape would return (of every worker in multiprocess
        mode), e.g. for the dashboard (:mod:`feedforge.monitoring.dashboard`)."""
        return list(self._scraped().collect())
