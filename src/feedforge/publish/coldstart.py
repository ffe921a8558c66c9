"""Embeddings for catalog items the retrieval model never learned: a content mapping.

A collaborative retrieval model only learns vectors for items with interactions in its
training split: matrix factorisation leaves every other item at the zero vector (no data, only
the regulariser), and items added to the catalog after the split are not in its id map at all.
Served as they are, such items can never be retrieved: on the 1M-item load benchmark the
version served 97,230 items, a tenth of the catalog.

:func:`cold_item_embeddings` learns an *attribute-to-feature mapping* (Gantner et al., 2010,
"Learning Attribute-to-Feature Mappings for Cold-Start Recommendations"): a ridge regression
from an item's catalog attributes to its learned embedding, fitted on the items that have one,
then applied to those that do not. The attributes are the catalog's:

* the categories, multi-hot (every category of the item, not only the first);
* ``log1p`` of the duration, of the price and of the age in days at the snapshot time, each
  standardised, with 0 (the mean) where unknown.

The predicted vectors sit near the learned vectors of similar items, shrunk towards their
mean, so a cold item is retrieved for users whose taste points at its categories, ranked
below the strong learned items of those categories; the ranker then scores it with its own
(zero) counters. ``serving.cold_items = "none"`` serves learned items only, as before.

The fit's R^2 on the learned items (how much of the embedding the attributes explain) is
recorded in the version's metadata.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
from sklearn.linear_model import Ridge

from feedforge.errors import ValidationError
from feedforge.features.content import ContentMap, attribute_scaling, encode_attributes

logger = logging.getLogger(__name__)

MIN_LEARNED_ITEMS = 20
"""Fewer learned items than this and no mapping is fitted (the cold items are not served)."""
RIDGE_ALPHA = 1.0


@dataclass(frozen=True)
class ColdItems:
    """The learned items' vectors completed with content vectors.

    Attributes:
        ids: Every served item id: the retrieval model's ids in their order, then the catalog
            items it does not know, in catalog order.
        vectors: ``(len(ids), D)`` float32; rows of learned items unchanged.
        n_learned: Items whose own learned vector is served.
        n_content: Items served with a content vector (zero vectors of the model replaced,
            plus catalog items outside its id map).
        r2: The mapping's R^2 on the learned items (None when no mapping was fitted).
        mapping: The fitted map (None when none was fitted), saved in the version's bundle
            so the service maps items posted later the same way.
    """

    ids: list[str]
    vectors: np.ndarray
    n_learned: int
    n_content: int
    r2: float | None
    mapping: ContentMap | None = None


def item_attributes(items: pl.DataFrame, snapshot_time: datetime) -> np.ndarray:
    """``(n_items, n_categories + 3)`` float32 attributes of catalog rows, in their order,
    scaled over these rows (see :mod:`feedforge.features.content`)."""
    vocabulary, mean, std = attribute_scaling(items, snapshot_time)
    return encode_attributes(items, snapshot_time, vocabulary, mean, std)


def cold_item_embeddings(
    items: pl.DataFrame,
    model_ids: list[str],
    model_vectors: np.ndarray,
    snapshot_time: datetime,
) -> ColdItems:
    """Complete a retrieval model's item vectors with content vectors (see the module docs).

    Args:
        items: The item catalog (``item_id``, ``categories``, ``created_at``,
            ``duration_seconds``, ``price``).
        model_ids: The retrieval model's item ids (its id map order).
        model_vectors: ``(len(model_ids), D)`` its item embeddings.
        snapshot_time: The version's feature snapshot time (item ages).

    Returns:
        The served ids and vectors. Items of the model that are not in the catalog keep
        their learned vector (or zero: no attributes to map).
    """
    vectors = np.asarray(model_vectors, dtype=np.float32)
    if vectors.shape[0] != len(model_ids):
        raise ValidationError(f"{len(model_ids)} item ids but {vectors.shape[0]} item vectors")
    known = set(model_ids)
    catalog_ids = items.get_column("item_id").to_list()
    new_ids = [i for i in catalog_ids if i not in known]
    ids = [*model_ids, *new_ids]
    learned = np.zeros(len(ids), dtype=bool)
    learned[: len(model_ids)] = np.abs(vectors).sum(axis=1) > 0
    out = np.vstack([vectors, np.zeros((len(new_ids), vectors.shape[1]), dtype=np.float32)])

    row_of = {item_id: j for j, item_id in enumerate(ids)}
    catalog_rows = np.array([row_of[i] for i in catalog_ids], dtype=np.int64)
    vocabulary, mean, std = attribute_scaling(items, snapshot_time)
    attributes = encode_attributes(items, snapshot_time, vocabulary, mean, std)
    fit = learned[catalog_rows]
    targets = ~fit
    if fit.sum() < MIN_LEARNED_ITEMS or not targets.any():
        if targets.any():
            logger.warning(
                "only %d catalog items have learned embeddings (< %d): %d cold items are "
                "served with zero vectors",
                int(fit.sum()),
                MIN_LEARNED_ITEMS,
                int(targets.sum()),
            )
        return ColdItems(ids, out, int(learned.sum()), 0, None)
    ridge = Ridge(alpha=RIDGE_ALPHA)
    ridge.fit(attributes[fit], out[catalog_rows[fit]])
    r2 = float(ridge.score(attributes[fit], out[catalog_rows[fit]]))
    out[catalog_rows[targets]] = ridge.predict(attributes[targets]).astype(np.float32)
    mapping = ContentMap(
        vocabulary=vocabulary,
        mean=mean,
        std=std,
        coef=np.asarray(ridge.coef_, dtype=np.float64).reshape(out.shape[1], -1),
        intercept=np.asarray(ridge.intercept_, dtype=np.float64).reshape(out.shape[1]),
        r2=r2,
    )
    return ColdItems(ids, out, int(learned.sum()), int(targets.sum()), r2, mapping)
