"""What the matrix factorisations trained by ``implicit`` share (ALS and BPR).

Both learn a pair of factor matrices from the positives' user-item matrix with one of
implicit's CPU solvers, check the same input, fail the same way when training diverges, and
persist the two matrices through :class:`~feedforge.models.arrays.ArrayModel`. A subclass
says how to build its solver and the matrix it reads (:meth:`FactorModel._solver`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from implicit.recommender_base import ModelFitError, RecommenderBase
from threadpoolctl import threadpool_limits

from feedforge.datasets.interactions import Interactions
from feedforge.errors import DataError, NotFittedError, ValidationError
from feedforge.models.arrays import ArrayModel
from feedforge.models.base import EmbeddingRecommender


class FactorModel(ArrayModel, EmbeddingRecommender):
    """An embedding recommender whose learned state is ``user_factors_`` and ``item_factors_``.

    Attributes:
        user_factors_: ``(n_users, D)`` float32 user vectors.
        item_factors_: ``(n_items, D)`` float32 item vectors.
    """

    DIVERGED_HINT = "check the hyper-parameters"
    """What to change when training diverges, quoted in the error."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.user_factors_: np.ndarray | None = None
        self.item_factors_: np.ndarray | None = None

    @abstractmethod
    def _solver(self, interactions: Interactions) -> tuple[RecommenderBase, sp.csr_matrix]:
        """The unfitted implicit model and the ``(n_users, n_items)`` matrix it learns from."""

    def fit(self, interactions: Interactions) -> Self:
        """Learn the factors from the positives.

        Raises:
            DataError: there are no interactions, or training diverged (NaN/inf factors).
            ValidationError: a weight is not a finite positive number.
        """
        owner = type(self).__name__
        if len(interactions) == 0:
            raise DataError(f"{owner}.fit: no interactions to learn from")
        weight = np.asarray(interactions.weight)
        if not (np.isfinite(weight).all() and (weight > 0).all()):
            raise ValidationError(
                f"{owner}.fit: interaction weights must be finite and > 0 (positives only)"
            )
        # implicit parallelises over users itself; a multi-threaded BLAS inside each of its
        # threads oversubscribes the cores (implicit checks it when a solver is built, and
        # warns), so limit BLAS to one while the solver is built and fitted.
        with threadpool_limits(1, "blas"):
            solver, matrix = self._solver(interactions)
            try:
                solver.fit(matrix, show_progress=False)
            except ModelFitError as exc:
                raise DataError(
                    f"{owner}.fit: training diverged (NaN factors); {self.DIVERGED_HINT}"
                ) from exc
        user_factors = np.ascontiguousarray(solver.user_factors, dtype=np.float32)
        item_factors = np.ascontiguousarray(solver.item_factors, dtype=np.float32)
        if not (np.isfinite(user_factors).all() and np.isfinite(item_factors).all()):
            raise DataError(
                f"{owner}.fit: training diverged (non-finite factors); {self.DIVERGED_HINT}"
            )
        self.user_factors_, self.item_factors_ = user_factors, item_factors
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.user_factors_ is None or self.item_factors_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.user_factors_, self.item_factors_

    def user_embeddings(self) -> np.ndarray:
        """``(n_users, D)`` float32 user vectors."""
        return self._fitted()[0]

    def item_embeddings(self) -> np.ndarray:
        """``(n_items, D)`` float32 item vectors."""
        return self._fitted()[1]
