"""The ranking benchmark end to end, on a tiny simulated world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedforge.bench.ranking import default_specs, run_ranking
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
