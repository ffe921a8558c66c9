"""A split's logged impressions as a ranker sees them: features, labels, weights, requests.

Training fits the ranker on the validation split's impressions; evaluation measures it on the
test split's, with the same features (:mod:`feedforge.features.definitions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from feedforge.datasets.load import Dataset
from feedforge.features.definitions import FEATURES, feature_matrix
from feedforge.features.objectives import ranking_outcomes, ranking_target
from feedforge.models.base import EmbeddingRecommender, Ranker


@dataclass(frozen=True)
class RankingData:
    """A split's impressions as the ranker sees them.

    Attributes:
        X: ``(N, F)`` features, columns in :data:`~feedforge.features.definitions.FEATURES`.
        y: ``(N,)`` binary labels of the objective (:func:`ranking_target`).
        weight: ``(N,)`` sample weights of the objective.
        group: ``(N,)`` request id of each impression (``""`` when missing).
        outcomes: ``{outcome: (N,)}`` attributed outcomes (:func:`ranking_outcomes`): what a
            multi-task ranker learns, and what its heads are measured against.
    """

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    group: np.ndarray
    outcomes: dict[str, np.ndarray]

    def fit(self, ranker: Ranker) -> Ranker:
        """Fit ``ranker`` on these impressions: a single-task ranker on the objective's label
        and weights, a multi-task one on the clicks and the outcome targets."""
        names = list(FEATURES)
        if ranker.multi_task:
            clicks = self.outcomes["clicked"].astype(np.int8)
            return ranker.fit(self.X, clicks, names, group=self.group, targets=self.outcomes)
        return ranker.fit(self.X, self.y, names, group=self.group, sample_weight=self.weight)

    def labels(self, ranker: Ranker) -> np.ndarray:
        """The ``(N,)`` labels ``ranker.predict_proba`` estimates (clicks for multi-task)."""
        return self.outcomes["clicked"].astype(np.int8) if ranker.multi_task else self.y


def ranker_training_data(
    dataset: Dataset, split: str, retrieval: EmbeddingRecommender, value: Mapping[str, float]
) -> RankingData:
    """Features, labels, weights, requests and outcomes of a split's impressions for an
    objective's ``value`` (:func:`~feedforge.features.objectives.objective_value`)."""
    frame = dataset.ranking(split)
    X = feature_matrix(
        frame, retrieval.user_embeddings(), retrieval.item_embeddings(), dataset.n_categories
    )
    y, weight = ranking_target(frame, value)
    group = frame.get_column("request_id").fill_null("").to_numpy().astype(str)
    return RankingData(X, y, weight, group, ranking_outcomes(frame))
