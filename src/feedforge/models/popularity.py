"""The most-popular baseline: one recency-windowed popularity ranking for every user.

It is the floor every personalised model must beat, and the fallback for users the
personalised model does not know (cold start).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from feedforge.artifacts import MANIFEST, Manifest, read_manifest, require_file, write_manifest
from feedforge.config import PopularityConfig
from feedforge.datasets.interactions import Interactions
from feedforge.errors import ArtifactError, DataError, NotFittedError, ValidationError
from feedforge.models.base import Recommender

TRAIN_COMMAND = "feedforge train"
_SCHEMA_VERSION = 1
_US_PER_DAY = 86_400 * 1_000_000


def _tie_broken_ranks(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Dense ranks of ``(primary, secondary)`` pairs: 0 for the lowest pair, equal pairs equal.

    Args:
        primary: ``(n_items,)`` main sort key.
        secondary: ``(n_items,)`` key that breaks ties of ``primary``.

    Returns:
        ``(n_items,)`` float32 ranks, larger for more popular items.
    """
    order = np.lexsort((secondary, primary))  # last key is the primary one
    p, s = primary[order], secondary[order]
    new_pair = np.empty(len(order), dtype=bool)
    new_pair[:1] = True
    new_pair[1:] = (p[1:] != p[:-1]) | (s[1:] != s[:-1])
    ranks = np.empty(len(order), dtype=np.float32)
    ranks[order] = np.cumsum(new_pair) - 1
    return ranks


class MostPopular(Recommender):
    """Ranks items by their positives in the last ``window_days`` of the training data.

    ``score`` is the same ``(n_items,)`` vector for every user (any user index is accepted,
    including users unknown at training time). The window ends at the newest training timestamp,
    not at "now", so offline evaluation and a model trained on old data see the same ranking.

    Args:
        window_days: Length of the recency window in days.

    Attributes:
        window_counts_: ``(n_items,)`` float64 summed weights of positives within the window.
        total_counts_: ``(n_items,)`` float64 summed weights of all positives (the tie-break).
        scores_: ``(n_items,)`` float32 dense rank of ``(window_counts_, total_counts_)``:
            0 for the least popular, equal for exact ties. An ordinal, not a count.
        newest_timestamp_us_: The newest training timestamp (the window's end).
    """

    name: ClassVar[str] = "popularity"

    def __init__(self, window_days: float = 7.0) -> None:
        self.window_days = window_days
        self.window_counts_: np.ndarray | None = None
        self.total_counts_: np.ndarray | None = None
        self.scores_: np.ndarray | None = None
        self.newest_timestamp_us_: int | None = None
        self.n_users_: int | None = None

    @classmethod
    def from_config(cls, config: PopularityConfig) -> Self:
        return cls(window_days=config.window_days)

    def get_params(self) -> dict[str, Any]:
        return {"window_days": self.window_days}

    def fit(self, interactions: Interactions) -> Self:
        """Count positives per item, within the window and overall.

        Raises:
            DataError: there are no interactions.
            ValidationError: ``window_days`` is not positive or a weight is not finite.
        """
        if not self.window_days > 0:
            raise ValidationError(f"window_days must be > 0, got {self.window_days}")
        if len(interactions) == 0:
            raise DataError("MostPopular.fit: no interactions to count")
        weight = np.asarray(interactions.weight, dtype=np.float64)
        if not np.isfinite(weight).all():
            raise ValidationError("MostPopular.fit: interaction weights must be finite")
        timestamp = np.asarray(interactions.timestamp_us, dtype=np.int64)
        newest = int(timestamp.max())
        in_window = timestamp >= newest - round(self.window_days * _US_PER_DAY)
        n_items = interactions.n_items
        item_idx = np.asarray(interactions.item_idx)
        self.window_counts_ = np.bincount(
            item_idx[in_window], weights=weight[in_window], minlength=n_items
        )
        self.total_counts_ = np.bincount(item_idx, weights=weight, minlength=n_items)
        self.scores_ = _tie_broken_ranks(self.window_counts_, self.total_counts_)
        self.newest_timestamp_us_ = newest
        self.n_users_ = interactions.n_users
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(window_counts_, total_counts_, scores_)``, or NotFittedError."""
        if self.window_counts_ is None or self.total_counts_ is None or self.scores_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.window_counts_, self.total_counts_, self.scores_

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` float32: the popularity ranks, repeated for each of the ``B`` users."""
        scores = self._fitted()[2]
        return np.tile(scores, (len(np.atleast_1d(user_idx)), 1))

    def save(self, directory: Path) -> None:
        """Write ``window_counts.npy``, ``total_counts.npy``, ``params.json`` and the manifest."""
        window_counts, total_counts, scores = self._fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Drop any previous manifest first: it is written last, so until then the directory
        # reads as incomplete rather than as the old model with half of the new files.
        (directory / MANIFEST).unlink(missing_ok=True)
        np.save(directory / "window_counts.npy", window_counts, allow_pickle=False)
        np.save(directory / "total_counts.npy", total_counts, allow_pickle=False)
        state = {
            "params": self.get_params(),
            "newest_timestamp_us": self.newest_timestamp_us_,
            "n_users": self.n_users_,
        }
        (directory / "params.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        write_manifest(
            directory,
            Manifest(
                artifact=f"model/{self.name}",
                schema_version=_SCHEMA_VERSION,
                counts={"n_users": int(self.n_users_ or 0), "n_items": len(scores)},
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
        params_path = require_file(
            directory / "params.json", "popularity parameters", build_command
        )
        try:
            state = json.loads(params_path.read_text(encoding="utf-8"))
            model = cls(**state["params"])
            newest = int(state["newest_timestamp_us"])
            n_users = int(state["n_users"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(
                params_path, f"corrupt popularity parameters ({exc})", build_command
            ) from exc
        counts = {}
        for key in ("window_counts", "total_counts"):
            path = require_file(directory / f"{key}.npy", f"popularity {key}", build_command)
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise ArtifactError(
                    path, f"corrupt popularity {key} ({exc})", build_command
                ) from exc
            n_items = manifest.counts.get("n_items")
            if array.ndim != 1 or array.shape[0] != n_items or not np.isfinite(array).all():
                raise ArtifactError(
                    path,
                    f"corrupt popularity {key}: expected {n_items} finite counts",
                    build_command,
                )
            counts[key] = array.astype(np.float64)
        model.window_counts_ = counts["window_counts"]
        model.total_counts_ = counts["total_counts"]
        model.scores_ = _tie_broken_ranks(model.window_counts_, model.total_counts_)
        model.newest_timestamp_us_ = newest
        model.n_users_ = n_users
        return model
