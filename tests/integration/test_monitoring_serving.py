"""The service's monitoring end to end (embedded store): the reference profile written at
publish, the serving profile counted per version and variant and added up in the store,
drift, freshness and threshold gauges on ``/metrics``, the skew sample, ingestion lag."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings, load_settings
from feedforge.datasets.load import load_dataset
from feedforge.features.definitions import FEATURES
from feedforge.monitoring.profile import Profile
from feedforge.monitoring.recorder import profiled_columns, served_windows
from feedforge.serving.app import create_app
from feedforge.store.bundle import REFERENCE_PROFILE_FILE
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration

MONITORING = {
    "profile_flush_s": 3600,  # the test flushes and refreshes itself
    "drift_refresh_s": 3600,
    "kpi_refresh_s": 3600,
    "drift_min_rows": 50,
    "skew_sample": 1.0,
    "drift_baseline": "training",
}


def _sample(text: str, metric: str, **labels: str) -> list[float]:
    out = []
    for line in text.splitlines():
        if not line.startswith(metric) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != metric:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            out.append(float(value))
    return out


@pytest.fixture
def monitored(
    workdir_copy: Callable[..., Workdir], write_config: Callable[..., Path], tmp_path: Path
) -> tuple[Workdir, Settings]:
    settings = load_settings(write_config(tmp_path / "m.yaml", monitoring=MONITORING))
    return workdir_copy(settings), settings


def test_served_rows_are_profiled_against_the_published_reference(
    monitored: tuple[Workdir, Settings], make_event: Callable[..., dict[str, object]]
) -> None:
    workdir, settings = monitored
    with open_store(settings.store, workdir.store_path) as store:
        version = store.current_version()
    assert version is not None
    reference = Profile.load(workdir.bundles_dir / version / REFERENCE_PROFILE_FILE)
    assert reference.spec.names() == [*profiled_columns(), "device"]
    assert reference.rows > 100
    assert reference.meta["version"] == version

    users = sorted(load_dataset(workdir).users.ids.to_list())[:30]
    with TestClient(create_app(settings, workdir)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        personalized = 0
        for user in users:
            response = client.get("/recommend", params={"user_id": user, "k": 5})
            assert response.status_code == 200, response.text
            personalized += response.json()["strategy"] == "personalized"
        assert personalized >= 20
        # One feed's impression and click, sent back with its request id (the KPIs' join).
        feed = response.json()
        context = {"request_id": feed["request_id"]}
        shown = feed["items"][0]["item_id"]
        engaged = [
            make_event(user_id=users[-1], item_id=shown, event_type=kind, context=context,
                       watch_seconds=None)
            for kind in ("impression", "click")
        ]  # fmt: skip
        assert client.post("/events", json=engaged).status_code in (200, 201, 202)
        old = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
        event = make_event(user_id="monitor-user", timestamp=old)
        response = client.post("/events", json=[event])
        assert response.status_code in (200, 201, 202), response.text

        service.monitor.flush()
        service.monitor.refresh_drift()
        service.monitor.refresh_kpis()
        with open_store(settings.store, workdir.store_path) as other:
            windows = served_windows(other, version, "default", reference.spec)
        served = next(iter(windows.values()))
        assert served.rows == 5 * personalized  # every shown row of every scored feed
        text = client.get("/metrics").text

    # Drift of every profiled column, with the configured thresholds beside it.
    psi = _sample(text, "feedforge_feature_drift", statistic="psi", version=version)
    assert len(psi) == len(reference.spec.columns)
    assert len(_sample(text, "feedforge_feature_drifted", version=version)) == len(psi)
    assert _sample(text, "feedforge_threshold", name="latency_budget_seconds") == [0.05]
    assert _sample(text, "feedforge_profiled_rows_total", version=version) == [served.rows]
    # Freshness: the version and its snapshot; the newest event, ingested ~10 minutes late.
    assert 0 <= _sample(text, "feedforge_version_age_seconds")[0] < 3600
    assert _sample(text, "feedforge_feature_snapshot_timestamp_seconds")
    assert _sample(text, "feedforge_newest_event_age_seconds")[0] < 60
    lag = _sample(text, "feedforge_ingestion_lag_seconds_sum")[0]
    assert 590 < lag < 700, lag  # the event sent 10 minutes late
    assert _sample(text, "feedforge_ingestion_lag_seconds_count") == [3.0]
    # Online KPIs of the served version: every feed, and the one engaged feed's click.
    assert _sample(text, "feedforge_kpi", kpi="feeds", version=version) == [len(users)]
    assert _sample(text, "feedforge_kpi", kpi="ctr", version=version) == [1.0]
    assert _sample(text, "feedforge_worker_resident_memory_bytes")[0] > 10e6

    # The skew sample (skew_sample: 1.0): one line per scored request with every candidate.
    lines = [
        json.loads(line)
        for path in sorted(workdir.featurelog_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert len(lines) == personalized
    first = lines[0]
    assert first["names"] == list(FEATURES) and first["version"] == version
    assert len(first["features"]) == len(first["item_ids"]) == settings.serving.candidates
    assert len(first["features"][0]) == len(FEATURES)
