"""The one model contract every feedforge model implements.

Retrieval models (:class:`Recommender`) rank the whole catalog for a user; rankers
(:class:`Ranker`) score given (user, item) feature rows. Both follow scikit-learn's conventions:
``__init__`` only stores hyper-parameters, ``fit`` validates input and returns ``self``, learned
state ends in ``_``, randomness comes from ``random_state``. Both save to a directory without
pickle (JSON and ``.npy``/``.npz`` loaded with ``allow_pickle=False``) plus a manifest.

Example::

    model = ALSRecommender(factors=64).fit(train)
    ids, scores = model.recommend(np.array([0, 1]), k=10, exclude=train.to_csr())
    model.save(path)
    same = ALSRecommender.load(path)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from feedforge.errors import NotFittedError, ValidationError


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


def top_k(
    scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns per row of a dense score matrix, best first.

    Args:
        scores: ``(B, n_items)`` float scores; modified in place where excluded.
        k: Items per row (clipped to ``n_items``).
        exclude: Optional ``(n_users, n_items)`` CSR of items to drop per user.
        rows: ``(B,)`` user indices of ``scores``' rows into ``exclude`` (needed with it).

    Returns:
        ``(B, k)`` int64 item indices and ``(B, k)`` float32 scores. Excluded items score
        ``-inf`` and only appear when fewer than ``k`` items remain.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if exclude is not None:
        if rows is None:
            raise ValueError("top_k: rows is required with exclude")
        sub = exclude[rows]
        r, c = sub.nonzero()
        scores[r, c] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(part_scores, order, axis=1)


class Model(ABC):
    """Common base: a name, fitted-state checks and directory persistence."""

    name: ClassVar[str]

    def _check_fitted(self, attribute: str) -> None:
        if getattr(self, attribute, None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the fitted model into ``directory`` (created if needed), without pickle."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, build_command: str = "feedforge train") -> Self:
        """Load a model written by :meth:`save`.

        Args:
            directory: The model directory.
            build_command: The command quoted in errors, which (re)builds the model.

        Raises:
            feedforge.errors.ArtifactError: the directory is missing or corrupt.
        """

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters, as stored in the manifest."""
        return {}


class Recommender(Model):
    """A retrieval model: scores every catalog item for a user."""

    @abstractmethod
    def fit(self, interactions: Interactions) -> Self:
        """Learn from positive interactions of the training split."""

    @abstractmethod
    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """Scores of all items for each user.

        Args:
            user_idx: ``(B,)`` user indices.

        Returns:
            ``(B, n_items)`` float32 scores, higher is better.
        """

    def recommend(
        self, user_idx: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per user, best first.

        Args:
            user_idx: ``(B,)`` user indices.
            k: Number of items per user.
            exclude: ``(n_users, n_items)`` CSR of items never to recommend (e.g. train items).

        Returns:
            ``(B, k)`` item indices and ``(B, k)`` scores.
        """
        user_idx = np.asarray(user_idx, dtype=np.int64)
        return top_k(self.score(user_idx), k, exclude, user_idx)


class EmbeddingRecommender(Recommender):
    """A recommender whose score is a dot product of precomputed embeddings.

    Serving reads ``user_embeddings()`` and ``item_embeddings()`` once, offline, and publishes
    them to the online store; it never calls the model at request time.
    """

    @abstractmethod
    def user_embeddings(self) -> np.ndarray:
        """``(n_users, D)`` float32 user embeddings."""

    @abstractmethod
    def item_embeddings(self) -> np.ndarray:
        """``(n_items, D)`` float32 item embeddings."""

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        return self.user_embeddings()[user_idx] @ self.item_embeddings().T


class Ranker(Model):
    """A ranker: turns feature rows of (user, candidate item) pairs into scores.

    ``feature_names`` fixes the column order of ``X``; a saved ranker whose feature list
    differs from the configured one is refused at load.

    Single-task rankers learn one label (the objective's, with value weights);
    multi-task rankers (``multi_task = True``) learn the click as ``y`` and the outcomes that
    follow it from ``targets``, and :meth:`score` combines their heads into the objective's
    expected value. Serving and the two-stage evaluation order candidates by :meth:`score`.
    """

    feature_names_: list[str] | None = None
    multi_task: ClassVar[bool] = False

    @abstractmethod
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        feature_names: list[str],
        group: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> Self:
        """Learn from ``(N, F)`` float features and ``(N,)`` binary labels.

        ``group`` is the ``(N,)`` request key of each row (the feed it was shown in):
        listwise rankers learn orderings within a request from it; pointwise ones ignore it.
        ``sample_weight`` (``(N,)``, >= 0) weights each row's loss, e.g. a positive by its
        watch time (:func:`feedforge.datasets.objectives.ranking_target`). ``targets`` holds
        ``(N,)`` outcomes after the impression (``watch_seconds``, ``purchased``, ``revenue``;
        :func:`feedforge.datasets.objectives.ranking_outcomes`) for multi-task rankers;
        single-task rankers ignore it.
        """

    def score(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 ranking scores of ``(N, F)`` features, higher first: the
        objective's expected value for multi-task rankers, :meth:`predict_proba` otherwise."""
        return self.predict_proba(X)

    def predict_heads(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """``{estimate: (N,) float64}`` of a multi-task ranker's heads (e.g. ``p_click``,
        ``expected_watch_seconds``); ``{}`` for single-task rankers."""
        del X
        return {}

    @property
    def scoring_device(self) -> str:
        """Where :meth:`score` runs (``cpu`` unless a ranker uses a GPU)."""
        return "cpu"

    def use_device(self, device: str) -> None:
        """Score on ``device`` (``auto``, ``cpu`` or ``cuda``); rankers that only run on the
        CPU ignore it."""
        del device

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` probabilities of the positive label for ``(N, F)`` features (calibrated:
        listwise rankers map their scores to probabilities with a fitted calibrator)."""

    @abstractmethod
    def describe(self) -> str:
        """A human-readable account of the fitted model (coefficients, the tree, or
        feature importances)."""

    @classmethod
    @abstractmethod
    def load(
        cls,
        directory: Path,
        build_command: str = "feedforge train",
        expected_features: list[str] | None = None,
    ) -> Self:
        """Load a ranker; refuse it when its features differ from ``expected_features``.

        Raises:
            feedforge.errors.ArtifactError: missing, corrupt, or a different feature list.
        """
