"""A version's reference profile: the distribution its ranker was trained on, the baseline
drift is measured against (:mod:`feedforge.monitoring.drift`).

The rows are the ranker's training rows (the validation split's logged impressions, with the
features :mod:`feedforge.features.definitions` computes point in time), at most
``monitoring.reference_rows`` of them sampled uniformly; their ranker scores (and each head's
for a multi-task ranker) are profiled beside the features, and the request device as a
category. Bins are the rows' quantiles (``monitoring.bins``); a feature's *default* is the
value a user or item without a record gets, so a feature stuck at its default shows as a
default rate of 1.
"""

from __future__ import annotations

import numpy as np

from feedforge.config import Settings
from feedforge.datasets.load import Dataset
from feedforge.features.definitions import FEATURES, RAW_COUNTERS, derive_features
from feedforge.features.objectives import settings_value
from feedforge.models.base import EmbeddingRecommender, Ranker
from feedforge.models.ranking_data import ranker_training_data
from feedforge.monitoring.profile import Profile, reference_profile
from feedforge.monitoring.recorder import DEVICE_COLUMN, UNPROFILED, devices_of

SAMPLE_SEED = 0


def default_features(n_categories: int) -> dict[str, float]:
    """Each feature's value for a user and item without records (zero counters), with a
    retrieval score of 0 and no device."""
    raw = {name: np.zeros(1) for name in RAW_COUNTERS}
    row = derive_features(raw, np.zeros(1), n_categories)[0]
    return {name: float(v) for name, v in zip(FEATURES, row, strict=True)}


def ranker_scores(ranker: Ranker, X: np.ndarray) -> dict[str, np.ndarray]:
    """``{"score": ..., "score_<head>": ...}`` of rows ``X``: the columns a profile keeps of
    a ranker's output."""
    scores = {"score": np.asarray(ranker.score(X), dtype=np.float64)}
    if ranker.multi_task:
        for head, values in ranker.predict_heads(X).items():
            scores[f"score_{head}"] = np.asarray(values, dtype=np.float64)
    return scores


def training_reference(
    dataset: Dataset,
    retrieval: EmbeddingRecommender,
    ranker: Ranker,
    settings: Settings,
    version: str,
) -> Profile | None:
    """The reference profile of a version (see the module docs); None when the ranker has
    no training rows (imported data without impressions)."""
    cfg = settings.monitoring
    data = ranker_training_data(dataset, "validation", retrieval, settings_value(settings))
    X = data.X
    if not len(X):
        return None
    if len(X) > cfg.reference_rows:
        rng = np.random.default_rng(SAMPLE_SEED)
        X = X[np.sort(rng.choice(len(X), cfg.reference_rows, replace=False))]
    names = list(FEATURES)
    numeric = {n: X[:, j] for j, n in enumerate(names) if n not in UNPROFILED}
    numeric.update(ranker_scores(ranker, X))
    defaults = {
        n: v for n, v in default_features(dataset.n_categories).items() if n not in UNPROFILED
    }
    return reference_profile(
        numeric,
        {DEVICE_COLUMN: np.asarray(devices_of(X, names))},
        bins=cfg.bins,
        defaults=defaults,
        meta={
            "version": version,
            "source": "ranker training rows (validation split impressions)",
            "rows_total": len(data.X),
            "rows_sampled": len(X),
            "dataset_version": dataset.version,
        },
    )
