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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from feedforge.artifacts import Manifest
from feedforge.config import Settings
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.errors import FeedforgeError
from feedforge.features.objectives import settings_value
from feedforge.models.base import EmbeddingRecommender, Recommender
from feedforge.models.distributed import TrainContext, init_process_group, launch
from feedforge.models.factors import FactorModel, aligned_factors
from feedforge.models.ranking_data import ranker_training_data
from feedforge.models.registry import RANKERS, create_ranker, create_recommender, load_recommender
from feedforge.models.torch_utils import TorchModel
from feedforge.workdir import Workdir

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WarmStart:
    """Where a warm start comes from: the products (dataset and models) of an earlier
    training (:meth:`~feedforge.workdir.Workdir.staged`), and the retrieval model's
    iterations when warm-started (None: as configured)."""

    products: Workdir
    iterations: int | None = None


def train_models(
    workdir: Workdir,
    settings: Settings,
    progress: Progress | None = None,
    warm: WarmStart | None = None,
) -> dict[str, Manifest]:
    """Fit and save the popularity baseline, the retrieval model and the ranker.

    With ``warm``, a retrieval model that supports it (ALS) starts from the earlier model's
    factors, moved to this dataset's id maps (new users and items start random), for
    ``warm.iterations`` sweeps; the manifest's ``extra`` says so (``warm_start``). Every
    manifest records the fit's wall time (``fit_seconds``) and, for models that record one,
    the training curve (``training_curve``).

    The ranker needs labelled impressions in the validation split and an embedding retrieval
    model; without them (e.g. an imported rating dataset) it is skipped and serving orders
    candidates by the retrieval score.

    Returns:
        Model name -> manifest of the saved model.

    Raises:
        feedforge.errors.ArtifactError: the dataset is missing.
        DataError: a split has no usable data.
    """
    context = TrainContext.current()
    main = context.is_main
    say = (progress or (lambda _msg: None)) if main else (lambda _msg: None)
    cfg = settings.models
    dataset = load_dataset(workdir)
    train = dataset.train_interactions()
    inputs = {"dataset": dataset.version}  # every model's lineage: the dataset it learned from
    saved: dict[str, Manifest] = {}

    if main:
        say("fitting popularity")
        started = time.perf_counter()
        popularity = create_recommender("popularity", cfg).fit(train)
        saved["popularity"] = popularity.save(
            workdir.model_dir("popularity"), inputs=inputs, extra=_timed(started)
        )

    name = cfg.retrieval
    say(f"fitting the retrieval model {name}")
    retrieval = create_recommender(name, cfg)
    distributed = isinstance(retrieval, TorchModel)
    if distributed or main:
        warmed = _warm_start(retrieval, name, dataset, warm, say)
        if isinstance(retrieval, TorchModel):
            retrieval.checkpoint_to(workdir.checkpoint_dir(name), dataset.version)
        started = time.perf_counter()
        retrieval.fit(train)
        extra = {**_timed(started), **({"warm_start": warmed} if warmed else {})}
    if main:
        saved[name] = retrieval.save(workdir.model_dir(name), inputs=inputs, extra=extra)
    context.barrier()
    if not (distributed or main):  # fitted by rank 0 alone: read its artifact
        retrieval = load_recommender(name, workdir.model_dir(name))
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
        for stale in RANKERS if main else ():  # no ranker may outlive the data it was fit on
            shutil.rmtree(workdir.model_dir(stale), ignore_errors=True)
        return saved
    say(f"fitting the {ranker_name} ranker on {len(data.y)} validation impressions")
    ranker = create_ranker(ranker_name, cfg, value=value)
    if isinstance(ranker, TorchModel):
        ranker.checkpoint_to(workdir.checkpoint_dir(ranker_name), dataset.version)
    elif not main:
        return saved  # rank 0 fits it alone
    started = time.perf_counter()
    ranker = data.fit(ranker)
    if main:
        saved[ranker_name] = ranker.save(
            workdir.model_dir(ranker_name), inputs=inputs, extra=_timed(started)
        )
    context.barrier()
    return saved


def train_distributed(
    workdir: Workdir, settings: Settings, nproc: int, progress: Progress | None = None
) -> dict[str, Manifest]:
    """:func:`train_models` in ``nproc`` processes (PyTorch DDP under torchrun's launcher,
    :mod:`feedforge.models.distributed`): the torch models train data-parallel, the others
    on rank 0; rank 0 saves. ``nproc`` 1 trains in this process.

    Returns:
        Model name -> manifest of the saved model.
    """
    if nproc == 1:
        return train_models(workdir, settings, progress)
    say = progress or (lambda _msg: None)
    say(f"launching {nproc} training processes")
    saved: dict[str, Manifest] = launch(
        nproc, _train_worker, str(workdir.root), settings.model_dump_json()
    )
    return saved


def _train_worker(root: str, settings_json: str) -> dict[str, Manifest]:
    """One process of :func:`train_distributed` (run by torchrun's launcher)."""
    context = init_process_group()
    try:
        settings = Settings.model_validate_json(settings_json)

        def say(message: str) -> None:
            print(f"train [{context.world} processes]: {message}", flush=True)

        return train_models(Workdir.at(Path(root)), settings, say)
    finally:
        dist.destroy_process_group()


def _timed(started: float) -> dict[str, float]:
    """The manifest's record of a fit that began at ``started`` (``perf_counter``)."""
    return {"fit_seconds": round(time.perf_counter() - started, 3)}


def _warm_start(
    model: Recommender, name: str, dataset: Dataset, warm: WarmStart | None, say: Progress
) -> dict[str, Any] | None:
    """Start ``model`` from the earlier model of ``warm`` when both allow it."""
    if warm is None or not isinstance(model, FactorModel) or not model.WARM_START:
        return None
    directory = warm.products.model_dir(name)
    try:
        earlier = load_recommender(name, directory)
        old = load_dataset(warm.products)
    except FeedforgeError as exc:
        say(f"no warm start ({exc})")
        return None
    if not isinstance(earlier, FactorModel) or earlier.user_factors_ is None:
        return None
    if earlier.item_factors_ is None or earlier.get_params() != model.get_params():
        say("no warm start: the earlier model has other hyper-parameters")
        return None
    users, n_users = aligned_factors(
        old.users.ids.to_list(), earlier.user_factors_, dataset.users.ids.to_list()
    )
    items, n_items = aligned_factors(
        old.items.ids.to_list(), earlier.item_factors_, dataset.items.ids.to_list()
    )
    model.warm_start(users, items)
    if warm.iterations is not None:
        model.set_params(iterations=warm.iterations)
    say(f"warm start from {earlier.artifact_version}: {n_users} users, {n_items} items kept")
    return {
        "from": earlier.artifact_version,
        "users_kept": n_users,
        "items_kept": n_items,
        "iterations": model.get_params().get("iterations"),
    }
