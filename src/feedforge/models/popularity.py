"""The most-popular baseline: one recency-windowed popularity ranking for every user.

It is the floor every personalised model must beat, and the fallback for users the
personalised model does not know (cold start).
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
from pydantic import Field

from feedforge.datasets.interactions import Interactions
from feedforge.errors import DataError, NotFittedError, ValidationError
from feedforge.models.arrays import ArrayModel, ArraySpec
from feedforge.models.base import Recommender
from feedforge.models.params import ModelParams

_US_PER_DAY = 86_400 * 1_000_000


def _tie_broken_ranks(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Dense ranks of ``(primary, secondary)`` pairs: 0 for the lowest pair, equal pairs equal.

    Args:
        primary: ``(n_items,)`` main sort key.
        secondary: ``(n_items,)`` key that breaks ties of ``primary``.

    Returns:
        ``(n_items,)`` float32 ranks, larger for more popular items.
    """
    order = np.lexsort((secondary, primary))  # last key is the primary one
    p, s = primary[order], secondary[order]
    new_pair = np.empty(len(order), dtype=bool)
    new_pair[:1] = True
    new_pair[1:] = (p[1:] != p[:-1]) | (s[1:] != s[:-1])
    ranks = np.empty(len(order), dtype=np.float32)
    ranks[order] = np.cumsum(new_pair) - 1
    return ranks


class PopularityParams(ModelParams):
    """Hyper-parameters of :class:`MostPopular`."""

    window_days: float = Field(7.0, gt=0, description="Count positives in the last N train days")


class MostPopular(ArrayModel, Recommender):
    """Ranks items by their positives in the last ``window_days`` of the training data.

    ``score`` is the same ``(n_items,)`` vector for every user (any user index is accepted,
    including users unknown at training time). The window ends at the newest training timestamp,
    not at "now", so offline evaluation and a model trained on old data see the same ranking.

    Args:
        window_days: Length of the recency window in days.

    Attributes:
        window_counts_: ``(n_items,)`` float64 summed weights of positives within the window.
        total_counts_: ``(n_items,)`` float64 summed weights of all positives (the tie-break).
        scores_: ``(n_items,)`` float32 dense rank of ``(window_counts_, total_counts_)``:
            0 for the least popular, equal for exact ties. An ordinal, not a count.
        newest_timestamp_us_: The newest training timestamp (the window's end).
    """

    name: ClassVar[str] = "popularity"
    Params = PopularityParams
    params: PopularityParams
    ARRAYS = (
        ArraySpec("window_counts", ("n_items",), np.float64),
        ArraySpec("total_counts", ("n_items",), np.float64),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.window_counts_: np.ndarray | None = None
        self.total_counts_: np.ndarray | None = None
        self.scores_: np.ndarray | None = None
        self.newest_timestamp_us_: int | None = None
        self.n_users_: int | None = None

    def fit(self, interactions: Interactions) -> Self:
        """Count positives per item, within the window and overall.

        Raises:
            DataError: there are no interactions.
            ValidationError: a weight is not finite.
        """
        if len(interactions) == 0:
            raise DataError("MostPopular.fit: no interactions to count")
        weight = np.asarray(interactions.weight, dtype=np.float64)
        if not np.isfinite(weight).all():
            raise ValidationError("MostPopular.fit: interaction weights must be finite")
        timestamp = np.asarray(interactions.timestamp_us, dtype=np.int64)
        newest = int(timestamp.max())
        in_window = timestamp >= newest - round(self.params.window_days * _US_PER_DAY)
        n_items = interactions.n_items
        item_idx = np.asarray(interactions.item_idx)
        self.window_counts_ = np.bincount(
            item_idx[in_window], weights=weight[in_window], minlength=n_items
        )
        self.total_counts_ = np.bincount(item_idx, weights=weight, minlength=n_items)
        self.scores_ = _tie_broken_ranks(self.window_counts_, self.total_counts_)
        self.newest_timestamp_us_ = newest
        self.n_users_ = interactions.n_users
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(window_counts_, total_counts_, scores_)``, or NotFittedError."""
        if self.window_counts_ is None or self.total_counts_ is None or self.scores_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.window_counts_, self.total_counts_, self.scores_

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` float32: the popularity ranks, repeated for each of the ``B`` users."""
        scores = self._fitted()[2]
        return np.tile(scores, (len(np.atleast_1d(user_idx)), 1))

    def _state(self) -> dict[str, Any]:
        return {"newest_timestamp_us": self.newest_timestamp_us_, "n_users": self.n_users_}

    def _restore(self, state: dict[str, Any]) -> None:
        window_counts, total_counts = self._arrays().values()
        self.scores_ = _tie_broken_ranks(window_counts, total_counts)
        self.newest_timestamp_us_ = int(state["newest_timestamp_us"])
        self.n_users_ = int(state["n_users"])

    def _describe(self) -> tuple[dict[str, int], dict[str, Any]]:
        counts, extra = super()._describe()
        return {"n_users": int(self.n_users_ or 0), **counts}, extra
