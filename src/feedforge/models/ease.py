"""EASE: an item-item linear autoencoder with a closed-form solution (Steck, WWW 2019).

"Embarrassingly Shallow Autoencoders for Sparse Data" learns an ``(n_items, n_items)`` weight
matrix ``B`` that reconstructs each user's row from the other items:

    min_B |X - X B|_F^2 + lambda |B|_F^2   subject to   diag(B) = 0

whose solution is ``B = I - P diag(1 / diag(P))`` with ``P = (X^T X + lambda I)^-1``, i.e.
``B_ij = -P_ij / P_jj`` off the diagonal. A user's scores are their history row times ``B``.

``B`` is dense, so memory grows with ``n_items^2``: fine up to a few tens of thousands of items,
refused above ``max_items``. EASE is not an embedding model (no user vectors to publish); it
scores any history, which makes it usable for users unseen at training time
(:meth:`EASERecommender.score_from_history`).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from feedforge.datasets.interactions import Interactions
from feedforge.errors import DataError, NotFittedError, ValidationError
from feedforge.models.arrays import ArrayModel, ArraySpec
from feedforge.models.base import Recommender, checked_indices
from feedforge.models.params import ModelParams

# Peak memory of fit in bytes per B entry: the float64 Gram matrix, inverted in place, and the
# one float64 workspace of the inversion (the float32 copy of B is made after it is freed).
_BYTES_PER_ENTRY = 8 + 8
# Dense (users x items) float64 entries per chunk when accumulating the Gram matrix.
_GRAM_CHUNK_ENTRIES = 1 << 24
# The chunk and its product with X^T, when there are more users than items.
_WORKSPACE_BYTES = 2 * 8 * _GRAM_CHUNK_ENTRIES


def required_gib(n_items: int) -> float:
    """Approximate peak memory of :meth:`EASERecommender.fit` in GiB for ``n_items`` items.

    Excludes the sparse training matrix itself, which the caller already holds.
    """
    return (_BYTES_PER_ENTRY * float(n_items) ** 2 + _WORKSPACE_BYTES) / 2**30


def _spd_inverse_inplace(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite float64 matrix, written over it.

    Cholesky factorisation and inverse through torch's LAPACK (``cholesky_ex`` and
    ``cholesky_inverse``, both into the same storage). Not scipy's: the OpenBLAS scipy wheels
    bundle crashes (SIGSEGV in its threaded level-3 kernels) inverting matrices of about
    16,000 rows and more, i.e. EASE on Amazon Sports' 18,357 items, while torch's inverts
    them, and in less time (40 s vs 56 s single-threaded at 16,500 rows on 2 cores).

    Raises:
        DataError: the matrix is not positive definite (only through rounding: ``l2 > 0``).
    """
    import torch  # lazy: EASE's other paths need no torch

    tensor = torch.from_numpy(matrix)
    _, info = torch.linalg.cholesky_ex(tensor, out=(tensor, torch.empty((), dtype=torch.int32)))
    if int(info):
        raise DataError(
            f"EASERecommender.fit: the Gram matrix is not positive definite (leading minor "
            f"{int(info)}); raise l2"
        )
    torch.cholesky_inverse(tensor, out=tensor)
    return matrix


def _gram(matrix: sp.csr_matrix) -> np.ndarray:
    """``X^T X`` of a ``(n_users, n_items)`` CSR matrix as a dense float64 array.

    Built from column blocks (``X^T X[:, block]`` is a sparse-times-dense product) so that no
    sparse intermediate with up to ``n_items^2`` stored entries is ever created.
    """
    n_users, n_items = matrix.shape
    x = matrix.astype(np.float64).tocsc()
    xt = x.T.tocsr()  # (n_items, n_users)
    gram = np.empty((n_items, n_items), dtype=np.float64)
    step = max(1, _GRAM_CHUNK_ENTRIES // max(n_users, 1))
    for start in range(0, n_items, step):
        stop = min(start + step, n_items)
        gram[:, start:stop] = xt @ x[:, start:stop].toarray()
    return gram


class EASEParams(ModelParams):
    """Hyper-parameters of :class:`EASERecommender` (documented there)."""

    l2: float = Field(500.0, gt=0, description="> 0: the Gram matrix may be singular")
    implicit: bool = True
    max_items: int = Field(20_000, ge=1)


class EASERecommender(ArrayModel, Recommender):
    """EASE: ``score(u) = X[u] @ B`` with ``B`` the closed-form item-item weights.

    Args:
        l2: The L2 strength ``lambda`` on ``B`` (> 0). Typical values are 100 to 1000 for
            binary data; larger catalogs and denser data want larger values.
        implicit: ``True`` binarises the user-item matrix (any positive is 1); ``False`` uses
            the summed interaction weights, in training and in :meth:`score_from_history`.
        max_items: Refuse catalogs larger than this; ``B`` and its inverse are dense, so fit
            needs about ``12 * n_items^2`` bytes (see :func:`required_gib`).

    Attributes:
        item_weights_: ``(n_items, n_items)`` float32 ``B`` with a zero diagonal.
        user_items_: ``(n_users, n_items)`` float32 CSR training matrix (binarised when
            ``implicit``), kept to score training users.

    Example::

        model = EASERecommender(l2=500.0).fit(train)
        ids, scores = model.recommend(np.array([0, 1]), k=10, exclude=train.to_csr())
        cold = model.score_from_history(histories)  # (B, n_items) for users unseen in training
    """

    name: ClassVar[str] = "ease"
    Params = EASEParams
    params: EASEParams
    ARRAYS = (
        ArraySpec("item_weights", ("n_items", "n_items")),
        ArraySpec("user_items", ("n_users", "n_items"), sparse=True),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.item_weights_: np.ndarray | None = None
        self.user_items_: sp.csr_matrix | None = None

    def _prepare(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """The float32 CSR matrix EASE multiplies: binarised when ``implicit``."""
        matrix = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        if self.params.implicit:
            matrix.data[:] = 1.0
        return matrix

    def fit(self, interactions: Interactions) -> Self:
        """Solve for ``B`` from the ``(n_users, n_items)`` matrix of positives.

        Duplicate ``(user, item)`` pairs are summed (``implicit=False``) or count once.

        Raises:
            DataError: there are no interactions, or the solve produced non-finite values.
            ValidationError: a weight is not a finite positive number, or the catalog exceeds
                ``max_items``.
        """
        if len(interactions) == 0:
            raise DataError("EASERecommender.fit: no interactions to learn from")
        n_items = interactions.n_items
        max_items = self.params.max_items
        if n_items > max_items:
            raise ValidationError(
                f"EASERecommender.fit: {n_items} items exceed max_items={max_items}; the "
                f"dense item-item solve needs about {required_gib(n_items):.1f} GiB. Raise "
                "max_items if the machine has the memory, or use a factorisation model"
            )
        weight = np.asarray(interactions.weight)
        if not (np.isfinite(weight).all() and (weight > 0).all()):
            raise ValidationError(
                "EASERecommender.fit: interaction weights must be finite and > 0 (positives only)"
            )
        user_items = self._prepare(interactions.to_csr())
        gram = _gram(user_items)
        gram[np.diag_indices(n_items)] += self.params.l2
        p = _spd_inverse_inplace(gram)
        del gram
        diag = np.diag(p).copy()
        p /= -diag[None, :]  # B_ij = -P_ij / P_jj
        p[np.diag_indices(n_items)] = 0.0
        weights = p.astype(np.float32)
        del p
        if not np.isfinite(weights).all():
            raise DataError("EASERecommender.fit: non-finite item weights; raise l2")
        self.item_weights_, self.user_items_ = weights, user_items
        return self

    def _fitted(self) -> tuple[np.ndarray, sp.csr_matrix]:
        if self.item_weights_ is None or self.user_items_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.item_weights_, self.user_items_

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` float32 scores of training users from their training history.

        Users without training interactions score 0 everywhere.

        Raises:
            ValidationError: a user index is outside ``[0, n_users)``.
        """
        weights, user_items = self._fitted()
        hint = "; use score_from_history for users unseen in training"
        users = checked_indices(user_idx, user_items.shape[0], "EASE score", "user", hint)
        return np.asarray(user_items[users] @ weights, dtype=np.float32)

    def score_from_history(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Scores for arbitrary histories, e.g. users held out of training or cold users.

        Args:
            user_items: ``(B, n_items)`` sparse matrix of each user's positives (weights, used
                only when ``implicit=False``). Another sparse format is converted with a
                warning.

        Returns:
            ``(B, n_items)`` float32 scores; an empty row scores 0 everywhere.

        Raises:
            ValidationError: not a sparse matrix, wrong number of columns, or a stored value
                that is not a finite number >= 0 (explicit zeros are ignored).
        """
        weights, _ = self._fitted()
        matrix = _check_history(user_items, weights.shape[0], "EASE score_from_history")
        return np.asarray(self._prepare(matrix) @ weights, dtype=np.float32)


def _check_history(user_items: Any, n_items: int, where: str) -> sp.csr_matrix:
    """Validate a ``(B, n_items)`` history matrix; other sparse formats become CSR with a warning.

    Raises:
        ValidationError: not sparse, wrong width, or a value that is not finite and >= 0.
    """
    if not sp.issparse(user_items):
        raise ValidationError(
            f"{where}: user_items must be a scipy sparse CSR matrix, "
            f"got {type(user_items).__name__}"
        )
    if user_items.format != "csr":
        warnings.warn(
            f"{where}: converting a {user_items.format} matrix to CSR", RuntimeWarning, stacklevel=3
        )
    matrix = sp.csr_matrix(user_items)
    if matrix.ndim != 2 or matrix.shape[1] != n_items:
        raise ValidationError(
            f"{where}: user_items must have {n_items} columns (items), got shape {matrix.shape}"
        )
    if not (np.isfinite(matrix.data).all() and (matrix.data >= 0).all()):
        raise ValidationError(f"{where}: user_items values must be finite and >= 0")
    return matrix
