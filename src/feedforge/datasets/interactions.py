"""The ``Interactions`` container: positive user-item interactions in index space.

The dataset stage builds it (:meth:`feedforge.datasets.load.Dataset.train_interactions`);
every retrieval model learns from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from feedforge.errors import ValidationError


@dataclass(frozen=True)
class Interactions:
    """Positive user-item interactions in index space (see the dataset's id maps).

    Attributes:
        user_idx: ``(N,)`` int32 user indices in ``[0, n_users)``.
        item_idx: ``(N,)`` int32 item indices in ``[0, n_items)``.
        weight: ``(N,)`` float32 interaction strengths (1.0 for plain implicit feedback).
        timestamp_us: ``(N,)`` int64 UTC timestamps in microseconds since the epoch.
        n_users: Number of users in the id map.
        n_items: Number of items in the id map.
        item_features: Optional ``(n_items, F)`` float32 CSR of item content (e.g. multi-hot
            genres), for models that use side information.
        rating: Optional ``(N,)`` float32 explicit ratings (NaN where none).
    """

    user_idx: np.ndarray
    item_idx: np.ndarray
    weight: np.ndarray
    timestamp_us: np.ndarray
    n_users: int
    n_items: int
    item_features: sp.csr_matrix | None = None
    rating: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.user_idx)
        if not (len(self.item_idx) == len(self.weight) == len(self.timestamp_us) == n):
            raise ValidationError("Interactions: all arrays must have the same length")
        if n and (self.user_idx.min() < 0 or self.user_idx.max() >= self.n_users):
            raise ValidationError(f"Interactions: user_idx outside [0, {self.n_users})")
        if n and (self.item_idx.min() < 0 or self.item_idx.max() >= self.n_items):
            raise ValidationError(f"Interactions: item_idx outside [0, {self.n_items})")
        if self.item_features is not None and self.item_features.shape[0] != self.n_items:
            raise ValidationError(
                f"Interactions: item_features has {self.item_features.shape[0]} rows, "
                f"expected n_items={self.n_items}"
            )
        if self.rating is not None and len(self.rating) != n:
            raise ValidationError("Interactions: rating must have one value per interaction")

    def sequences(self) -> list[np.ndarray]:
        """Each user's item indices in time order (ties keep input order); ``[]`` if none.

        Returns:
            ``n_users`` int64 arrays.
        """
        order = np.lexsort((np.arange(len(self)), self.timestamp_us, self.user_idx))
        users = self.user_idx[order]
        items = self.item_idx[order].astype(np.int64)
        bounds = np.searchsorted(users, np.arange(self.n_users + 1))
        return [items[bounds[u] : bounds[u + 1]] for u in range(self.n_users)]

    def __len__(self) -> int:
        return len(self.user_idx)

    def to_csr(self) -> sp.csr_matrix:
        """The ``(n_users, n_items)`` float32 CSR matrix of summed weights."""
        matrix = sp.csr_matrix(
            (self.weight.astype(np.float32), (self.user_idx, self.item_idx)),
            shape=(self.n_users, self.n_items),
            dtype=np.float32,
        )
        matrix.sum_duplicates()
        return matrix
