"""The ranking benchmark end to end, on a tiny simulated world."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feedforge.bench.ranking import OBJECTIVES, default_specs, run_ranking, switch_specs
from feedforge.cli import app
from feedforge.config import Settings

from .conftest import SMALL_CONFIG


@pytest.mark.integration
def test_ranking_table(tmp_path: Path) -> None:
    # The clicks objective is unweighted, so log loss and calibration are defined too.
    settings = Settings(**{**SMALL_CONFIG, "objective": "clicks"})
    report = run_ranking(settings, tmp_path, feed_users=200, quick=True)
    saved = json.loads((tmp_path / "ranking_simulator.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert saved["command"].startswith("feedforge ")
    table = (tmp_path / "ranking_simulator.md").read_text()
    rows = {r["model"]: r for r in saved["rows"]}
    assert set(rows) == {"retrieval order (no ranker)", *(s.label for s in default_specs())}
    assert saved["objective"] == "clicks" and saved["label"] == "clicked"
    for spec in default_specs():
        m = rows[spec.label]["metrics"]
        assert 0.5 < m["auc"] <= 1.0, spec.label  # every ranker learns something
        assert 0.0 <= m["ece"] < 0.1 and m["log_loss"] > 0
        assert 0.0 < m["ndcg@10"] <= 1.0 and m["requests_with_positive"] > 0
        assert m["feed_clicks"] > 0 and m["feed_watch_minutes"] > 0
        assert 0.0 < m["coverage"] <= 1.0 and 0.0 <= m["diversity"] <= 1.0
        assert f"| {spec.label} |" in table
    baseline = rows["retrieval order (no ranker)"]["metrics"]
    assert "auc" not in baseline and baseline["feed_clicks"] > 0
    assert "if " in table and "logistic regression: log-odds" in table  # printed baselines
    heads = rows["dcn-v2 (multi-task)"]["metrics"]["heads"]
    assert set(heads) == {"click", "watch", "purchase", "revenue"}
    assert heads["click"]["auc"] > 0.5 and heads["watch"]["calibration_ratio"] > 0
    assert "## Multi-task heads" in table and "| dcn-v2 (multi-task) | watch |" in table


@pytest.mark.integration
def test_bench_ranking_command(
    tmp_path: Path, write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`feedforge bench ranking` end to end, on the default (value-weighted) objective."""
    config = write_config(tmp_path / "small.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["bench", "ranking", "--config", str(config), "--feed-users", "100", "--out", "out"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "ranking_simulator.json").read_text())
    assert report["objective"] == "watch_time"
    switch = {(row["model"], row["objective"]) for row in report["objective_switch"]}
    assert switch == {(s.label, goal) for s in switch_specs() for goal in OBJECTIVES}
    for row in report["rows"][1:]:
        if row["ranker"] == "dcn":  # its probability is p(click): calibrated, with a log loss
            assert row["metrics"]["log_loss"] > 0
        else:  # value-weighted: odds of value, not a probability
            assert row["metrics"]["log_loss"] is None
    assert all(row["metrics"]["score_ms_1000"] > 0 for row in report["rows"][1:])
    assert "ranking / simulator / objective watch_time" in result.output
