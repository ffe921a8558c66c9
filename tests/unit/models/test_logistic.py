"""The logistic ranker: learns a signal, round-trips through JSON exactly, refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from feedforge.errors import ArtifactError, DataError, NotFittedError, ValidationError
from feedforge.evaluation.metrics import auc
from feedforge.models.logistic import LogisticRanker

INPUTS = {"dataset": "test-dataset"}  # the lineage every saved model records

FEATURES = ["als_score", "item_popularity", "noise"]


def signal(n: int = 2_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels driven by the first two columns (on very different scales), the third is noise."""
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [rng.normal(0, 1, n), rng.normal(500, 100, n), rng.normal(0, 1, n)]
    )  # fmt: skip
    logits = 3.0 * X[:, 0] - 0.02 * (X[:, 1] - 500)
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def ranker() -> LogisticRanker:
    X, y = signal()
    return LogisticRanker(C=1.0, max_iter=500).fit(X, y, FEATURES)


def test_learns_a_separable_signal(ranker: LogisticRanker) -> None:
    X, y = signal(seed=1)  # held-out data
    assert auc(y, ranker.predict_proba(X)) > 0.9
    coefficients = ranker.coefficients()
    assert list(coefficients) == FEATURES
    assert coefficients["als_score"] > 1.0  # standardised units: log-odds per std
    assert coefficients["item_popularity"] < -0.5
    assert abs(coefficients["noise"]) < 0.3


def test_numpy_prediction_matches_scikit_learn(ranker: LogisticRanker) -> None:
    X, y = signal()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500)).fit(X, y)
    X_new, _ = signal(n=300, seed=2)
    np.testing.assert_allclose(
        ranker.predict_proba(X_new), pipeline.predict_proba(X_new)[:, 1], rtol=0, atol=1e-9
    )


def test_save_load_predicts_identically(ranker: LogisticRanker, tmp_path: Path) -> None:
    ranker.save(tmp_path / "ranker", inputs=INPUTS)
    assert not list(tmp_path.glob("ranker/*.pkl")) and not list(tmp_path.glob("ranker/*.joblib"))
    saved = json.loads((tmp_path / "ranker" / "model.json").read_text())
    assert saved["feature_names"] == FEATURES and saved["params"]["C"] == 1.0
    loaded = LogisticRanker.load(tmp_path / "ranker", expected_features=FEATURES)
    X, _ = signal(n=500, seed=3)
    np.testing.assert_allclose(loaded.predict_proba(X), ranker.predict_proba(X), rtol=0, atol=1e-9)
    assert loaded.coefficients() == ranker.coefficients()


def test_feature_mismatch_lists_the_difference(ranker: LogisticRanker, tmp_path: Path) -> None:
    ranker.save(tmp_path / "ranker", inputs=INPUTS)
    with pytest.raises(ArtifactError) as info:
        LogisticRanker.load(
            tmp_path / "ranker", expected_features=["als_score", "item_popularity", "recency"]
        )
    message = str(info.value)
    assert "missing from the model ['recency']" in message
    assert "extra in the model ['noise']" in message
    assert str(tmp_path / "ranker") in message
    with pytest.raises(ArtifactError, match="another order"):
        LogisticRanker.load(tmp_path / "ranker", expected_features=FEATURES[::-1])


def test_single_class_is_refused() -> None:
    X, _ = signal(n=50)
    with pytest.raises(DataError, match="every label is 1"):
        LogisticRanker().fit(X, np.ones(50), FEATURES)
    with pytest.raises(DataError, match="every label is 0"):
        LogisticRanker().fit(X, np.zeros(50), FEATURES)


def test_nan_features_name_the_columns(ranker: LogisticRanker) -> None:
    X, y = signal(n=50)
    X[3, 1] = np.nan
    X[7, 2] = np.inf
    with pytest.raises(ValidationError, match=r"\['item_popularity', 'noise'\]"):
        LogisticRanker().fit(X, y, FEATURES)
    with pytest.raises(ValidationError, match=r"\['item_popularity', 'noise'\]"):
        ranker.predict_proba(X)


def test_other_input_errors(ranker: LogisticRanker) -> None:
    X, y = signal(n=50)
    with pytest.raises(ValidationError, match="columns"):
        ranker.predict_proba(X[:, :2])
    with pytest.raises(ValidationError, match="labels"):
        LogisticRanker().fit(X, y[:10], FEATURES)
    with pytest.raises(ValidationError, match="0 or 1"):
        LogisticRanker().fit(X, y * 2, FEATURES)
    with pytest.raises(ValidationError, match="repeated"):
        LogisticRanker().fit(X, y, ["a", "a", "b"])
    with pytest.raises(NotFittedError):
        LogisticRanker().coefficients()


def test_corrupt_model_file_names_the_path(ranker: LogisticRanker, tmp_path: Path) -> None:
    ranker.save(tmp_path / "ranker", inputs=INPUTS)
    path = tmp_path / "ranker" / "model.json"
    payload = json.loads(path.read_text())
    payload["coef"] = payload["coef"][:-1]
    path.write_text(json.dumps(payload))
    with pytest.raises(ArtifactError) as info:
        LogisticRanker.load(tmp_path / "ranker")
    assert str(path) in str(info.value)
