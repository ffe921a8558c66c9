"""Implicit-feedback matrix factorisation with Alternating Least Squares (Hu, Koren, Volinsky).

Each positive ``(u, i)`` with weight ``w`` gets preference ``p_ui = 1`` and confidence
``c_ui = 1 + alpha * w``; every other pair has ``p_ui = 0``, ``c_ui = 1``. ALS minimises

    sum_ui c_ui (p_ui - x_u . y_i)^2 + regularization * (sum_u |x_u|^2 + sum_i |y_i|^2)

by solving for all user vectors ``X`` with the item vectors ``Y`` fixed, then the reverse.
Training uses :class:`implicit.cpu.als.AlternatingLeastSquares`; :meth:`ALSRecommender.fold_in`
solves the same user equation in numpy for a user known only from live history.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from pydantic import Field

from feedforge.datasets.interactions import Interactions
from feedforge.errors import ValidationError
from feedforge.models.arrays import ArraySpec
from feedforge.models.base import checked_indices
from feedforge.models.factors import FactorModel
from feedforge.models.params import ModelParams


class ALSParams(ModelParams):
    """Hyper-parameters of :class:`ALSRecommender` (documented there)."""

    factors: int = Field(64, ge=1)
    regularization: float = Field(0.05, ge=0)
    iterations: int = Field(15, ge=1)
    alpha: float = Field(10.0, gt=0, description="Confidence scaling of implicit feedback")
    random_state: int = 0


class ALSRecommender(FactorModel):
    """Implicit ALS: ``score(u, i) = user_embeddings()[u] . item_embeddings()[i]``.

    Args:
        factors: Embedding size ``D``.
        regularization: L2 strength ``lambda`` on user and item vectors.
        iterations: ALS sweeps (one user solve plus one item solve each).
        alpha: Confidence scaling: ``c_ui = 1 + alpha * w_ui``.
        random_state: Seed of the initial factors.

    Attributes:
        user_factors_: ``(n_users, D)`` float32 user vectors (zeros for users without data).
        item_factors_: ``(n_items, D)`` float32 item vectors.

    Example::

        model = ALSRecommender(factors=64).fit(train)
        ids, scores = model.recommend(np.array([0, 1]), k=10, exclude=train.to_csr())
        vector = model.fold_in(np.array([3, 17, 17]))  # a user known only from live history
    """

    name: ClassVar[str] = "als"
    WARM_START: ClassVar[bool] = True
    LOSS_CURVE: ClassVar[bool] = True
    Params = ALSParams
    params: ALSParams
    ARRAYS = (
        ArraySpec("user_factors", ("n_users", "factors")),
        ArraySpec("item_factors", ("n_items", "factors")),
    )

    DIVERGED_HINT = "raise regularization or lower alpha"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._yty: np.ndarray | None = None  # cached (D, D) Y^T Y for fold_in

    def _solver(self, interactions: Interactions) -> tuple[AlternatingLeastSquares, sp.csr_matrix]:
        """implicit's ALS and the confidence matrix; duplicate ``(user, item)`` pairs are
        summed before the confidence is computed."""
        p = self.params
        confidence = interactions.to_csr()
        # implicit's solver takes the matrix value itself as c_ui (its `alpha` only rescales
        # it), so pass 1 + alpha * w to get the paper's confidence.
        confidence.data = (1.0 + p.alpha * confidence.data).astype(np.float32)
        solver = AlternatingLeastSquares(
            factors=p.factors,
            regularization=p.regularization,
            alpha=1.0,
            dtype=np.float32,
            iterations=p.iterations,
            random_state=p.random_state,
            calculate_training_loss=True,  # the training curve (one extra pass per sweep)
        )
        return solver, confidence

    def fit(self, interactions: Interactions) -> Self:
        """Factorise the ``(n_users, n_items)`` confidence matrix of the positives.

        Raises:
            DataError: there are no interactions, or training diverged (NaN/inf factors).
            ValidationError: a weight is not a finite positive number.
        """
        super().fit(interactions)
        self._yty = None  # the cache of the previous factors
        return self

    def fold_in(
        self, item_idx_history: np.ndarray, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """The vector of a user from their item history, with the item vectors fixed.

        Solves the ALS user equation ``x = (Y^T C Y + lambda I)^-1 Y^T C p``, computed as
        ``(Y^T Y + Y_h^T (C_h - I) Y_h + lambda I) x = Y_h^T c_h`` where ``Y_h`` are the rows of
        the history items and ``c_h = 1 + alpha * w_h``. Repeated items have their weights
        summed, as in training. For a training user this is close to (not exactly) the stored
        vector: training ends with an item solve, after the last user solve.

        Args:
            item_idx_history: ``(H,)`` int item indices the user interacted with positively.
            weights: ``(H,)`` positive weights; ``None`` means 1.0 each.

        Returns:
            ``(D,)`` float32 user vector; zeros for an empty history.

        Raises:
            ValidationError: an index is outside ``[0, n_items)`` or the weights are invalid.
        """
        _, item_factors = self._fitted()
        n_items, dim = item_factors.shape
        items = checked_indices(item_idx_history, n_items, "fold_in", "item").astype(np.int64)
        if weights is None:
            w = np.ones(len(items), dtype=np.float64)
        else:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
            if w.shape != items.shape:
                raise ValidationError(f"fold_in: {len(w)} weights for {len(items)} history items")
            if not (np.isfinite(w).all() and (w > 0).all()):
                raise ValidationError("fold_in: weights must be finite and > 0")
        if len(items) == 0:
            return np.zeros(dim, dtype=np.float32)
        unique, inverse = np.unique(items, return_inverse=True)
        confidence = 1.0 + self.params.alpha * np.bincount(inverse, weights=w)  # (H_unique,)
        if self._yty is None:
            y64 = item_factors.astype(np.float64)
            self._yty = y64.T @ y64
        y_h = item_factors[unique].astype(np.float64)  # (H_unique, D)
        a = (
            self._yty
            + (y_h.T * (confidence - 1.0)) @ y_h
            + self.params.regularization * np.eye(dim)
        )
        b = y_h.T @ confidence
        try:
            x = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            # Singular only with regularization == 0 and too little history: least squares.
            x = np.linalg.lstsq(a, b, rcond=None)[0]
        return x.astype(np.float32)

    def score_from_history(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Scores for arbitrary histories (users held out of training, cold users).

        Each row is folded in with :meth:`fold_in` (its stored values are the weights) and
        scored against the item vectors.

        Args:
            user_items: ``(B, n_items)`` sparse matrix of each user's positive weights;
                explicit zeros are ignored.

        Returns:
            ``(B, n_items)`` float32 scores; an empty row scores 0 everywhere.

        Raises:
            ValidationError: not a sparse matrix, wrong number of columns, or a stored
                weight that is not finite and > 0.
        """
        _, item_factors = self._fitted()
        n_items = item_factors.shape[0]
        if not sp.issparse(user_items) or user_items.shape[1] != n_items:
            raise ValidationError(
                f"ALS score_from_history: user_items must be a scipy sparse matrix with "
                f"{n_items} columns, got {type(user_items).__name__} "
                f"of shape {getattr(user_items, 'shape', None)}"
            )
        matrix = sp.csr_matrix(user_items, dtype=np.float64, copy=True)
        matrix.eliminate_zeros()
        vectors = np.zeros((matrix.shape[0], item_factors.shape[1]), dtype=np.float32)
        for row in range(matrix.shape[0]):
            start, stop = matrix.indptr[row], matrix.indptr[row + 1]
            if stop > start:
                vectors[row] = self.fold_in(matrix.indices[start:stop], matrix.data[start:stop])
        return vectors @ item_factors.T
