"""Every model by name: what the CLI, evaluation and serving use to build and load models.

A new model is added here once; the shared contract test iterates :data:`RECOMMENDERS`, so it
is tested from the moment it is registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from feedforge.config import ModelsConfig
from feedforge.errors import ConfigError
from feedforge.models.als import ALSRecommender
from feedforge.models.base import Ranker, Recommender
from feedforge.models.bpr import BPRRecommender
from feedforge.models.dcn import DCNRanker
from feedforge.models.ease import EASERecommender
from feedforge.models.gbdt import LightGBMRanker
from feedforge.models.logistic import LogisticRanker
from feedforge.models.popularity import TRAIN_COMMAND, MostPopular
from feedforge.models.sasrec import SASRecRecommender
from feedforge.models.tree import DecisionTreeRanker
from feedforge.models.two_tower import TwoTowerRecommender

RECOMMENDERS: dict[str, type[Recommender]] = {
    MostPopular.name: MostPopular,
    ALSRecommender.name: ALSRecommender,
    EASERecommender.name: EASERecommender,
    BPRRecommender.name: BPRRecommender,
    TwoTowerRecommender.name: TwoTowerRecommender,
    SASRecRecommender.name: SASRecRecommender,
}
RANKERS: dict[str, type[Ranker]] = {
    LogisticRanker.name: LogisticRanker,
    DecisionTreeRanker.name: DecisionTreeRanker,
    LightGBMRanker.name: LightGBMRanker,
    DCNRanker.name: DCNRanker,
}

_T = TypeVar("_T")


def _lookup(kind: str, registry: dict[str, _T], name: str) -> _T:
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"unknown {kind} {name!r}; known: {known}") from None


def create_recommender(name: str, config: ModelsConfig | None = None) -> Recommender:
    """An unfitted recommender with its hyper-parameters from ``config`` (defaults if None).

    Raises:
        ConfigError: ``name`` is not registered.
    """
    config = config or ModelsConfig()
    cls = _lookup("recommender", RECOMMENDERS, name)
    if cls is MostPopular:
        return MostPopular.from_config(config.popularity)
    if cls is ALSRecommender:
        return ALSRecommender.from_config(config.als)
    params = config.params.get(name, {})
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"models.params.{name}: {exc}") from exc


def create_ranker(
    name: str, config: ModelsConfig | None = None, value: Mapping[str, float] | None = None
) -> Ranker:
    """An unfitted ranker with its hyper-parameters from ``config`` (defaults if None).

    ``value`` (the objective's :func:`~feedforge.features.objectives.objective_value`) is
    given to multi-task rankers, whose score formula it sets; single-task rankers learn the
    objective from their labels instead.

    Raises:
        ConfigError: ``name`` is not registered, or a parameter is unknown.
    """
    config = config or ModelsConfig()
    cls = _lookup("ranker", RANKERS, name)
    if cls is LogisticRanker:
        return LogisticRanker.from_config(config.ranker)
    params: dict[str, object] = dict(config.params.get(name, {}))
    if cls.multi_task and value is not None:
        params["value"] = dict(value)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"models.params.{name}: {exc}") from exc


def load_recommender(name: str, directory: Path, build_command: str = TRAIN_COMMAND) -> Recommender:
    """Load the recommender ``name`` saved in ``directory``.

    Raises:
        ConfigError: ``name`` is not registered.
        ArtifactError: the directory is missing, corrupt or holds another model.
    """
    cls = _lookup("recommender", RECOMMENDERS, name)
    # Every registered model's load() takes build_command (the contract test checks it).
    return cls.load(Path(directory), build_command=build_command)


def load_ranker(
    name: str,
    directory: Path,
    build_command: str = TRAIN_COMMAND,
    expected_features: list[str] | None = None,
) -> Ranker:
    """Load the ranker ``name`` saved in ``directory``, checking its feature list.

    Raises:
        ConfigError: ``name`` is not registered.
        ArtifactError: the directory is missing or corrupt, or its features differ from
            ``expected_features``.
    """
    cls = _lookup("ranker", RANKERS, name)
    return cls.load(
        Path(directory), expected_features=expected_features, build_command=build_command
    )
