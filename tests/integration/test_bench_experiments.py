"""The experiments benchmark end to end, on a tiny simulated world and a few runs: every
section is written, the truth and the estimates are sane, the table carries the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import feedforge.bench.experiments as bench
from feedforge.config import Settings

from .conftest import SMALL_CONFIG


@pytest.mark.integration
def test_experiments_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "ORDER_AB_GRID", (50, 100))
    monkeypatch.setattr(bench, "ORDER_INTERLEAVING_GRID", (5, 10))
    spec = bench.BenchSpec(
        users_per_run=200, aa_runs=20, ab_runs=20, srm_units=100_000, srm_runs=10,
        srm_clean_runs=10, power_runs=10, ab_grid=(100, 200), interleaving_grid=(10, 20),
        ope_runs=3, ope_users=100, ope_bank=5, ope_sessions=1_000,
    )  # fmt: skip
    report = bench.run_experiments_bench(Settings(**SMALL_CONFIG), tmp_path, spec, lambda _: None)
    saved = json.loads((tmp_path / "experiments.json").read_text())
    assert set(saved) >= {"aa", "ab", "srm", "interleaving", "interleaving_retrieval_order", "ope"}
    assert saved["command"].startswith("feedforge")
    assert 0 <= saved["aa"]["false_positive_rate"] <= 1 and saved["aa"]["runs"] == 20
    assert saved["ab"]["true_lift"] == pytest.approx(report["ab"]["true_lift"])
    assert saved["ab"]["true_lift"] < 0  # 20 candidates lose watch time against 200
    assert saved["srm"]["detection_rate"] >= 0.8  # a 1% skew at 100,000 units
    assert len(saved["ope"]["policies"]) == 3
    for policy in saved["ope"]["policies"]:
        assert 0 < policy["true_value"] < 6
        assert set(policy["estimates"]) == {"ips", "snips", "dr", "rips"}
    table = (tmp_path / "experiments.md").read_text()
    assert "A/A false-positive rate" in table and "control vs retrieval-order" in table
