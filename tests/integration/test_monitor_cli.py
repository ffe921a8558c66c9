"""``feedforge monitor drift`` and ``feedforge monitor freshness`` on a served work directory:
a device shift after the serving baseline is flagged (and exits 1 with --fail-on-drift), the
training-serving gap is reported beside it, freshness names what is stale."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.config import load_settings
from feedforge.datasets.load import load_dataset
from feedforge.serving.app import create_app
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration

MONITORING = {
    "window_s": 600,
    "baseline_rows": 400,
    "drift_min_rows": 200,
    "profile_flush_s": 3600,
    "drift_refresh_s": 3600,
    "kpi_refresh_s": 3600,
}


def test_drift_flags_a_device_shift_after_the_serving_baseline(
    workdir_copy: Callable[..., Workdir], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "m.yaml", monitoring=MONITORING)
    settings = load_settings(config)
    workdir = workdir_copy(settings)
    users = sorted(load_dataset(workdir).users.ids.to_list())
    clock = [1_800_000_000.0]
    with TestClient(create_app(settings, workdir)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.monitor.clock = lambda: clock[0]
        for window, device in enumerate(("mobile", "web", None, "tv", "tv")):
            for user in users[window * 60 : window * 60 + 60]:
                params = {"user_id": user, "k": 10, **({"device": device} if device else {})}
                assert client.get("/recommend", params=params).status_code == 200
            clock[0] += 600
        service.monitor.flush()

    runner = CliRunner()
    args = ["monitor", "drift", "--workdir", str(workdir.root), "--config", str(config)]
    result = runner.invoke(app, [*args, "--fail-on-drift"])
    assert result.exit_code == 1, result.output
    assert "device_tv" in result.output
    report = json.loads((workdir.reports_dir / "drift.json").read_text())
    assert report["baseline"] == "serving"
    entry = report["variants"]["default"]
    assert entry["windows"] == 5
    serving = {c["feature"]: c for c in entry["serving"]["columns"]}
    # The baseline is the first window (all mobile); the newest window is all TV.
    assert serving["device_tv"]["drifted"] and serving["device"]["drifted"]
    assert serving["device"]["statistic"] == "js"
    assert not serving["item_price_log"]["drifted"], serving["item_price_log"]
    training = {c["feature"]: c for c in entry["training"]["columns"]}
    assert set(training) == set(serving)  # the training-serving gap, reported beside it
    # Without --fail-on-drift the command is a report.
    assert runner.invoke(app, args).exit_code == 0


def test_freshness_reports_ages_and_names_what_is_stale(
    workdir_copy: Callable[..., Workdir], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "f.yaml", monitoring={"max_version_age_s": 1.0})
    workdir = workdir_copy(load_settings(config))
    runner = CliRunner()
    args = ["--workdir", str(workdir.root), "--config", str(config)]
    time.sleep(1.2)
    result = runner.invoke(app, ["monitor", "freshness", *args])
    assert result.exit_code == 0, result.output
    report = json.loads((workdir.reports_dir / "freshness.json").read_text())
    assert report["published_version"]["stale"], report
    assert report["published_version"]["age_seconds"] >= 1.0
    assert report["newest_event"]["at"] is not None
    assert report["feature_snapshot"]["at"] is not None
    assert report["precomputed_feeds"]["at"] is None  # no batch-score --to-store yet
    scored = runner.invoke(app, ["batch-score", *args, "--to-store", "--top-n", "5"])
    assert scored.exit_code == 0, scored.output
    runner.invoke(app, ["monitor", "freshness", *args])
    report = json.loads((workdir.reports_dir / "freshness.json").read_text())
    assert report["precomputed_feeds"]["age_seconds"] < 60
    assert not report["precomputed_feeds"]["stale"]
