"""An index plus items added after it was built: the best of both, exclusions honoured."""

from __future__ import annotations

import numpy as np

from feedforge.features.item_table import ItemTable
from feedforge.index.ann import AnnIndex
from feedforge.index.extended import ExtendedIndex


def test_extended_index_equals_an_exact_search_over_both_parts() -> None:
    rng = np.random.default_rng(0)
    base, extra = rng.normal(size=(500, 8)).astype(np.float32), rng.normal(size=(30, 8))
    index = ExtendedIndex(AnnIndex.build(base, kind="hnsw", seed=0, ef_search=500), extra)
    everything = np.vstack([base, extra]).astype(np.float32)
    for query in rng.normal(size=(20, 8)).astype(np.float32):
        exclude = rng.choice(530, size=40, replace=False)
        found = index.retrieve(query, 25, exclude=exclude)
        scores = everything @ query
        scores[exclude] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:25]
        np.testing.assert_array_equal(np.sort(found.ids), np.sort(expected))
        np.testing.assert_allclose(found.scores, scores[found.ids], rtol=1e-5)
        assert not set(found.ids.tolist()) & set(exclude.tolist())
        assert (np.diff(found.scores) <= 1e-6).all()  # best first


def test_an_extended_item_table_keeps_rows_and_remaps_categories() -> None:
    table = ItemTable.from_records([{"category": "b", "price": 2.0}, None])
    more = table.extended([{"category": "a", "price": 5.0, "created_at_s": 10.0}])
    assert more.categories(np.arange(3)) == ["b", "", "a"]
    np.testing.assert_array_equal(more.values["price"], [2.0, 0.0, 5.0])
    np.testing.assert_array_equal(more.present, [True, False, True])
    assert more.created_at_s[2] == 10.0 and np.isnan(more.created_at_s[0])
