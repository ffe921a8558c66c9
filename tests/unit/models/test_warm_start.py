"""A warm-started ALS starts where the earlier model ended: factors moved to new id maps,
fewer sweeps for the same fit, refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest

from feedforge.datasets.interactions import Interactions
from feedforge.errors import ValidationError
from feedforge.models.als import ALSRecommender
from feedforge.models.bpr import BPRRecommender
from feedforge.models.factors import aligned_factors


def interactions(seed: int = 0, n_users: int = 200, n_items: int = 80) -> Interactions:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, 3_000)
    # Two tastes: even users like the first half of the items, odd ones the second.
    items = (users % 2) * (n_items // 2) + rng.integers(0, n_items // 2, 3_000)
    return Interactions(
        user_idx=users.astype(np.int32),
        item_idx=items.astype(np.int32),
        weight=np.ones(3_000, dtype=np.float32),
        timestamp_us=np.arange(3_000, dtype=np.int64),
        n_users=n_users,
        n_items=n_items,
    )


def loss(
    model: ALSRecommender, data: Interactions, alpha: float = 10.0, reg: float = 0.05
) -> float:
    """The implicit-ALS objective (confidence-weighted squared error plus L2)."""
    x, y = model.user_embeddings().astype(np.float64), model.item_embeddings().astype(np.float64)
    p = np.zeros((data.n_users, data.n_items))
    c = np.ones_like(p)
    np.add.at(c, (data.user_idx, data.item_idx), alpha)
    p[data.user_idx, data.item_idx] = 1.0
    return float((c * (p - x @ y.T) ** 2).sum() + reg * ((x**2).sum() + (y**2).sum()))


def test_a_warm_start_from_a_converged_model_needs_fewer_sweeps() -> None:
    data = interactions()
    converged = ALSRecommender(factors=8, iterations=30).fit(data)
    warm = ALSRecommender(factors=8, iterations=1)
    warm.warm_start(converged.user_embeddings(), converged.item_embeddings()).fit(data)
    cold = ALSRecommender(factors=8, iterations=1).fit(data)
    assert loss(warm, data) < loss(cold, data)
    assert loss(warm, data) <= loss(converged, data) * 1.01


def test_factors_follow_their_ids_into_new_id_maps() -> None:
    old = np.arange(6, dtype=np.float32).reshape(3, 2)
    moved, kept = aligned_factors(["a", "b", "c"], old, ["c", "new", "a"])
    assert kept == 2
    np.testing.assert_array_equal(moved[0], old[2])
    np.testing.assert_array_equal(moved[2], old[0])
    assert (moved[1] >= 0).all() and (moved[1] < 0.01).all()


def test_a_warm_start_that_cannot_apply_is_refused() -> None:
    data = interactions()
    model = ALSRecommender(factors=8, iterations=1)
    model.warm_start(np.zeros((5, 8)), np.zeros((data.n_items, 8)))
    with pytest.raises(ValidationError, match="warm-start factors"):
        model.fit(data)
    with pytest.raises(ValidationError, match="does not support"):
        BPRRecommender(factors=8).warm_start(np.zeros((1, 8)), np.zeros((1, 8)))
