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
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from feedforge.datasets.interactions import Interactions
from feedforge.errors import NotFittedError
from feedforge.index.exact import top_k


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
        watch time (:func:`feedforge.features.objectives.ranking_target`). ``targets`` holds
        ``(N,)`` outcomes after the impression (``watch_seconds``, ``purchased``, ``revenue``;
        :func:`feedforge.features.objectives.ranking_outcomes`) for multi-task rankers;
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
