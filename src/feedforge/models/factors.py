"""What the matrix factorisations trained by ``implicit`` share (ALS and BPR).

Both learn a pair of factor matrices from the positives' user-item matrix with one of
implicit's CPU solvers, check the same input, fail the same way when training diverges, and
persist the two matrices through :class:`~feedforge.models.arrays.ArrayModel`. A subclass
says how to build its solver and the matrix it reads (:meth:`FactorModel._solver`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Self

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
    WARM_START: ClassVar[bool] = False
    """Whether :meth:`warm_start` is supported (the solver starts from given factors)."""
    LOSS_CURVE: ClassVar[bool] = False
    """The solver reports its training loss to the fit callback (implicit's ALS with
    ``calculate_training_loss``): recorded as :attr:`training_curve_`."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.user_factors_: np.ndarray | None = None
        self.item_factors_: np.ndarray | None = None
        self._initial: tuple[np.ndarray, np.ndarray] | None = None

    def warm_start(self, user_factors: np.ndarray, item_factors: np.ndarray) -> Self:
        """Start the next :meth:`fit` from these factors instead of random ones (rows in the
        id maps of the data it will learn from; see :func:`aligned_factors`).

        Raises:
            ValidationError: the model does not support it.
        """
        if not self.WARM_START:
            raise ValidationError(f"{type(self).__name__} does not support a warm start")
        self._initial = (
            np.ascontiguousarray(user_factors, dtype=np.float32),
            np.ascontiguousarray(item_factors, dtype=np.float32),
        )
        return self

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
            if self._initial is not None:
                users, items = self._initial
                want = (matrix.shape[0], getattr(solver, "factors", users.shape[1]))
                if users.shape != want or items.shape != (matrix.shape[1], want[1]):
                    raise ValidationError(
                        f"{owner}.fit: warm-start factors {users.shape} and {items.shape} do "
                        f"not fit {matrix.shape} interactions with {want[1]} factors"
                    )
                # implicit starts from factors already set instead of drawing random ones.
                solver.user_factors, solver.item_factors = users.copy(), items.copy()
            losses: list[float] = []

            def record(_iteration: int, _elapsed: float, loss: float | None = None) -> None:
                if loss is not None:
                    losses.append(float(loss))

            try:
                recording = {"callback": record} if self.LOSS_CURVE else {}
                solver.fit(matrix, show_progress=False, **recording)
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
        if losses:
            self.training_curve_ = {"x": "iteration", "series": {"train loss": losses}}
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


def aligned_factors(
    old_ids: list[str], old: np.ndarray, new_ids: list[str], seed: int = 0
) -> tuple[np.ndarray, int]:
    """Factors of ``old_ids`` moved to the rows of ``new_ids``; ids without an old row get
    small random ones (as implicit draws them: ``U[0, 0.01)``).

    Returns:
        The ``(len(new_ids), D)`` float32 factors and how many rows were copied.
    """
    row_of = {item: j for j, item in enumerate(old_ids)}
    rng = np.random.default_rng(seed)
    out = (rng.random((len(new_ids), old.shape[1])) * 0.01).astype(np.float32)
    pairs = [(i, row_of[x]) for i, x in enumerate(new_ids) if x in row_of]
    if pairs:
        new_rows, old_rows = (np.array(p, dtype=np.int64) for p in zip(*pairs, strict=True))
        out[new_rows] = old[old_rows]
    return out, len(pairs)
