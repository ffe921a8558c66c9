"""The shared ranker contract: every registered ranker (and LightGBM's listwise variant) must
pass these tests. The parametrisation iterates the registry, so a new ranker is tested once it
is registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedforge.config import ModelsConfig, RankerConfig
from feedforge.errors import ArtifactError, ConfigError, DataError, NotFittedError, ValidationError
from feedforge.evaluation.metrics import auc
from feedforge.models.base import Ranker
from feedforge.models.gbdt import LightGBMRanker
from feedforge.models.registry import RANKERS, create_ranker, load_ranker
from feedforge.models.tree import DecisionTreeRanker

INPUTS = {"dataset": "test-dataset"}  # the lineage every saved model records

FEATURES = ["affinity", "popularity", "noise"]
# (registered name, models.params for it): every ranker with its defaults, plus variants.
CASES: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in sorted(RANKERS)] + [
    ("lightgbm", {"objective": "lambdarank"})
]
IDS = [name + ("-" + "-".join(map(str, p.values())) if p else "") for name, p in CASES]


def signal(n_requests: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feeds of 10 impressions; the label depends on affinity and (on a very different scale,
    with a threshold a linear model only approximates) popularity; the third column is noise.
    Returns ``X``, ``y`` and the request key of each row (rows of a request not contiguous)."""
    rng = np.random.default_rng(seed)
    n = 10 * n_requests
    X = np.column_stack([rng.normal(0, 1, n), rng.normal(500, 100, n), rng.normal(0, 1, n)])
    logits = 2.5 * X[:, 0] + 1.5 * (X[:, 1] > 550) - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    group = rng.permutation(np.repeat(np.arange(n_requests), 10)).astype(str)
    return X, y, group


def make(name: str, params: dict[str, Any]) -> Ranker:
    return create_ranker(name, ModelsConfig(params={name: params}) if params else None)


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def fitted(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], Ranker]:
    name, params = request.param
    X, y, group = signal()
    return name, params, make(name, params).fit(X, y, FEATURES, group=group)


def test_fit_returns_self_and_learns_the_signal(
    fitted: tuple[str, dict[str, Any], Ranker],
) -> None:
    name, params, ranker = fitted
    assert ranker.feature_names_ == FEATURES
    X, y, _ = signal(seed=1)  # held-out feeds
    p = ranker.predict_proba(X)
    assert p.shape == (len(X),) and p.dtype == np.float64
    assert ((p >= 0) & (p <= 1)).all()
    assert auc(y, p) > 0.85
    # Calibrated: the mean prediction matches the held-out positive rate.
    assert abs(p.mean() - y.mean()) < 0.05
    again = make(name, params).fit(*signal()[:2], FEATURES, group=signal()[2])
    np.testing.assert_array_equal(again.predict_proba(X), p)  # same data, same model


def test_describe_names_the_features(fitted: tuple[str, dict[str, Any], Ranker]) -> None:
    text = fitted[2].describe()
    assert "affinity" in text and len(text.splitlines()) >= 2


def test_save_load_predicts_identically(
    fitted: tuple[str, dict[str, Any], Ranker], tmp_path: Path
) -> None:
    name, _, ranker = fitted
    saved = ranker.save(tmp_path / "ranker", inputs=INPUTS)
    assert saved.inputs == INPUTS and saved.extra["params"] == ranker.get_params()
    loaded = load_ranker(name, tmp_path / "ranker", expected_features=FEATURES)
    assert loaded.manifest_ == saved and loaded.get_params() == ranker.get_params()
    X, _, _ = signal(seed=2)
    np.testing.assert_allclose(loaded.predict_proba(X), ranker.predict_proba(X), rtol=0, atol=1e-12)
    assert loaded.describe() == ranker.describe()
    assert not list((tmp_path / "ranker").glob("*.pkl"))  # never pickle


def test_feature_mismatch_is_refused_with_the_difference(
    fitted: tuple[str, dict[str, Any], Ranker], tmp_path: Path
) -> None:
    name, _, ranker = fitted
    ranker.save(tmp_path / "ranker", inputs=INPUTS)
    with pytest.raises(ArtifactError) as info:
        load_ranker(name, tmp_path / "ranker", expected_features=["affinity", "popularity", "hour"])
    message = str(info.value)
    assert "missing from the model ['hour']" in message
    assert "extra in the model ['noise']" in message
    assert str(tmp_path / "ranker") in message


def test_missing_and_corrupt_artifacts_name_the_path(
    fitted: tuple[str, dict[str, Any], Ranker], tmp_path: Path
) -> None:
    name, _, ranker = fitted
    with pytest.raises(ArtifactError) as info:
        RANKERS[name].load(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value)
    ranker.save(tmp_path / "ranker", inputs=INPUTS)
    for path in sorted((tmp_path / "ranker").iterdir()):
        if path.name == "manifest.json":
            continue
        original = path.read_bytes()
        path.write_text('{"truncated": ')
        with pytest.raises(ArtifactError) as info:
            RANKERS[name].load(tmp_path / "ranker")
        assert str(path) in str(info.value), path.name
        path.write_bytes(original)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_bad_input_is_refused_clearly(name: str, params: dict[str, Any]) -> None:
    X, y, group = signal(n_requests=20)
    ranker = make(name, params)
    with pytest.raises(NotFittedError):
        ranker.predict_proba(X)
    with pytest.raises(DataError, match="every label is 1"):
        ranker.fit(X, np.ones(len(X)), FEATURES, group=group)
    bad = X.copy()
    bad[3, 1], bad[7, 2] = np.nan, np.inf
    with pytest.raises(ValidationError, match=r"\['popularity', 'noise'\]"):
        ranker.fit(bad, y, FEATURES, group=group)
    with pytest.raises(ValidationError, match="labels"):
        ranker.fit(X, y[:10], FEATURES, group=group)
    with pytest.raises(ValidationError, match="0 or 1"):
        ranker.fit(X, y * 2, FEATURES, group=group)
    with pytest.raises(ValidationError, match="repeated"):
        ranker.fit(X, y, ["a", "a", "b"], group=group)
    with pytest.raises(ValidationError, match="group"):
        ranker.fit(X, y, FEATURES, group=group[:5])
    ranker.fit(X, y, FEATURES, group=group)
    with pytest.raises(ValidationError, match="columns"):
        ranker.predict_proba(X[:, :2])
    with pytest.raises(ValidationError, match=r"\['popularity', 'noise'\]"):
        ranker.predict_proba(bad)


def test_registry_builds_rankers_from_config() -> None:
    config = ModelsConfig(
        ranker=RankerConfig(type="lightgbm"), params={"lightgbm": {"objective": "lambdarank"}}
    )
    ranker = create_ranker(config.ranker.type, config)
    assert isinstance(ranker, LightGBMRanker) and ranker.params.objective == "lambdarank"
    tree = create_ranker("tree", ModelsConfig(params={"tree": {"max_depth": 2}}))
    assert isinstance(tree, DecisionTreeRanker) and tree.params.max_depth == 2
    with pytest.raises(ConfigError, match=r"models\.params\.tree"):
        create_ranker("tree", ModelsConfig(params={"tree": {"depth": 2}}))
    with pytest.raises(ConfigError, match="unknown ranker"):
        create_ranker("nope")


def test_lambdarank_needs_groups_and_orders_within_them() -> None:
    X, y, group = signal()
    with pytest.raises(ValidationError, match="needs group"):
        LightGBMRanker(objective="lambdarank").fit(X, y, FEATURES)
    ranker = LightGBMRanker(objective="lambdarank", n_estimators=50).fit(
        X, y, FEATURES, group=group
    )
    assert ranker.calibration_ is not None and ranker.calibration_[0] > 0  # monotone calibration
    raw = ranker.decision_function(X)
    p = ranker.predict_proba(X)
    assert (np.argsort(raw, kind="stable") == np.argsort(p, kind="stable")).all()


def test_tree_is_the_printed_rules() -> None:
    X, y, group = signal()
    tree = DecisionTreeRanker(max_depth=2, min_samples_leaf=50).fit(X, y, FEATURES, group=group)
    text = tree.describe()
    assert text.startswith("decision tree (") and text.count("leaf:") <= 4
    assert text.splitlines()[1].strip().startswith("if affinity <= ")  # the strongest signal
    # Each row's probability is its leaf's training positive rate.
    leaves = tree.leaves(X)
    for leaf in np.unique(leaves):
        assert tree.predict_proba(X[leaves == leaf])[0] == pytest.approx(y[leaves == leaf].mean())


def test_tree_refuses_an_inconsistent_node_array(tmp_path: Path) -> None:
    X, y, _ = signal(n_requests=50)
    DecisionTreeRanker(max_depth=2, min_samples_leaf=20).fit(X, y, FEATURES).save(
        tmp_path / "t", inputs=INPUTS
    )
    path = tmp_path / "t" / "tree.json"
    payload = json.loads(path.read_text())
    payload["left"][0] = 10_000  # a child outside the tree
    path.write_text(json.dumps(payload))
    with pytest.raises(ArtifactError, match="inconsistent node arrays"):
        DecisionTreeRanker.load(tmp_path / "t")


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_sample_weights_are_used_and_checked(name: str, params: dict[str, Any]) -> None:
    X, y, group = signal()
    # Positives count 8 times when the "noise" column is positive: the weighted model must
    # learn that column (lambdarank: such positives get a higher relevance grade).
    heavy = np.where(y == 1, np.where(X[:, 2] > 0, 8.0, 1.0), 1.0)
    plain = make(name, params).fit(X, y, FEATURES, group=group)
    weighted = make(name, params).fit(X, y, FEATURES, group=group, sample_weight=heavy)
    p_plain, p_weighted = plain.predict_proba(X), weighted.predict_proba(X)
    if params.get("objective") == "lambdarank":  # weights become graded relevance
        assert not np.array_equal(p_plain, p_weighted)
    else:  # pointwise: heavier positives raise the predicted rate
        assert p_weighted.mean() > p_plain.mean() + 0.05
    boosted = X[:, 2] > 0
    gap_plain = p_plain[boosted].mean() - p_plain[~boosted].mean()
    gap_weighted = p_weighted[boosted].mean() - p_weighted[~boosted].mean()
    assert gap_weighted > gap_plain + 0.02
    ranker = make(name, params)
    for bad in (heavy[:10], -heavy, np.zeros_like(heavy), np.full_like(heavy, np.nan)):
        with pytest.raises(ValidationError, match="sample weights"):
            ranker.fit(X, y, FEATURES, group=group, sample_weight=bad)


def test_logistic_weights_equal_repeated_rows() -> None:
    # The weighted log loss is the loss of the data with each row repeated weight times (the
    # tree's min_samples_leaf counts rows, not weight, so only the linear model is exact).
    X, y, _ = signal(n_requests=100)
    w = np.where(np.arange(len(y)) % 3 == 0, 2.0, 1.0)
    repeated = np.repeat(np.arange(len(y)), w.astype(int))
    weighted = make("logistic", {}).fit(X, y, FEATURES, sample_weight=w)
    copies = make("logistic", {}).fit(X[repeated], y[repeated], FEATURES)
    np.testing.assert_allclose(weighted.predict_proba(X), copies.predict_proba(X), atol=1e-4)


def test_lightgbm_early_stopping_chooses_fewer_rounds_on_noise() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    y = (rng.random(3000) < 0.3).astype(int)  # no signal: the holdout stops boosting early
    stopped = LightGBMRanker(n_estimators=300).fit(X, y, FEATURES)
    full = LightGBMRanker(n_estimators=300, early_stopping_rounds=None).fit(X, y, FEATURES)
    assert stopped.booster_.num_trees() < 100 <= full.booster_.num_trees()
    with pytest.raises(ValidationError, match="early_stopping_rounds"):
        LightGBMRanker(early_stopping_rounds=0).fit(X, y, FEATURES)
