"""The service's own monitoring (step 7): serving profile, drift, skew sample, freshness,
online KPIs and process gauges, all from a background thread, never on the request path
beyond counting.

On the request path (:meth:`ServiceMonitor.served`, a few tens of microseconds):

* the served rows of a sample of feeds (``monitoring.profile_sample``; a feed's shown items:
  their feature rows, ranker scores and the request's device) are counted into the serving
  profile of their version and experiment variant (:mod:`feedforge.monitoring.recorder`);
* a sample of requests (``monitoring.skew_sample``) has every scored candidate's exact
  feature vector written to ``WORKDIR/featurelog`` (one JSON line per request: ``ts``,
  ``request_id``, ``user_id``, ``device``, ``version``, ``variant``, ``scored_at_s`` (the
  scoring clock), ``live_history`` (items of the user's live history in the query vector),
  ``names``, ``item_ids``, ``features``), which ``feedforge monitor skew``
  recomputes offline (:mod:`feedforge.monitoring.skew`);
* ingested events feed ``feedforge_ingestion_lag_seconds`` (up to
  :data:`LAG_SAMPLE` events of a batch, sampled uniformly) and the newest event's time.

The monitor thread flushes the profile counts to the store (``profile_flush_s``), recomputes
drift from the store's profiles (``drift_refresh_s``; :mod:`feedforge.monitoring.drift`),
the online KPIs from the feed log joined to the event log (``kpi_refresh_s``, over
``kpi_window_s``; :func:`feedforge.experiments.online.feed_kpis`), samples the worker's
CPU, memory and open files, and samples the service's metrics for the live dashboard
(``dashboard_refresh_s``; :mod:`feedforge.monitoring.dashboard`). A scrape reads the latest
results (:meth:`ServiceMonitor.collect`): the configured thresholds, freshness (timestamps
and ages of the served version, its feature snapshot, the newest ingested event and the
precomputed feeds), drift and KPIs.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from prometheus_client.core import GaugeMetricFamily, Metric

from feedforge.config import Settings
from feedforge.errors import FeedforgeError
from feedforge.events.log import EventLog
from feedforge.events.schema import Event
from feedforge.experiments.online import KPIS, feed_kpis, read_feed_log
from feedforge.features.definitions import FEATURES
from feedforge.monitoring.dashboard import History, Snapshot
from feedforge.monitoring.drift import ColumnDrift, compare, measured
from feedforge.monitoring.metrics import ServiceMetrics
from feedforge.monitoring.profile import Profile
from feedforge.monitoring.recorder import ProfileRecorder, served_windows
from feedforge.serving.feedlog import FeedLog
from feedforge.serving.version import LoadedVersion
from feedforge.store.base import OnlineStore
from feedforge.workdir import Workdir

logger = logging.getLogger("feedforge.serving")

LAG_SAMPLE = 256
"""Events of one ingested batch observed in the ingestion-lag histogram, at most."""
PROCESS_SAMPLE_S = 5.0
SKEW_QUEUE = 1_000
"""Sampled requests waiting for the monitor thread to log them, at most (more are dropped
and counted)."""
_TICK_S = 0.5
_TRACKED_S = 3_600.0  # a (version, variant) no request served for this long leaves the gauges


class ServiceMonitor:
    """One worker's monitoring (see the module docs)."""

    def __init__(
        self,
        settings: Settings,
        workdir: Workdir,
        store: OnlineStore,
        metrics: ServiceMetrics,
        loaded: Callable[[], LoadedVersion | None],
        log: EventLog,
    ) -> None:
        self.settings = settings
        self.config = settings.monitoring
        self.workdir = workdir
        self.store = store
        self.metrics = metrics
        self._loaded = loaded
        self._log = log
        self.recorder = (
            ProfileRecorder(store, self.config.window_s, metrics) if self.config.profile else None
        )
        self.feature_log = (
            FeedLog(
                workdir.featurelog_dir,
                max_total_bytes=self.config.skew_log_max_bytes,
                max_items=settings.serving.candidates * 10,
            )
            if self.config.skew_sample > 0
            else None
        )
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[Profile, float]] = {}
        self._drift: dict[tuple[str, str], list[ColumnDrift]] = {}
        self._kpis: pl.DataFrame | None = None
        self._newest_event: float | None = None
        self._precomputed_at: float | None = None
        self._skew_queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.skew_dropped = 0
        """Sampled requests not logged because the queue was full (the disk too slow)."""
        self.dashboard = History(self.config.dashboard_points, self.config.dashboard_refresh_s)
        """The samples behind ``GET /dashboard``'s live charts."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.clock: Callable[[], float] = time.time
        """Wall time in epoch seconds: the serving profile's windows and the freshness ages
        (a simulation replaces it with its own clock)."""
        metrics.attach(self)

    # -- the request path -------------------------------------------------------------------
    def served(
        self,
        state: LoadedVersion,
        variant: str,
        request_id: str | None,
        user_id: str,
        device: str | None,
        cand_ids: Sequence[str],
        X: np.ndarray,
        scores: np.ndarray,
        shown: Sequence[str],
        scored_at_s: float,
        live_history: int = 0,
    ) -> None:
        """Count a scored feed's shown rows into the serving profile and log a sample of
        requests' feature vectors (see the module docs). Never raises: monitoring must not
        fail a feed."""
        cfg = self.config
        try:
            if (
                self.recorder is not None
                and state.reference is not None
                and random.random() < cfg.profile_sample
            ):
                self._profile(state, state.reference, variant, cand_ids, X, scores, shown)
            if self.feature_log is not None and random.random() < cfg.skew_sample:
                self._sample(
                    {
                        "request_id": request_id,
                        "user_id": user_id,
                        "device": device,
                        "version": state.version,
                        "variant": variant,
                        "scored_at_s": scored_at_s,
                        "live_history": live_history,
                        "names": list(FEATURES),
                        "item_ids": list(cand_ids),
                        "features": X,
                    }
                )
        except Exception:
            logger.exception("monitoring a served feed failed")

    def _profile(
        self,
        state: LoadedVersion,
        reference: Profile,
        variant: str,
        cand_ids: Sequence[str],
        X: np.ndarray,
        scores: np.ndarray,
        shown: Sequence[str],
    ) -> None:
        assert self.recorder is not None
        position = {item: j for j, item in enumerate(cand_ids)}
        rows = np.asarray([position[i] for i in shown if i in position], dtype=np.int64)
        if not len(rows):
            return
        served_X = X[rows]
        columns = {"score": np.asarray(scores, dtype=np.float64)[rows]}
        if state.ranker is not None and state.ranker.multi_task:
            for head, values in state.ranker.predict_heads(served_X).items():
                columns[f"score_{head}"] = np.asarray(values, dtype=np.float64)
        self.recorder.record(
            state.version, reference.spec, variant, served_X, FEATURES, columns, self.clock()
        )
        with self._lock:  # the reference only: never keep a replaced version alive
            self._seen[(state.version, variant)] = (reference, time.monotonic())

    def _sample(self, record: dict[str, Any]) -> None:
        # Written by the monitor thread: serialising a few hundred vectors costs
        # milliseconds, which the request does not wait for.
        if self._skew_queue.qsize() < SKEW_QUEUE:
            self._skew_queue.put(record)
        else:
            self.skew_dropped += 1

    def write_skew_sample(self) -> None:
        """Write the queued feature vectors to the feature log."""
        if self.feature_log is None:
            return
        while True:
            try:
                record = self._skew_queue.get_nowait()
            except queue.Empty:
                return
            record["features"] = record["features"].tolist()
            self.feature_log.write(record)

    def precomputed(self, computed_at_s: float) -> None:
        """Note the batch time of a precomputed feed the service read."""
        with self._lock:
            if self._precomputed_at is None or computed_at_s > self._precomputed_at:
                self._precomputed_at = computed_at_s

    def ingested(self, events: Sequence[Event]) -> None:
        """Observe newly stored events: the ingestion lag of a sample, the newest time."""
        if not events:
            return
        now = time.time()
        stamps = [e.timestamp.timestamp() for e in events]
        self._note_newest(max(stamps))
        sample = stamps if len(stamps) <= LAG_SAMPLE else random.sample(stamps, LAG_SAMPLE)
        for stamp in sample:
            self.metrics.ingestion_lag.observe(max(0.0, now - stamp))

    # -- the monitor thread -----------------------------------------------------------------
    def start(self) -> None:
        """Start the monitor thread (see the module docs)."""
        self.metrics.sample_process()  # a scrape right after start-up has the worker's own
        self._thread = threading.Thread(target=self._run, name="feedforge-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, add the last profile counts to the store, close the feature log."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self.recorder is not None:
            try:
                self.recorder.flush()
            except Exception:
                logger.exception("flushing the serving profile at shutdown failed")
        if self.feature_log is not None:
            self.write_skew_sample()
            self.feature_log.close()

    def _run(self) -> None:
        cfg = self.config
        # Drift and KPIs read the store and the logs: first after one period, so a worker
        # that just started (and loaded its version) does not do it at once.
        start = time.monotonic()
        due = {
            "skew": 0.0,
            "flush": 0.0,
            "drift": start + cfg.drift_refresh_s,
            "kpi": start + cfg.kpi_refresh_s,
            "process": 0.0,
            "dashboard": 0.0,
        }
        periods = {
            "skew": _TICK_S,
            "flush": cfg.profile_flush_s,
            "drift": cfg.drift_refresh_s,
            "kpi": cfg.kpi_refresh_s,
            "process": PROCESS_SAMPLE_S,
            "dashboard": cfg.dashboard_refresh_s,
        }
        tasks: dict[str, Callable[[], None]] = {
            "skew": self.write_skew_sample,
            "flush": self.flush,
            "drift": self.refresh_drift,
            "kpi": self.refresh_kpis,
            "process": self.metrics.sample_process,
            "dashboard": self.sample_dashboard,
        }
        self._newest_from_log()
        while not self._stopping.wait(_TICK_S):
            now = time.monotonic()
            for name, task in tasks.items():
                if now < due[name]:
                    continue
                due[name] = now + periods[name]
                try:
                    task()
                except Exception:  # the thread must outlive any one failed refresh
                    logger.exception("monitoring task %s failed", name)

    def sample_dashboard(self) -> None:
        """Keep a sample of the service's metrics for the dashboard's live series."""
        self.dashboard.add(self.read_metrics())

    def read_metrics(self) -> Snapshot:
        """The service's metrics now, as the dashboard reads them (every worker's in
        multiprocess mode); :attr:`dashboard` keeps one every ``dashboard_refresh_s``."""
        return Snapshot.read(self.metrics.families(), time.time())

    def flush(self) -> None:
        """Add this worker's profile counts to the store (kept when the store fails)."""
        if self.recorder is not None:
            self.recorder.flush()

    def _newest_from_log(self) -> None:
        try:
            with self._log.reading():  # no compaction removes a file while it is read
                newest = self._log.scan().select(pl.col("timestamp").max()).collect().item()
        except Exception:  # an empty or unreadable log: no value until an event arrives
            return
        if newest is not None:
            self._note_newest(newest.timestamp())

    def _note_newest(self, stamp: float) -> None:
        with self._lock:
            if self._newest_event is None or stamp > self._newest_event:
                self._newest_event = stamp

    def refresh_drift(self) -> None:
        """Recompute drift of every version and variant served lately, from the store."""
        cfg = self.config
        cutoff = time.monotonic() - _TRACKED_S
        with self._lock:
            tracked = {k: v for k, v in self._seen.items() if v[1] >= cutoff}
            self._seen = dict(tracked)
        results: dict[tuple[str, str], list[ColumnDrift]] = {}
        for (version, variant), (reference, _) in tracked.items():
            windows = served_windows(self.store, version, variant, reference.spec)
            if not windows:
                continue
            pair = measured(windows, reference, cfg)
            if pair is not None:
                results[(version, variant)] = compare(*pair, cfg)
        self._drift = results

    def refresh_kpis(self) -> None:
        """Recompute the online KPIs of the trailing window from the feed and event logs."""
        since = datetime.now(UTC) - timedelta(seconds=self.config.kpi_window_s)
        try:
            feeds = read_feed_log(self.workdir.feedlog_dir, since)
        except FeedforgeError:
            return  # no feed logged yet
        self._kpis = feed_kpis(feeds, self._log.scan(), since, self.config.kpi_attribution_window_s)

    # -- a scrape ---------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """The gauges computed when scraped (prometheus-client's collector protocol)."""
        cfg, serving = self.config, self.settings.serving
        threshold = GaugeMetricFamily(
            "feedforge_threshold", "Configured thresholds alert rules compare with", labels=["name"]
        )
        for name, value in (
            ("latency_budget_seconds", serving.latency_budget_ms / 1e3),
            ("latency_slo", cfg.latency_slo),
            ("max_error_ratio", cfg.max_error_ratio),
            ("max_degraded_ratio", cfg.max_degraded_ratio),
            ("max_version_age_seconds", cfg.max_version_age_s),
            ("max_event_age_seconds", cfg.max_event_age_s),
            ("max_ingestion_lag_seconds", cfg.max_ingestion_lag_s),
            ("max_precomputed_age_seconds", serving.precomputed_max_age_s),
        ):
            threshold.add_metric([name], value)
        yield threshold
        yield from self._freshness()
        yield from self._drift_families()
        yield from self._kpi_families()

    def _freshness(self) -> Iterator[Metric]:
        now = self.clock()
        state = self._loaded()
        stamps: list[tuple[str, str, float | None]] = [
            (
                "version_published",
                "version",
                state.published_at if state is not None else None,
            ),
            (
                "feature_snapshot",
                "feature_snapshot",
                state.snapshot_time if state is not None else None,
            ),
            ("newest_event", "newest_event", self._newest_event),
            ("precomputed_feeds", "precomputed_feeds", self._precomputed_at),
        ]
        for stamp_name, age_name, value in stamps:
            if value is None:
                continue
            yield GaugeMetricFamily(
                f"feedforge_{stamp_name}_timestamp_seconds",
                f"Unix time of the {stamp_name.replace('_', ' ')}",
                value=value,
            )
            yield GaugeMetricFamily(
                f"feedforge_{age_name}_age_seconds",
                f"Seconds since the {stamp_name.replace('_', ' ')}",
                value=max(0.0, now - value),
            )

    def _drift_families(self) -> Iterator[Metric]:
        values = GaugeMetricFamily(
            "feedforge_feature_drift",
            "Drift of a served feature or score from its baseline (psi, ks, js)",
            labels=["feature", "statistic", "version", "variant"],
        )
        flags = GaugeMetricFamily(
            "feedforge_feature_drifted",
            "1 when a feature's drift is over its configured threshold",
            labels=["feature", "version", "variant"],
        )
        for (version, variant), columns in self._drift.items():
            for column in columns:
                values.add_metric([column.feature, "psi", version, variant], column.psi)
                values.add_metric(
                    [column.feature, column.statistic, version, variant], column.value
                )
                flags.add_metric([column.feature, version, variant], float(column.drifted))
        yield values
        yield flags

    def _kpi_families(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "feedforge_kpi",
            "Online KPIs per version and variant over monitoring.kpi_window_s",
            labels=["kpi", "version", "variant"],
        )
        kpis = self._kpis
        if kpis is not None:
            for row in kpis.iter_rows(named=True):
                for kpi in KPIS:
                    family.add_metric([kpi, row["version"], row["variant"]], float(row[kpi]))
        yield family

    def describe(self) -> list[Any]:
        """Nothing to describe ahead of a scrape (values exist only once computed)."""
        return []
