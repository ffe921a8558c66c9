"""The dashboard's numbers (:mod:`feedforge.monitoring.dashboard`).

Latency percentiles are estimated from the service's histogram the way Prometheus does:
checked against Prometheus' own ``histogram_quantile`` (``promtool test rules`` evaluates it on
the same bucket counts; Debian's ``prometheus`` package, installed by ``.ci/run``), and against
the raw samples (the true quantile lies in the estimate's bucket).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram

from feedforge.monitoring.dashboard import (
    QUANTILES,
    History,
    Snapshot,
    histogram_quantile,
    interval_point,
)
from feedforge.monitoring.metrics import ServiceMetrics


def _metrics_with(latencies: np.ndarray, errors: int = 0) -> ServiceMetrics:
    metrics = ServiceMetrics()
    for i, seconds in enumerate(latencies):
        status = "500" if i < errors else "200"
        metrics.requests.labels(endpoint="/recommend", status=status).inc()
        metrics.request_seconds.labels(endpoint="/recommend").observe(float(seconds))
        metrics.feeds.labels(strategy="personalized").inc()
    metrics.requests.labels(endpoint="/events", status="200").inc(7)  # not a feed request
    return metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantiles_match_prometheus_histogram_quantile(
    promtool: str, tmp_path: Path, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    latencies = rng.lognormal(np.log(0.008), 1.0, size=500)
    snapshot = Snapshot.read(_metrics_with(latencies).families(), at=0.0)
    ours = {q: histogram_quantile(q, snapshot.buckets) for q in (*QUANTILES, 0.999, 0.1)}
    # The same cumulative counts as a Prometheus series, and its histogram_quantile.
    series = [
        {
            "series": f'lat_bucket{{le="{"+Inf" if np.isinf(b) else repr(b)}"}}',
            "values": f"{count:g}x2",
        }
        for b, count in snapshot.buckets
    ]
    tests = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": f"histogram_quantile({q}, lat_bucket)",
                        "eval_time": "1m",
                        "exp_samples": [{"labels": "{}", "value": float(value)}],
                    }
                    for q, value in ours.items()
                ],
            }
        ],
    }
    path = tmp_path / "quantiles_test.yml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # And the estimate lies in the bucket of the samples' own quantile.
    bounds = np.array([b for b, _ in snapshot.buckets])
    for q, value in ours.items():
        true = float(np.quantile(latencies, q, method="inverted_cdf"))
        assert value is not None
        assert np.searchsorted(bounds, true) == np.searchsorted(bounds, value - 1e-12), (q, true)


def test_quantile_edge_cases() -> None:
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    # Everything beyond the last finite bucket: its bound.
    assert histogram_quantile(0.99, [(0.1, 0.0), (1.0, 0.0), (float("inf"), 5.0)]) == 1.0
    # Half the samples in (0, 0.1], half in (0.1, 0.3]: the median is the first bound.
    assert histogram_quantile(0.5, [(0.1, 5.0), (0.3, 10.0), (float("inf"), 10.0)]) == 0.1
    assert histogram_quantile(0.75, [(0.1, 5.0), (0.3, 10.0), (float("inf"), 10.0)]) == (
        pytest.approx(0.2)
    )


def test_snapshot_reads_feed_requests_only_and_intervals_are_differences() -> None:
    rng = np.random.default_rng(3)
    metrics = _metrics_with(rng.uniform(0.001, 0.004, size=40), errors=2)
    first = Snapshot.read(metrics.families(), at=100.0)
    assert first.requests == 40 and first.errors == 2 and first.feeds == 40
    for _ in range(10):  # 10 slow feeds in the next interval
        metrics.requests.labels(endpoint="/recommend", status="200").inc()
        metrics.request_seconds.labels(endpoint="/recommend").observe(0.2)
        metrics.feeds.labels(strategy="popular").inc()
    metrics.degraded.inc(5)
    second = Snapshot.read(metrics.families(), at=110.0)
    point = interval_point(first, second)
    assert point["rps"] == pytest.approx(1.0)
    assert point["error_rate"] == 0.0  # the two errors were before the interval
    assert point["degraded_rate"] == pytest.approx(0.5)
    assert 100 < point["p50_ms"] <= 250  # only this interval's slow feeds count
    quiet = interval_point(second, Snapshot.read(metrics.families(), at=120.0))
    assert quiet["rps"] == 0.0 and quiet["p99_ms"] is None and quiet["error_rate"] is None


def test_history_keeps_samples_apart_and_bounded() -> None:
    history = History(keep=3, every_s=5.0)
    assert history.add(Snapshot(at=0.0, requests=0))
    assert not history.add(Snapshot(at=1.0, requests=1))  # too soon
    for t in (5.0, 10.0, 15.0):
        assert history.add(Snapshot(at=t, requests=t))
    series = history.series(Snapshot(at=17.0, requests=17.0))
    assert [p["t"] for p in series] == [10.0, 15.0, 17.0]  # 3 kept (5, 10, 15) + the latest
    assert series[-1]["rps"] == pytest.approx(1.0)


def test_snapshot_reads_computed_gauges() -> None:
    registry = CollectorRegistry()
    Counter("feedforge_experiment_feeds", "x", ["experiment", "variant"], registry=registry).labels(
        experiment="e1", variant="treatment"
    ).inc(4)
    Histogram("other_seconds", "not read", registry=registry).observe(1.0)
    snapshot = Snapshot.read(registry.collect(), at=1.0)
    assert snapshot.experiments == [{"experiment": "e1", "variant": "treatment", "feeds": 4.0}]
    assert snapshot.requests == 0 and snapshot.buckets == []
