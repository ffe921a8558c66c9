"""BPR: the wrapper reproduces implicit's model and scores; the bias column; errors.

The shared contract (shapes, save/load, known answer) is in ``test_contract.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import implicit.cpu.bpr
import numpy as np
import pytest

from feedforge.datasets.interactions import Interactions
from feedforge.errors import ArtifactError, DataError, ValidationError
from feedforge.models.bpr import BPRRecommender

INPUTS = {"dataset": "test-dataset"}  # the lineage every saved model records

N_USERS, N_ITEMS = 40, 25
PARAMS: dict[str, Any] = {"factors": 6, "learning_rate": 0.05, "iterations": 20}


def random_interactions(weight: float = 1.0, n_users: int = N_USERS) -> Interactions:
    """About 30% dense random positives; the last user has none (a cold user)."""
    rng = np.random.default_rng(7)
    dense = rng.random((n_users, N_ITEMS)) < 0.3
    dense[-1] = False
    users, items = np.nonzero(dense)
    n = len(users)
    return Interactions(
        users.astype(np.int32), items.astype(np.int32), np.full(n, weight, np.float32),
        np.zeros(n, np.int64), n_users, N_ITEMS,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data() -> Interactions:
    return random_interactions()


@pytest.fixture(scope="module")
def model(data: Interactions) -> BPRRecommender:
    return BPRRecommender(**PARAMS).fit(data)


def test_reproduces_implicit_factors_and_scores(data: Interactions, model: BPRRecommender) -> None:
    reference = implicit.cpu.bpr.BayesianPersonalizedRanking(
        factors=PARAMS["factors"], learning_rate=PARAMS["learning_rate"], regularization=0.01,
        iterations=PARAMS["iterations"], num_threads=1, verify_negative_samples=True,
        random_state=0,
    )  # fmt: skip
    user_items = data.to_csr()
    reference.fit(user_items, show_progress=False)
    np.testing.assert_array_equal(model.user_embeddings(), reference.user_factors)
    np.testing.assert_array_equal(model.item_embeddings(), reference.item_factors)
    # implicit's own ranking of the full catalog, bias included, equals ours.
    users = np.arange(N_USERS)
    ids, scores = reference.recommend(
        users, user_items[users], N=N_ITEMS, filter_already_liked_items=False
    )
    ours = model.score(users)
    np.testing.assert_allclose(np.take_along_axis(ours, ids, axis=1), scores, rtol=1e-5, atol=1e-6)
    assert (np.diff(np.take_along_axis(ours, ids, axis=1), axis=1) <= 1e-6).all()


def test_embeddings_carry_the_item_bias_column(data: Interactions, model: BPRRecommender) -> None:
    users, items = model.user_embeddings(), model.item_embeddings()
    assert users.shape == (N_USERS, PARAMS["factors"] + 1)
    assert items.shape == (N_ITEMS, PARAMS["factors"] + 1)
    np.testing.assert_array_equal(users[:, -1], 1.0)
    # The cold user (no training data) gets only the item biases: a popularity-like ranking.
    np.testing.assert_array_equal(users[-1, :-1], 0.0)
    np.testing.assert_allclose(model.score(np.array([N_USERS - 1]))[0], items[:, -1], rtol=1e-6)


def test_weights_are_ignored_and_seed_matters(data: Interactions, model: BPRRecommender) -> None:
    heavy = BPRRecommender(**PARAMS).fit(random_interactions(weight=5.0))
    np.testing.assert_array_equal(heavy.item_embeddings(), model.item_embeddings())
    other = BPRRecommender(**PARAMS, random_state=1).fit(data)
    assert not np.array_equal(other.item_embeddings(), model.item_embeddings())


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"factors": 0}, "factors"),
        ({"iterations": 0}, "iterations"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"regularization": -1.0}, "regularization"),
        ({"num_threads": -1}, "num_threads"),
        ({"random_state": None}, "random_state"),
    ],
)
def test_rejects_invalid_params(params: dict[str, Any], match: str, data: Interactions) -> None:
    with pytest.raises(ValidationError, match=match):
        BPRRecommender(**params).fit(data)


def test_rejects_non_positive_weights(data: Interactions) -> None:
    with pytest.raises(ValidationError, match="weights"):
        BPRRecommender(**PARAMS).fit(random_interactions(weight=0.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_divergence_raises_data_error(
    bad: float, monkeypatch: pytest.MonkeyPatch, data: Interactions
) -> None:
    def diverging_fit(self: Any, user_items: Any, show_progress: bool = True) -> None:
        shape = (user_items.shape[0], self.factors + 1)
        self.user_factors = np.full(shape, bad, np.float32)
        self.item_factors = np.full((user_items.shape[1], self.factors + 1), bad, np.float32)
        self._check_fit_errors()  # implicit's own NaN check (inf passes it)

    monkeypatch.setattr(implicit.cpu.bpr.BayesianPersonalizedRanking, "fit", diverging_fit)
    with pytest.raises(DataError, match="diverged"):
        BPRRecommender(**PARAMS).fit(data)


def test_load_refuses_factors_of_the_wrong_width(model: BPRRecommender, tmp_path: Path) -> None:
    model.save(tmp_path / "bpr", inputs=INPUTS)
    manifest = json.loads((tmp_path / "bpr" / "manifest.json").read_text())
    assert manifest["counts"] == {"n_users": N_USERS, "n_items": N_ITEMS, "dim": 7}
    np.save(tmp_path / "bpr" / "item_factors.npy", model.item_embeddings()[:, :-1])
    with pytest.raises(ArtifactError, match="item_factors"):
        BPRRecommender.load(tmp_path / "bpr")
