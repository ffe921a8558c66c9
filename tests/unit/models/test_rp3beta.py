"""RP3beta against its formula computed densely, in one block, with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from feedforge.datasets.interactions import Interactions
from feedforge.models import rp3beta
from feedforge.models.rp3beta import RP3betaRecommender


def _interactions(seed: int = 0, n_users: int = 30, n_items: int = 25) -> Interactions:
    rng = np.random.default_rng(seed)
    pairs = {
        (int(u), int(i))
        for u, i in zip(rng.integers(0, n_users, 200), rng.integers(0, n_items, 200), strict=True)
    }
    users, items = map(np.array, zip(*sorted(pairs), strict=True))
    n = len(users)
    return Interactions(
        users.astype(np.int32), items.astype(np.int32), np.ones(n, np.float32),
        np.arange(n, dtype=np.int64), n_users, n_items,
    )  # fmt: skip


def _dense_reference(interactions: Interactions, alpha: float, beta: float) -> np.ndarray:
    x = np.zeros((interactions.n_users, interactions.n_items))
    x[interactions.user_idx, interactions.item_idx] = 1.0
    user_deg, item_deg = x.sum(axis=1), x.sum(axis=0)
    p_ui = np.where(user_deg[:, None] > 0, x / np.maximum(user_deg[:, None], 1), 0.0) ** alpha
    p_iu = np.where(item_deg[:, None] > 0, x.T / np.maximum(item_deg[:, None], 1), 0.0) ** alpha
    w = p_iu @ p_ui
    w = w / np.where(item_deg > 0, item_deg**beta, np.inf)[None, :]
    np.fill_diagonal(w, 0.0)
    return w


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.7, 0.5)])
def test_similarities_are_the_random_walk_formula(
    alpha: float, beta: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rp3beta, "_BLOCK_ENTRIES", 7 * 25)  # several blocks of 7 rows
    data = _interactions()
    model = RP3betaRecommender(alpha=alpha, beta=beta, neighbors=1000).fit(data)
    expected = _dense_reference(data, alpha, beta)
    np.testing.assert_allclose(model.item_weights_.toarray(), expected, rtol=1e-5, atol=1e-7)
    users = np.arange(data.n_users)
    x = np.zeros((data.n_users, data.n_items))
    x[data.user_idx, data.item_idx] = 1.0
    np.testing.assert_allclose(model.score(users), x @ expected, rtol=1e-4, atol=1e-6)


def test_each_item_keeps_its_largest_neighbors() -> None:
    data = _interactions(seed=3)
    full = _dense_reference(data, 1.0, 0.5)
    kept = RP3betaRecommender(neighbors=4).fit(data).item_weights_.toarray()
    for row, reference in zip(kept, full, strict=True):
        assert np.count_nonzero(row) <= 4
        if np.count_nonzero(reference) >= 4:
            assert np.count_nonzero(row) == 4
            assert row[row > 0].min() >= np.sort(reference)[-4] - 1e-9
