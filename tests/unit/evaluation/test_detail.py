"""The evaluation report's detail (:mod:`feedforge.evaluation.detail`) and its history
(:mod:`feedforge.evaluation.history`), each statistic checked against an independent
implementation (scikit-learn's calibration curve, a plain NumPy bootstrap, the metrics at each
cut-off)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.calibration import calibration_curve

from feedforge.evaluation.detail import (
    bootstrap_intervals,
    list_categories,
    metric_curves,
    primary_categories,
    reliability_bins,
)
from feedforge.evaluation.history import evaluation_history, save_evaluation
from feedforge.evaluation.metrics import ranking_report
from feedforge.evaluation.ranking_metrics import intra_list_diversity


def test_reliability_bins_match_sklearn_quantile_calibration_curve() -> None:
    rng = np.random.default_rng(0)
    p = rng.beta(2, 8, size=2_000)
    y = (rng.random(2_000) < p * 1.3).astype(np.int8)
    bins = reliability_bins(y, p, 10)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    assert [b["n"] for b in bins] == [200] * 10
    np.testing.assert_allclose([b["observed"] for b in bins], observed, atol=1e-12)
    np.testing.assert_allclose([b["predicted"] for b in bins], predicted, atol=1e-12)


def test_reliability_bins_reject_mismatched_lengths() -> None:
    with pytest.raises(Exception, match="3 labels for 2 predictions"):
        reliability_bins(np.zeros(3), np.zeros(2), 5)
    assert reliability_bins(np.zeros(0), np.zeros(0), 5) == []


def test_bootstrap_intervals_agree_with_a_plain_numpy_bootstrap() -> None:
    rng = np.random.default_rng(1)
    per_user = {"ndcg": rng.beta(1, 6, size=800), "hitrate": (rng.random(800) < 0.3) * 1.0}
    ours = bootstrap_intervals(per_user, resamples=4_000, confidence=0.9, seed=3)
    draws = rng.integers(0, 800, size=(4_000, 800))
    for name, values in per_user.items():
        means = values[draws].mean(axis=1)
        low, high = np.quantile(means, [0.05, 0.95])
        width = high - low
        assert ours[name][0] == pytest.approx(low, abs=0.1 * width)
        assert ours[name][1] == pytest.approx(high, abs=0.1 * width)
        assert ours[name][0] < values.mean() < ours[name][1]
    assert bootstrap_intervals(per_user, resamples=0, confidence=0.9) == {}
    assert bootstrap_intervals({"x": np.array([1.0])}, 100, 0.9) == {}


def test_metric_curves_are_the_metrics_at_each_cut_off() -> None:
    rng = np.random.default_rng(2)
    n_users, n_items = 50, 40
    recs = np.array([rng.permutation(n_items)[:20] for _ in range(n_users)])
    dense = rng.random((n_users, n_items)) < 0.1
    dense[0, recs[0, 0]] = True
    relevant = sp.csr_matrix(dense.astype(np.float64))
    keep = np.flatnonzero(np.diff(relevant.indptr) > 0)
    recs, relevant = recs[keep], relevant[keep]
    curves = metric_curves(recs, relevant, [1, 5, 20])
    assert curves["k"] == [1, 5, 20]
    for i, k in enumerate(curves["k"]):
        report = ranking_report(recs, relevant, n_items, k)
        for name in ("ndcg", "recall", "map", "hitrate", "precision"):
            assert curves[name][i] == pytest.approx(report[f"{name}@{k}"]), (name, k)
    with pytest.raises(Exception, match="cut-off 30"):
        metric_curves(recs, relevant, [30])


def test_primary_categories_and_list_diversity() -> None:
    features = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=float))
    codes = primary_categories(features, 4)
    assert codes is not None and codes.tolist() == [0, 1, -1, 2]
    listed = list_categories(np.array([[0, 1, -1], [3, 3, 0]]), codes)
    assert listed.tolist() == [[0, 1, -1], [2, 2, 0]]
    # Row 1: one pair, different; row 2: pairs (2,2) same, (2,0) x2 different -> 2/3.
    assert intra_list_diversity(listed) == pytest.approx((1.0 + 2 / 3) / 2)
    assert primary_categories(None, 4) is None


def _report(at: datetime, dataset: str, ndcg: float) -> dict[str, object]:
    return {
        "created_at": at.isoformat(),
        "dataset_version": dataset,
        "models": {"m": {"ndcg@10": ndcg}},
    }


def test_history_keeps_every_run_up_to_the_limit(tmp_path: Path) -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(5):
        save_evaluation(tmp_path, _report(start + timedelta(hours=i), f"d{i}", i / 10), keep=3)
    runs, unreadable = evaluation_history(tmp_path)
    assert unreadable == []
    assert [r["dataset_version"] for _, r in runs] == ["d2", "d3", "d4"]  # oldest removed
    assert runs[0][0] == "20261201T020000.000000Z_d2.json"


def test_history_lists_unreadable_runs_and_keeps_the_rest(tmp_path: Path) -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    save_evaluation(tmp_path, _report(start, "d0", 0.1), keep=10)
    broken = tmp_path / "evaluations" / "20261201T010000.000000Z_d1.json"
    broken.write_text("{not json", encoding="utf-8")
    (tmp_path / "evaluations" / "20261201T020000.000000Z_d2.json").write_text(
        json.dumps({"no": "models"}), encoding="utf-8"
    )
    (tmp_path / "evaluations" / "notes.json").write_text("{}", encoding="utf-8")  # not a run
    runs, unreadable = evaluation_history(tmp_path)
    assert [r["dataset_version"] for _, r in runs] == ["d0"]
    assert unreadable == [broken.name, "20261201T020000.000000Z_d2.json"]
