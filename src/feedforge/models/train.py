"""The training stage: fit every configured model on a built dataset and save it.

* Retrieval models (popularity baseline, matrix factorisation) learn from the train split.
* The ranker learns from the **validation** split's impressions: their ``retrieval_score``
  feature comes from a retrieval model that never saw them, as it will be at serving time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from feedforge.artifacts import Manifest, read_manifest, write_manifest
from feedforge.config import Settings
from feedforge.datasets.build import RANKING_LABEL
from feedforge.datasets.features import FEATURES, feature_matrix
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.errors import DataError
from feedforge.models.als import ALSRecommender
from feedforge.models.base import EmbeddingRecommender, Model
from feedforge.models.logistic import LogisticRanker
from feedforge.models.popularity import MostPopular
from feedforge.workdir import Workdir

RANKER_NAME = "logistic"

Progress = Callable[[str], None]


def _save(model: Model, workdir: Workdir, name: str, dataset: Dataset) -> Manifest:
    directory = workdir.model_dir(name)
    model.save(directory)
    manifest = read_manifest(directory, f"model/{name}", (1,), workdir.command("train"))
    return write_manifest(directory, replace(manifest, inputs={"dataset": dataset.version}))


def ranker_training_data(
    dataset: Dataset, split: str, retrieval: EmbeddingRecommender, objective: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, F)`` features and ``(N,)`` binary labels of a split's impressions."""
    frame = dataset.ranking(split)
    X = feature_matrix(
        frame, retrieval.user_embeddings(), retrieval.item_embeddings(), dataset.n_categories
    )
    y = frame.get_column(RANKING_LABEL[objective]).to_numpy().astype(np.int8)
    return X, y


def train_models(
    workdir: Workdir, settings: Settings, progress: Progress | None = None
) -> dict[str, Manifest]:
    """Fit and save the popularity baseline, the retrieval model and the ranker.

    Returns:
        Model name -> manifest of the saved model.

    Raises:
        feedforge.errors.ArtifactError: the dataset is missing.
        DataError: a split has no usable data.
    """
    say = progress or (lambda _msg: None)
    cfg = settings.models
    dataset = load_dataset(workdir)
    train = dataset.train_interactions()
    saved: dict[str, Manifest] = {}

    say("fitting popularity")
    popularity = MostPopular(window_days=cfg.popularity.window_days).fit(train)
    saved["popularity"] = _save(popularity, workdir, "popularity", dataset)

    say("fitting ALS matrix factorisation")
    als = ALSRecommender(
        factors=cfg.als.factors,
        regularization=cfg.als.regularization,
        iterations=cfg.als.iterations,
        alpha=cfg.als.alpha,
        random_state=cfg.als.random_state,
    ).fit(train)
    saved["als"] = _save(als, workdir, "als", dataset)

    say("fitting the logistic-regression ranker")
    X, y = ranker_training_data(dataset, "validation", als, settings.objective)
    if len(y) == 0:
        raise DataError(
            "the validation split has no impressions to train the ranker on; "
            "lengthen dataset.validation_days or simulate more days"
        )
    ranker = LogisticRanker(C=cfg.ranker.C, max_iter=cfg.ranker.max_iter).fit(X, y, list(FEATURES))
    saved[RANKER_NAME] = _save(ranker, workdir, RANKER_NAME, dataset)
    return saved
