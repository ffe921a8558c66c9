"""The training stage: fit every configured model on a built dataset and save it.

* The popularity baseline and the configured retrieval model (``models.retrieval``) learn
  from the train split.
* The ranker (``models.ranker.type``) learns from the **validation** split's impressions:
  their ``retrieval_score`` feature comes from a retrieval model that never saw them, as it
  will be at serving time. Each impression's request is its group (listwise rankers learn the
  order within a feed from it).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from feedforge.artifacts import Manifest
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.features.objectives import settings_value
from feedforge.models.base import EmbeddingRecommender
from feedforge.models.ranking_data import ranker_training_data
from feedforge.models.registry import RANKERS, create_ranker, create_recommender
from feedforge.workdir import Workdir

Progress = Callable[[str], None]


def train_models(
    workdir: Workdir, settings: Settings, progress: Progress | None = None
) -> dict[str, Manifest]:
    """Fit and save the popularity baseline, the retrieval model and the ranker.

    The ranker needs labelled impressions in the validation split and an embedding retrieval
    model; without them (e.g. an imported rating dataset) it is skipped and serving orders
    candidates by the retrieval score.

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
    inputs = {"dataset": dataset.version}  # every model's lineage: the dataset it learned from
    saved: dict[str, Manifest] = {}

    say("fitting popularity")
    popularity = create_recommender("popularity", cfg).fit(train)
    saved["popularity"] = popularity.save(workdir.model_dir("popularity"), inputs=inputs)

    name = cfg.retrieval
    say(f"fitting the retrieval model {name}")
    retrieval = create_recommender(name, cfg).fit(train)
    saved[name] = retrieval.save(workdir.model_dir(name), inputs=inputs)
    if not isinstance(retrieval, EmbeddingRecommender):
        say(f"{name} has no embeddings: no ranker (it ranks retrieval-score features)")
        return saved

    ranker_name = cfg.ranker.type
    value = settings_value(settings)
    data = ranker_training_data(dataset, "validation", retrieval, value)
    if len(data.y) == 0 or data.y.min() == data.y.max():
        # Logs without impressions (e.g. imported rating datasets) cannot train a ranker;
        # serving then orders candidates by the retrieval score alone.
        say("no labelled impressions in the validation split: no ranker trained")
        for stale in RANKERS:  # no ranker of any type may outlive the data it was fit on
            shutil.rmtree(workdir.model_dir(stale), ignore_errors=True)
        return saved
    say(f"fitting the {ranker_name} ranker on {len(data.y)} validation impressions")
    ranker = data.fit(create_ranker(ranker_name, cfg, value=value))
    saved[ranker_name] = ranker.save(workdir.model_dir(ranker_name), inputs=inputs)
    return saved
