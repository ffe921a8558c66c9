"""RP3beta: item-item similarities from a three-step random walk on the user-item graph,
re-weighted against popularity (Paudel et al., ACM TiiS 2017; the variant and defaults
benchmarked by Dacrema et al., RecSys 2019).

A walk from item ``i`` to a user who has it, then to another item ``j`` of that user, has
probability ``W_ij = sum_u P(u | i) P(j | u)`` with ``P(u | i) = 1 / deg(i)`` and
``P(j | u) = 1 / deg(u)`` (each raised to ``alpha``); dividing column ``j`` by
``deg(j)^beta`` keeps popular items from reaching every row. Each item keeps its
``neighbors`` largest similarities (a sparse ``W``, diagonal zero), and a user's scores are
their history row times ``W``: ``score(u) = X[u] @ W``.

``W`` is computed in blocks of rows, so memory is ``O(block x n_items)`` beside the sparse
result; the model is not an embedding model (no user vectors to publish).
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from feedforge.datasets.interactions import Interactions
from feedforge.errors import DataError, NotFittedError
from feedforge.models.arrays import ArrayModel, ArraySpec
from feedforge.models.base import Recommender, checked_indices
from feedforge.models.params import ModelParams

_BLOCK_ENTRIES = 1 << 24
"""Dense similarity entries computed at once (a block of rows x every item)."""


class RP3betaParams(ModelParams):
    """Hyper-parameters of :class:`RP3betaRecommender` (documented there)."""

    alpha: float = Field(1.0, gt=0)
    beta: float = Field(0.5, ge=0)
    neighbors: int = Field(200, ge=1)


def _row_normalized(matrix: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """Each row divided by its sum, then every entry raised to ``alpha``."""
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums, dtype=np.float64), where=sums > 0)
    out = sp.diags(scale) @ matrix
    out = sp.csr_matrix(out, dtype=np.float64)
    if alpha != 1.0:
        out.data **= alpha
    return out


def _top_k_rows(block: np.ndarray, k: int, offset: int) -> sp.csr_matrix:
    """The ``k`` largest positive entries of each row of a dense block (its diagonal, rows
    ``offset + r``, zeroed first) as CSR."""
    rows = np.arange(block.shape[0])
    block[rows, offset + rows] = 0.0
    k = min(k, block.shape[1])
    top = np.argpartition(-block, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(block, top, axis=1)
    keep = values > 0
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    return sp.csr_matrix((values[keep].astype(np.float32), top[keep], indptr), shape=block.shape)


class RP3betaRecommender(ArrayModel, Recommender):
    """RP3beta: ``score(u) = X[u] @ W`` with ``W`` the popularity-penalised random-walk
    similarities (see the module docs).

    Args:
        alpha: Exponent of the transition probabilities (1: the plain random walk; below 1
            flattens them).
        beta: Popularity penalty: column ``j`` is divided by ``deg(j)^beta`` (0: none).
        neighbors: Similarities kept per item (the largest ones).

    Attributes:
        item_weights_: ``(n_items, n_items)`` float32 CSR ``W``, zero diagonal.
        user_items_: ``(n_users, n_items)`` float32 CSR binary training matrix.
    """

    name: ClassVar[str] = "rp3beta"
    Params = RP3betaParams
    params: RP3betaParams
    ARRAYS = (
        ArraySpec("item_weights", ("n_items", "n_items"), sparse=True),
        ArraySpec("user_items", ("n_users", "n_items"), sparse=True),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.item_weights_: sp.csr_matrix | None = None
        self.user_items_: sp.csr_matrix | None = None

    def fit(self, interactions: Interactions) -> Self:
        """Compute ``W`` from the binarised ``(n_users, n_items)`` matrix of positives.

        Raises:
            DataError: there are no interactions.
        """
        if len(interactions) == 0:
            raise DataError("RP3betaRecommender.fit: no interactions to learn from")
        p = self.params
        user_items = sp.csr_matrix(interactions.to_csr(), dtype=np.float32, copy=True)
        user_items.sum_duplicates()
        user_items.eliminate_zeros()
        user_items.data[:] = 1.0
        n_items = user_items.shape[1]
        item_to_user = _row_normalized(user_items.T.tocsr(), p.alpha)  # P(u | i)
        user_to_item = _row_normalized(user_items, p.alpha)  # P(j | u)
        degree = np.asarray(user_items.sum(axis=0)).ravel()
        penalty = np.divide(
            1.0, degree**p.beta, out=np.zeros(n_items, dtype=np.float64), where=degree > 0
        )
        step = max(1, _BLOCK_ENTRIES // max(n_items, 1))
        blocks = []
        for start in range(0, n_items, step):
            stop = min(start + step, n_items)
            block = (item_to_user[start:stop] @ user_to_item).toarray() * penalty[None, :]
            blocks.append(_top_k_rows(block, p.neighbors, start))
        weights = sp.vstack(blocks, format="csr")
        if not np.isfinite(weights.data).all():
            raise DataError("RP3betaRecommender.fit: non-finite similarities")
        self.item_weights_, self.user_items_ = weights, user_items
        return self

    def _fitted(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        if self.item_weights_ is None or self.user_items_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.item_weights_, self.user_items_

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` float32 scores of training users from their training history
        (0 everywhere for a user without one).

        Raises:
            ValidationError: a user index is not an integer in ``[0, n_users)``.
        """
        weights, user_items = self._fitted()
        users = checked_indices(user_idx, user_items.shape[0], "RP3beta score", "user")
        return np.asarray((user_items[users] @ weights).toarray(), dtype=np.float32)
