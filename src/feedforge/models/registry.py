"""Every model by name: what the CLI, evaluation and serving use to build and load models.

The registry holds dotted paths, imported on first use (Feast's online-store registry): a
process imports only the models its configuration names, so a service whose retrieval model
and ranker need no torch never imports torch. A new model is added here once; the shared
contract tests iterate :data:`RECOMMENDERS` and :data:`RANKERS`, so it is tested from the
moment it is registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import pydantic

from feedforge.config import ModelsConfig
from feedforge.errors import ConfigError, ValidationError
from feedforge.models.base import TRAIN_COMMAND, Model, Ranker, Recommender
from feedforge.models.params import ModelParams, describe_errors

_M = TypeVar("_M", bound=Model)


class LazyRegistry(Mapping[str, type[_M]], Generic[_M]):
    """Name -> model class, each imported from its ``"module:Class"`` path on first lookup.

    Iterating, ``in`` and ``len`` import nothing.

    Args:
        kind: What the entries are, for error messages (``"recommender"``).
        base: The class every entry must derive from (``Recommender`` or ``Ranker``).
        paths: Name -> ``"package.module:Class"``.
    """

    # base is abstract: mypy refuses an abstract class as type[_M], so it is a plain type.
    def __init__(self, kind: str, base: type, paths: Mapping[str, str]) -> None:
        self.kind, self.base, self.paths = kind, base, dict(paths)
        self._loaded: dict[str, type[_M]] = {}

    def __getitem__(self, name: str) -> type[_M]:
        if name not in self._loaded:
            module, _, attribute = self.paths[name].partition(":")
            cls: Any = getattr(importlib.import_module(module), attribute)
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.paths[name]} is not a {self.kind}")
            if getattr(cls, "name", None) != name:
                raise TypeError(f"{self.paths[name]} is not the {self.kind} {name!r}")
            self._loaded[name] = cast(type[_M], cls)  # checked just above
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        # Mapping's own __contains__ looks the entry up, which would import it.
        return name in self.paths

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def lookup(self, name: str) -> type[_M]:
        """The class registered as ``name``.

        Raises:
            ConfigError: ``name`` is not registered (the message lists the known names).
        """
        if name not in self.paths:
            known = ", ".join(sorted(self.paths))
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}")
        return self[name]


RECOMMENDERS: LazyRegistry[Recommender] = LazyRegistry(
    "recommender",
    Recommender,
    {
        "popularity": "feedforge.models.popularity:MostPopular",
        "als": "feedforge.models.als:ALSRecommender",
        "ease": "feedforge.models.ease:EASERecommender",
        "rp3beta": "feedforge.models.rp3beta:RP3betaRecommender",
        "multvae": "feedforge.models.multvae:MultVAERecommender",
        "bpr": "feedforge.models.bpr:BPRRecommender",
        "two_tower": "feedforge.models.two_tower:TwoTowerRecommender",
        "sasrec": "feedforge.models.sasrec:SASRecRecommender",
    },
)
RANKERS: LazyRegistry[Ranker] = LazyRegistry(
    "ranker",
    Ranker,
    {
        "logistic": "feedforge.models.logistic:LogisticRanker",
        "tree": "feedforge.models.tree:DecisionTreeRanker",
        "lightgbm": "feedforge.models.gbdt:LightGBMRanker",
        "dcn": "feedforge.models.dcn:DCNRanker",
    },
)


def model_class(name: str) -> type[Model]:
    """The registered recommender or ranker ``name`` (model names are unique across both).

    Raises:
        ConfigError: no model is registered as ``name``.
    """
    if name in RANKERS:
        return RANKERS[name]
    if name in RECOMMENDERS:
        return RECOMMENDERS[name]
    known = ", ".join(sorted([*RECOMMENDERS, *RANKERS]))
    raise ConfigError(f"unknown model {name!r}; known: {known}")


TORCH_FREE_PARAMS: dict[str, str] = {
    "two_tower": "feedforge.models.torch_params:TwoTowerParams",
    "sasrec": "feedforge.models.torch_params:SASRecParams",
    "dcn": "feedforge.models.torch_params:DCNParams",
}
"""Where the torch models' declarations live apart from their torch-importing modules."""


def params_class(name: str) -> type[ModelParams]:
    """The hyper-parameter declaration of the model ``name``: imports only that model's
    module, or for a torch model only :mod:`feedforge.models.torch_params` (checking a config
    never imports torch).

    Raises:
        ConfigError: no model is registered as ``name``.
    """
    if name in TORCH_FREE_PARAMS:
        module, _, attribute = TORCH_FREE_PARAMS[name].partition(":")
        declaration: type[ModelParams] = getattr(importlib.import_module(module), attribute)
        return declaration
    return model_class(name).Params


def check_config_params(path: str, name: str, values: Mapping[str, Any]) -> None:
    """Check one config section of hyper-parameters against model ``name``'s ``Params``
    (:func:`feedforge.config.check_model_params` calls it for every section it names).

    Args:
        path: Where the section sits in the config, e.g. ``models.params.als``.
        name: The model the section configures.
        values: The section's ``{parameter: value}``.

    Raises:
        ConfigError: ``name`` is not a model, or a parameter is unknown or invalid; the
            message names the model and each key as ``<path>.<key>``.
    """
    try:
        declaration = params_class(name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc
    try:
        declaration.model_validate(dict(values))
    except pydantic.ValidationError as exc:
        problems = "; ".join(describe_errors(exc, prefix=f"{path}."))
        raise ConfigError(f"the {name} model's hyper-parameters: {problems}") from exc


def _configured(cls: type[_M], config: ModelsConfig, extra: Mapping[str, Any]) -> _M:
    """``cls`` with its hyper-parameters from ``config`` (plus ``extra``); ConfigError naming
    the config keys when one is unknown or invalid."""
    params = {**config.params_for(cls.name), **extra}
    try:
        return cls(**params)
    except ValidationError as exc:
        where = " / ".join(config.params_sources(cls.name))
        raise ConfigError(f"{where}: {exc.message}") from exc


def create_recommender(name: str, config: ModelsConfig | None = None) -> Recommender:
    """An unfitted recommender with its hyper-parameters from ``config`` (defaults if None).

    Raises:
        ConfigError: ``name`` is not registered, or a parameter is unknown or invalid.
    """
    return _configured(RECOMMENDERS.lookup(name), config or ModelsConfig(), {})


def create_ranker(
    name: str, config: ModelsConfig | None = None, value: Mapping[str, float] | None = None
) -> Ranker:
    """An unfitted ranker with its hyper-parameters from ``config`` (defaults if None).

    ``value`` (the objective's :func:`~feedforge.features.objectives.objective_value`) is
    given to multi-task rankers, whose score formula it sets; single-task rankers learn the
    objective from their labels instead.

    Raises:
        ConfigError: ``name`` is not registered, or a parameter is unknown or invalid.
    """
    cls = RANKERS.lookup(name)
    extra = {"value": dict(value)} if cls.multi_task and value is not None else {}
    return _configured(cls, config or ModelsConfig(), extra)


def load_recommender(name: str, directory: Path, build_command: str = TRAIN_COMMAND) -> Recommender:
    """Load the recommender ``name`` saved in ``directory``.

    Raises:
        ConfigError: ``name`` is not registered.
        ArtifactError: the directory is missing, corrupt or holds another model.
    """
    return RECOMMENDERS.lookup(name).load(Path(directory), build_command=build_command)


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
    return RANKERS.lookup(name).load(
        Path(directory), expected_features=expected_features, build_command=build_command
    )
