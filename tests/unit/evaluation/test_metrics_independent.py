"""Our metrics against hand computations and an independent implementation.

The independent one is Microsoft Recommenders (``recommenders`` on PyPI,
``recommenders.evaluation.python_evaluation``), the source of the ``msr-stratified`` protocol:
on the same predictions, over an ``msr-stratified`` split, our ``map_total``, ``ndcg``,
``precision`` and ``recall_total`` must equal its ``map``, ``ndcg_at_k``, ``precision_at_k``
and ``recall_at_k``, and our split must equal its ``python_stratified_split`` row for row.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import pytest

from feedforge.datasets.interactions import Interactions
from feedforge.evaluation.metrics import map_at_k, map_total, per_user_metrics
from feedforge.evaluation.protocols import ProtocolSplit, evaluate_fold, msr_stratified
from feedforge.models.base import Recommender


def test_map_total_by_hand() -> None:
    # user 0: recommended [3, 1, 7, 2], relevant {1, 7, 9, 4, 5} (R = 5), k = 4
    #   hits [0, 1, 1, 0]; sum of P@j at hits = 1/2 + 2/3 = 7/6
    #   map_total = (7/6) / 5 = 0.23333; map@4 = (7/6) / min(4, 5) = 0.29167
    # user 1: recommended [8, 0, -1, -1], relevant {8} (R = 1): sum = 1 -> both 1.0
    recommended = np.array([[3, 1, 7, 2], [8, 0, -1, -1]])
    relevant = [{1, 7, 9, 4, 5}, {8}]
    per_user = per_user_metrics(recommended, relevant, 4)
    np.testing.assert_allclose(per_user["map_total"], [7 / 6 / 5, 1.0])
    np.testing.assert_allclose(per_user["map"], [7 / 6 / 4, 1.0])
    assert map_total(recommended, relevant, 4) == pytest.approx((7 / 30 + 1) / 2)
    assert map_at_k(recommended, relevant, 4) == pytest.approx((7 / 24 + 1) / 2)
    # With R <= k the two definitions agree.
    assert map_total(recommended[1:], relevant[1:]) == map_at_k(recommended[1:], relevant[1:])


def test_one_relevant_item_ndcg_is_the_sasrec_formula() -> None:
    # One relevant item at rank r <= k: NDCG = 1 / log2(r + 1); HR = 1.
    for rank in range(1, 6):
        recommended = np.array([[10 + j for j in range(rank - 1)] + [0] + [20] * (5 - rank)])
        per_user = per_user_metrics(recommended, [{0}], 5)
        assert per_user["ndcg"][0] == pytest.approx(1 / math.log2(rank + 1))
        assert per_user["hitrate"][0] == 1.0
    assert per_user_metrics(np.array([[1, 2, 3, 4, 5, 0]]), [{0}], 5)["ndcg"][0] == 0.0


class RandomScores(Recommender):
    """Fixed random scores, no ties."""

    name = "random"

    def __init__(self, n_users: int, n_items: int, seed: int) -> None:
        self.scores = np.random.default_rng(seed).random((n_users, n_items)).astype(np.float32)

    def fit(self, interactions: Interactions) -> Self:
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        return self.scores[user_idx]

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path, build_command: str = "feedforge train") -> Self:
        raise NotImplementedError


def synthetic_ratings(seed: int) -> pl.DataFrame:
    """80 users, 150 items, 10-120 ratings per user: many users have > 10 test items, so a
    total-vs-min(k, R) denominator mix-up shows."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(80):
        chosen = rng.choice(150, size=int(rng.integers(10, 121)), replace=False)
        users += [str(u + 1)] * len(chosen)
        items += [str(i + 1) for i in chosen]
    order = rng.permutation(len(users))  # not grouped: the random column follows row order
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "user_id": np.array(users)[order],
            "item_id": np.array(items)[order],
            "timestamp": [
                t0 + timedelta(seconds=int(s)) for s in rng.integers(0, 10**7, len(users))
            ],
            "rating": rng.integers(1, 6, len(users)).astype(float),
        }
    )


def to_pandas(pd: Any, frame: pl.DataFrame) -> Any:
    """The frame as Microsoft Recommenders reads MovieLens: integer ids, default column names."""
    return pd.DataFrame(
        {
            "userID": frame["user_id"].cast(pl.Int64).to_numpy(),
            "itemID": frame["item_id"].cast(pl.Int64).to_numpy(),
            "rating": frame["rating"].to_numpy(),
        }
    )


def id_pairs(
    split: ProtocolSplit, user_idx: np.ndarray, item_idx: np.ndarray
) -> set[tuple[int, int]]:
    return {
        (int(u), int(i))
        for u, i in zip(split.users.id_of(user_idx), split.items.id_of(item_idx), strict=True)
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_msr_stratified_matches_microsoft_recommenders(seed: int) -> None:
    # A dev dependency (pinned in pyproject.toml): a missing package fails, never skips.
    import pandas as pd
    from recommenders.datasets import python_splitters as splitters
    from recommenders.evaluation import python_evaluation as evaluation

    frame = synthetic_ratings(seed)
    split = msr_stratified(frame)

    # 1. The split, row for row (test and validation folds).
    data = to_pandas(pd, frame)
    train, test = splitters.python_stratified_split(
        data.copy(), ratio=0.75, min_rating=1, filter_by="item", seed=42
    )
    fold = split.test
    assert id_pairs(split, fold.train.user_idx, fold.train.item_idx) == set(
        zip(train.userID, train.itemID, strict=True)
    )
    inner, held = splitters.python_stratified_split(
        train.copy(), ratio=0.75, min_rating=1, filter_by="item", seed=43
    )
    val = split.validation
    assert id_pairs(split, val.train.user_idx, val.train.item_idx) == set(
        zip(inner.userID, inner.itemID, strict=True)
    )
    assert val.relevant.nnz == len(held)

    # 2. The metrics, on the same top-10 lists of a random-score model.
    model = RandomScores(len(split.users), len(split.items), seed)
    ours = evaluate_fold(model, fold, (*split.metrics, "map@10"), k=split.k)
    recs, _ = model.recommend(fold.users, split.k, exclude=fold.exclude)
    rating_pred = pd.DataFrame(
        {
            "userID": np.repeat(np.array(split.users.id_of(fold.users), dtype=np.int64), split.k),
            "itemID": np.array(split.items.id_of(recs.ravel()), dtype=np.int64),
            "prediction": np.tile(np.arange(split.k, 0, -1, dtype=np.float64), len(fold.users)),
        }
    )
    theirs = {
        "map_total@10": evaluation.map(test, rating_pred, k=10),
        "ndcg@10": evaluation.ndcg_at_k(test, rating_pred, k=10),
        "precision@10": evaluation.precision_at_k(test, rating_pred, k=10),
        "recall_total@10": evaluation.recall_at_k(test, rating_pred, k=10),
        "map@10": evaluation.map_at_k(test, rating_pred, k=10),
    }
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)
    assert ours["map@10"] > ours["map_total@10"]  # some users have more than 10 test items
