"""The content mapping that gives catalog items without learned embeddings a vector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from feedforge.errors import ValidationError
from feedforge.publish.coldstart import MIN_LEARNED_ITEMS, cold_item_embeddings, item_attributes

NOW = datetime(2026, 1, 10, tzinfo=UTC)


def catalog(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "item_id": [f"i{k:04d}" for k in range(n)],
            "categories": [["a"] if k % 2 == 0 else ["b", "c"] for k in range(n)],
            "created_at": [NOW - timedelta(days=float(d)) for d in rng.uniform(0, 30, n)],
            "duration_seconds": rng.uniform(60, 7200, n),
            "price": [None if k % 5 == 0 else 1.0 + k % 7 for k in range(n)],
        }
    )


def test_attributes_are_multi_hot_categories_and_standardised_numbers() -> None:
    items = catalog(10).with_columns(
        pl.Series("categories", [["a"], ["b", "c"], [], *[["a"]] * 7], dtype=pl.List(pl.String))
    )
    x = item_attributes(items, NOW)
    assert x.shape == (10, 3 + 3)  # vocabulary a, b, c + duration, price, age
    np.testing.assert_array_equal(x[:3, :3], [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    known_price = items.get_column("price").is_not_null().to_numpy()
    np.testing.assert_allclose(x[known_price, 4].mean(), 0.0, atol=1e-6)
    assert (x[~known_price, 4] == 0).all()  # unknown: the mean
    with pytest.raises(ValidationError, match="price"):
        item_attributes(items.drop("price"), NOW)


def test_cold_items_get_vectors_near_learned_items_of_their_categories() -> None:
    items = catalog(400)
    category_b = np.array([k % 2 == 1 for k in range(400)])
    # Learned vectors of the first 300 items point along their category's direction; 50 of
    # them are zero (interactions never learned); the last 100 are outside the model.
    rng = np.random.default_rng(1)
    direction = np.where(category_b[:, None], [[0.0, 1.0]], [[1.0, 0.0]])
    vectors = (direction + rng.normal(0, 0.05, (400, 2))).astype(np.float32)[:300]
    vectors[250:300] = 0.0
    model_ids = items.get_column("item_id").to_list()[:300]

    cold = cold_item_embeddings(items, model_ids, vectors, NOW)

    assert cold.ids == items.get_column("item_id").to_list()  # model order, then the rest
    assert (cold.n_learned, cold.n_content) == (250, 150)
    np.testing.assert_array_equal(cold.vectors[:250], vectors[:250])  # learned: unchanged
    mapped = cold.vectors[250:]
    assert np.abs(mapped).sum(axis=1).min() > 0
    predicted_b = mapped[:, 1] > mapped[:, 0]
    np.testing.assert_array_equal(predicted_b, category_b[250:])
    assert cold.r2 is not None and cold.r2 > 0.9


def test_too_few_learned_items_leave_cold_items_unmapped() -> None:
    items = catalog(MIN_LEARNED_ITEMS + 5)
    vectors = np.zeros((MIN_LEARNED_ITEMS + 5, 3), dtype=np.float32)
    vectors[: MIN_LEARNED_ITEMS - 1] = 1.0
    cold = cold_item_embeddings(items, items.get_column("item_id").to_list(), vectors, NOW)
    assert (cold.n_content, cold.r2) == (0, None)
    np.testing.assert_array_equal(cold.vectors, vectors)
    with pytest.raises(ValidationError, match="ids"):
        cold_item_embeddings(items, ["i0000"], vectors, NOW)
