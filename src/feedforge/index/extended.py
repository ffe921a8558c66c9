"""A published index plus items added after it was built, searched as one.

Items posted to the service after a publish (``POST /items``) have no place in the
version's HNSW graph, which is immutable and shared. :class:`ExtendedIndex` keeps the
published :class:`~feedforge.index.ann.AnnIndex` over items ``[0, N)`` and an exact
inner-product search over the ``M`` added items, numbered ``[N, N + M)``: a query retrieves
its best ``n`` from each and keeps the best ``n`` of both. The added items are few (the next
publish folds them into the graph), so their brute-force scores cost ``M * D`` flops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from feedforge.errors import ValidationError
from feedforge.index.ann import AnnIndex, Retrieval


class ExtendedIndex:
    """``base`` over items ``[0, N)`` plus ``extra`` (``(M, D)``) as items ``[N, N + M)``."""

    def __init__(self, base: AnnIndex, extra: np.ndarray) -> None:
        extra = np.ascontiguousarray(extra, dtype=np.float32)
        if extra.ndim != 2 or (len(extra) and extra.shape[1] != base.dim):
            raise ValidationError(
                f"added item vectors must be (M, {base.dim}), got shape {extra.shape}"
            )
        self.base = base
        self.extra = extra

    def retrieve(self, query: np.ndarray, n: int, exclude: Any = ()) -> Retrieval:
        """The best ``n`` of both parts, without the ``exclude`` indices (see the module
        docs); the method is the base's."""
        n_base = self.base.n_items
        excluded = np.unique(np.asarray(exclude, dtype=np.int64))
        found = self.base.retrieve(query, n, exclude=excluded[excluded < n_base])
        if not len(self.extra):
            return found
        scores = self.extra @ np.asarray(query, dtype=np.float32)
        scores[excluded[excluded >= n_base] - n_base] = -np.inf
        keep = np.isfinite(scores)
        ids = np.concatenate([found.ids, np.flatnonzero(keep) + n_base])
        all_scores = np.concatenate([found.scores, scores[keep]])
        order = np.argsort(-all_scores, kind="stable")[:n]
        return Retrieval(
            ids[order].astype(np.int64), all_scores[order].astype(np.float32), found.method
        )
