"""The one model contract every feedforge model implements.

Retrieval models (:class:`Recommender`) rank the whole catalog for a user; rankers
(:class:`Ranker`) score given (user, item) feature rows. Both follow scikit-learn's conventions:
``__init__`` only validates and stores hyper-parameters (declared once, as the model's
:attr:`Model.Params`), ``fit`` validates input and returns ``self``, learned state ends in
``_``, randomness comes from ``random_state``. The base class owns persistence: :meth:`Model.save`
writes the model's files and then, once, the manifest with the inputs the model was trained on;
:meth:`Model.load` reads the manifest and hands the files to the model. No pickle anywhere
(JSON, ``.npy``/``.npz`` loaded with ``allow_pickle=False``, safetensors).

Example::

    model = ALSRecommender(factors=64).fit(train)
    ids, scores = model.recommend(np.array([0, 1]), k=10, exclude=train.to_csr())
    model.save(path, inputs={"dataset": dataset.version})
    same = ALSRecommender.load(path)
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from feedforge.artifacts import MANIFEST, Manifest, read_manifest, require_file, write_manifest
from feedforge.datasets.interactions import Interactions
from feedforge.errors import ArtifactError, NotFittedError, ValidationError
from feedforge.index.exact import top_k
from feedforge.models.params import ModelParams
from feedforge.models.ranker_utils import feature_difference

TRAIN_COMMAND = "feedforge train"
PARAMS_FILE = "params.json"


def checked_indices(indices: Any, n: int, where: str, kind: str, hint: str = "") -> np.ndarray:
    """``indices`` as a flat array, checked to be integers in ``[0, n)``.

    Args:
        indices: User or item indices (any array-like).
        n: How many users or items there are.
        where: The caller, quoted in the error (e.g. ``"fold_in"``).
        kind: ``"user"`` or ``"item"``, quoted in the error.
        hint: Appended to the out-of-range error (what to use instead).

    Raises:
        ValidationError: an index is not an integer, or outside ``[0, n)``.
    """
    values = np.asarray(indices).reshape(-1)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValidationError(f"{where}: {kind} indices must be integers, got {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= n):
        raise ValidationError(f"{where}: {kind} indices outside [0, {n}){hint}")
    return values


class Model(ABC):
    """Common base: a name, typed hyper-parameters, fitted-state checks and persistence.

    A model declares ``name``, its ``Params`` class and (narrowing the type) ``params``; it
    implements :meth:`_describe`, :meth:`_write_files` and :meth:`_read_files`, or inherits
    them from its kind's persistence (:class:`~feedforge.models.arrays.ArrayModel`,
    :class:`~feedforge.models.torch_utils.TorchModel`).

    Args:
        **params: Hyper-parameters, checked against ``Params`` (unknown names refused).

    Raises:
        feedforge.errors.ValidationError: a hyper-parameter is unknown or out of range (the
            message names it).

    Attributes:
        params: The validated, frozen hyper-parameters.
        manifest_: The manifest of the artifact this model was saved to or loaded from
            (``None`` before either); its ``version`` is the model's lineage id.
    """

    name: ClassVar[str]
    Params: ClassVar[type[ModelParams]] = ModelParams
    SCHEMA_VERSION: ClassVar[int] = 1
    params: ModelParams

    def __init__(self, **params: Any) -> None:
        self.params = self.Params.parse(params, type(self).__name__)
        self.manifest_: Manifest | None = None
        self.training_curve_: dict[str, Any] | None = None
        """What the last fit recorded per step, for the report: ``{"x": "epoch", "series":
        {"train loss": [...], "held-out loss": [...]}}`` (None: the model records none)."""

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as JSON-ready values, in declaration order (stored in the
        manifest and ``params.json``)."""
        return self.params.model_dump(mode="json")

    def set_params(self, **changes: Any) -> Self:
        """Replace some hyper-parameters (validated like the constructor's); returns ``self``.

        Raises:
            feedforge.errors.ValidationError: a changed value is unknown or out of range.
        """
        current = self.params.model_dump()
        self.params = self.Params.parse({**current, **changes}, type(self).__name__)
        return self

    def _check_fitted(self, attribute: str) -> None:
        if getattr(self, attribute, None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")

    @classmethod
    def artifact(cls) -> str:
        """The artifact name in the manifest, ``model/<name>``."""
        return f"model/{cls.name}"

    def save(
        self,
        directory: Path,
        *,
        inputs: Mapping[str, str],
        extra: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Write the fitted model into ``directory`` (created if needed), without pickle.

        The manifest is written once, last: any previous one is removed first, so a half
        written directory reads as incomplete, never as the old model with some new files.

        Args:
            directory: The model directory.
            inputs: Artifact name -> version of what the model was trained on, e.g.
                ``{"dataset": dataset.version}`` (its lineage; ``{}`` when there is none).
            extra: What the training stage records beside the model's own description
                (e.g. ``fit_seconds``, ``warm_start``). The fit's :attr:`training_curve_`
                is recorded as ``training_curve``.

        Returns:
            The manifest written (also kept as :attr:`manifest_`).

        Raises:
            NotFittedError: the model is not fitted (nothing is written).
        """
        counts, described = self._describe()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST).unlink(missing_ok=True)
        self._write_files(directory)
        manifest = Manifest(
            artifact=self.artifact(),
            schema_version=self.SCHEMA_VERSION,
            inputs=dict(inputs),
            counts=counts,
            extra={
                "params": self.get_params(),
                **described,
                **({"training_curve": self.training_curve_} if self.training_curve_ else {}),
                **dict(extra or {}),
            },
        )
        self.manifest_ = write_manifest(directory, manifest)
        return manifest

    @property
    def artifact_version(self) -> str:
        """The version of the artifact this model was saved to or loaded from (its lineage id).

        Raises:
            NotFittedError: the model was neither saved nor loaded.
        """
        if self.manifest_ is None:
            raise NotFittedError(
                f"{type(self).__name__} was neither saved nor loaded, so it has no artifact version"
            )
        return self.manifest_.version

    @classmethod
    def load(cls, directory: Path, build_command: str = TRAIN_COMMAND) -> Self:
        """Load a model written by :meth:`save`.

        Args:
            directory: The model directory.
            build_command: The command quoted in errors, which (re)builds the model.

        Raises:
            feedforge.errors.ArtifactError: the directory, the manifest or a file is missing
                or corrupt, or holds another model.
        """
        directory = Path(directory)
        manifest = read_manifest(directory, cls.artifact(), (cls.SCHEMA_VERSION,), build_command)
        model = cls._read_files(directory, manifest, build_command)
        model.manifest_ = manifest
        return model

    # The three persistence hooks. A model kind implements them once (arrays.ArrayModel,
    # torch_utils.TorchModel, each ranker's format); models that are never saved (benchmark
    # peers, test fakes) keep these defaults.
    def _describe(self) -> tuple[dict[str, int], dict[str, Any]]:
        """The manifest's ``counts`` and ``extra`` (besides ``params``) of the fitted model.

        Raises:
            NotFittedError: the model is not fitted.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def _write_files(self, directory: Path) -> None:
        """Write the model's files (everything but the manifest) into ``directory``."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def _read_files(cls, directory: Path, manifest: Manifest, build_command: str) -> Self:
        """A model from the files :meth:`_write_files` wrote (the manifest is checked).

        Raises:
            ArtifactError: a file is missing or corrupt.
        """
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")

    def _write_params_file(self, directory: Path, **state: Any) -> None:
        """Write ``params.json``: the hyper-parameters plus any JSON ``state``."""
        payload = {"params": self.get_params(), **state}
        (directory / PARAMS_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")

    @classmethod
    def _read_params_file(cls, directory: Path, build_command: str) -> tuple[Self, dict[str, Any]]:
        """An unfitted model from ``params.json`` and the rest of that file's JSON state.

        Raises:
            ArtifactError: the file is missing, not JSON, or holds invalid parameters.
        """
        path = require_file(directory / PARAMS_FILE, f"{cls.name} parameters", build_command)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict):
                raise TypeError("not a JSON object")
            params = state.pop("params")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                path, f"corrupt {cls.name} parameters ({exc})", build_command
            ) from exc
        return cls._from_saved_params(params, path, build_command), state

    @classmethod
    def _from_saved_params(cls, params: Any, path: Path, build_command: str) -> Self:
        """An unfitted model from saved hyper-parameters; ArtifactError naming ``path`` when
        they are not a mapping or fail validation."""
        if not isinstance(params, Mapping):
            raise ArtifactError(
                path, f"corrupt {cls.name} parameters (not an object)", build_command
            )
        try:
            return cls(**params)
        except ValidationError as exc:
            raise ArtifactError(
                path, f"corrupt {cls.name} parameters ({exc.message})", build_command
            ) from exc


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
    def load(
        cls,
        directory: Path,
        build_command: str = TRAIN_COMMAND,
        expected_features: list[str] | None = None,
    ) -> Self:
        """Load a ranker; refuse it when its features differ from ``expected_features``.

        Args:
            directory: The model directory.
            build_command: The command quoted in errors.
            expected_features: The feature list the caller will pass, in column order; None
                accepts the saved one.

        Raises:
            feedforge.errors.ArtifactError: missing, corrupt, or a different feature list
                (the message lists the missing and extra features).
        """
        model = super().load(directory, build_command)
        saved = model.feature_names_ or []
        if expected_features is not None and list(expected_features) != saved:
            problem = feature_difference(saved, list(expected_features))
            raise ArtifactError(Path(directory), problem, build_command)
        return model
