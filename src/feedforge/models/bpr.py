"""Matrix factorisation trained with Bayesian Personalized Ranking (Rendle et al., UAI 2009).

BPR maximises ``sum ln sigmoid(x_u . y_i - x_u . y_j)`` over sampled triples of a user ``u``, an
item ``i`` they interacted with and an item ``j`` they did not, with L2 regularisation, by SGD.
Training uses :class:`implicit.cpu.bpr.BayesianPersonalizedRanking`, which

- samples the positive pair uniformly over the stored interactions and the negative item from
  the item column of a second random interaction, i.e. proportionally to item popularity;
- with ``verify_negative_samples`` skips a negative the user has interacted with;
- learns an item bias as an extra factor column whose user side is fixed at 1.

So the embeddings have ``D = factors + 1`` columns: ``user_embeddings()`` ends with a column of
ones, ``item_embeddings()`` with the item biases, and their dot product is exactly implicit's
score (bias included). Users without training data get only the bias (a popularity ranking).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.recommender_base import ModelFitError
from threadpoolctl import threadpool_limits

from feedforge.artifacts import MANIFEST, Manifest, read_manifest, require_file, write_manifest
from feedforge.datasets.interactions import Interactions
from feedforge.errors import ArtifactError, DataError, NotFittedError, ValidationError
from feedforge.models.base import EmbeddingRecommender

TRAIN_COMMAND = "feedforge train"
_SCHEMA_VERSION = 1


class BPRRecommender(EmbeddingRecommender):
    """BPR matrix factorisation: ``score(u, i) = user_embeddings()[u] . item_embeddings()[i]``.

    Interaction weights are ignored (any positive counts once), as in implicit.

    Args:
        factors: Latent factors; the embeddings have ``factors + 1`` columns (item bias).
        learning_rate: SGD step size.
        regularization: L2 strength on the factors touched by each update.
        iterations: Epochs; each draws as many triples as there are (user, item) positives.
        random_state: Seed of the initial factors and of the samplers.
        num_threads: SGD threads. Updates race between threads (Hogwild), so only
            ``num_threads=1`` gives the same model for the same ``random_state``; ``0`` uses
            every core.

    Attributes:
        user_factors_: ``(n_users, factors + 1)`` float32 user vectors; last column is 1.
        item_factors_: ``(n_items, factors + 1)`` float32 item vectors; last column is the bias.

    Example::

        model = BPRRecommender(factors=64).fit(train)
        ids, scores = model.recommend(np.array([0, 1]), k=10, exclude=train.to_csr())
    """

    name: ClassVar[str] = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int = 0,
        num_threads: int = 1,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads
        self.user_factors_: np.ndarray | None = None
        self.item_factors_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "learning_rate": self.learning_rate,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "random_state": self.random_state,
            "num_threads": self.num_threads,
        }

    def _check_params(self) -> None:
        problems = []
        for key, low in (("factors", 1), ("iterations", 1), ("num_threads", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not (
                isinstance(value, int | np.integer) and value >= low
            ):
                problems.append(f"{key} must be an int >= {low}, got {value!r}")
        seed = self.random_state
        if isinstance(seed, bool) or not (isinstance(seed, int | np.integer) and seed >= 0):
            problems.append(f"random_state must be an int >= 0, got {self.random_state!r}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"learning_rate must be finite and > 0, got {self.learning_rate!r}")
        if not (np.isfinite(self.regularization) and self.regularization >= 0):
            problems.append(f"regularization must be finite and >= 0, got {self.regularization!r}")
        if problems:
            raise ValidationError("BPRRecommender: " + "; ".join(problems))

    def fit(self, interactions: Interactions) -> Self:
        """Learn the factors from the ``(n_users, n_items)`` matrix of positives.

        Raises:
            DataError: there are no interactions, or training diverged (NaN/inf factors).
            ValidationError: a hyper-parameter is out of range or a weight is not a finite
                positive number.
        """
        self._check_params()
        if len(interactions) == 0:
            raise DataError("BPRRecommender.fit: no interactions to learn from")
        weight = np.asarray(interactions.weight)
        if not (np.isfinite(weight).all() and (weight > 0).all()):
            raise ValidationError(
                "BPRRecommender.fit: interaction weights must be finite and > 0 (positives only)"
            )
        user_items = interactions.to_csr()
        user_items.data[:] = 1.0  # BPR reads only which entries are stored
        # Same reason as ALS: implicit runs its own threads, so keep BLAS single-threaded.
        with threadpool_limits(1, "blas"):
            bpr = BayesianPersonalizedRanking(
                factors=self.factors,
                learning_rate=self.learning_rate,
                regularization=self.regularization,
                dtype=np.float32,
                iterations=self.iterations,
                num_threads=self.num_threads,
                verify_negative_samples=True,
                random_state=self.random_state,
            )
            try:
                bpr.fit(user_items, show_progress=False)
            except ModelFitError as exc:
                raise DataError(
                    "BPRRecommender.fit: training diverged (NaN factors); "
                    "lower learning_rate or raise regularization"
                ) from exc
        user_factors = np.ascontiguousarray(bpr.user_factors, dtype=np.float32)
        item_factors = np.ascontiguousarray(bpr.item_factors, dtype=np.float32)
        if not (np.isfinite(user_factors).all() and np.isfinite(item_factors).all()):
            raise DataError(
                "BPRRecommender.fit: training diverged (non-finite factors); "
                "lower learning_rate or raise regularization"
            )
        self.user_factors_, self.item_factors_ = user_factors, item_factors
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.user_factors_ is None or self.item_factors_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.user_factors_, self.item_factors_

    def user_embeddings(self) -> np.ndarray:
        """``(n_users, factors + 1)`` float32 user vectors, ending with a column of ones."""
        return self._fitted()[0]

    def item_embeddings(self) -> np.ndarray:
        """``(n_items, factors + 1)`` float32 item vectors, ending with the item biases."""
        return self._fitted()[1]

    def save(self, directory: Path) -> None:
        """Write ``user_factors.npy``, ``item_factors.npy``, ``params.json`` and the manifest."""
        user_factors, item_factors = self._fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Drop any previous manifest first: it is written last, so until then the directory
        # reads as incomplete rather than as the old model with half of the new files.
        (directory / MANIFEST).unlink(missing_ok=True)
        np.save(directory / "user_factors.npy", user_factors, allow_pickle=False)
        np.save(directory / "item_factors.npy", item_factors, allow_pickle=False)
        params = json.dumps({"params": self.get_params()}, indent=2)
        (directory / "params.json").write_text(params, encoding="utf-8")
        write_manifest(
            directory,
            Manifest(
                artifact=f"model/{self.name}",
                schema_version=_SCHEMA_VERSION,
                counts={
                    "n_users": int(user_factors.shape[0]),
                    "n_items": int(item_factors.shape[0]),
                    "dim": int(user_factors.shape[1]),
                },
                extra={"params": self.get_params()},
            ),
        )

    @classmethod
    def load(cls, directory: Path, build_command: str = TRAIN_COMMAND) -> Self:
        """Load a model written by :meth:`save`.

        Raises:
            ArtifactError: the directory, manifest or a file is missing or corrupt.
        """
        directory = Path(directory)
        manifest = read_manifest(directory, f"model/{cls.name}", (_SCHEMA_VERSION,), build_command)
        params_path = require_file(directory / "params.json", "BPR parameters", build_command)
        try:
            model = cls(**json.loads(params_path.read_text(encoding="utf-8"))["params"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(
                params_path, f"corrupt BPR parameters ({exc})", build_command
            ) from exc
        factors = {}
        for key, rows in (("user_factors", "n_users"), ("item_factors", "n_items")):
            path = require_file(directory / f"{key}.npy", f"BPR {key}", build_command)
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise ArtifactError(path, f"corrupt BPR {key} ({exc})", build_command) from exc
            expected = (manifest.counts.get(rows), manifest.counts.get("dim"))
            if array.shape != expected or not np.isfinite(array).all():
                raise ArtifactError(
                    path,
                    f"corrupt BPR {key}: expected finite {expected} array, got {array.shape}",
                    build_command,
                )
            factors[key] = np.ascontiguousarray(array, dtype=np.float32)
        model.user_factors_ = factors["user_factors"]
        model.item_factors_ = factors["item_factors"]
        return model
