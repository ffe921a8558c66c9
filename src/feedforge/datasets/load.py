"""Read a built dataset: the one entry point later stages use.

Everything ``train`` and ``evaluate`` need from the event log and the catalog comes through
:class:`Dataset` (see :mod:`feedforge.datasets.build` for the files): they never open the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedforge.artifacts import Manifest, read_manifest, require_file
from feedforge.datasets.build import (
    DATASET_ARTIFACT,
    DATASET_SCHEMA_VERSION,
    SNAPSHOT_FRAMES,
    SPLITS,
)
from feedforge.datasets.idmap import IdMap
from feedforge.datasets.interactions import Interactions
from feedforge.errors import ValidationError
from feedforge.workdir import Workdir


@dataclass
class Dataset:
    """A built dataset: manifest, id maps and lazy access to its split files."""

    root: Path
    manifest: Manifest
    users: IdMap
    items: IdMap
    build_command: str
    _cache: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def n_categories(self) -> int:
        return int(self.manifest.extra.get("n_categories", 1))

    @property
    def split_bounds(self) -> dict[str, Any]:
        return dict(self.manifest.extra["split"])

    def _read(self, name: str) -> pl.DataFrame:
        if name not in self._cache:
            path = require_file(
                self.root / f"{name}.parquet", f"dataset file {name}", self.build_command
            )
            self._cache[name] = pl.read_parquet(path)
        return self._cache[name]

    def positives(self, split: str) -> pl.DataFrame:
        """Positive engagement events of a split (see :mod:`feedforge.datasets.build`)."""
        _check_split(split)
        return self._read(f"positives_{split}")

    def ranking(self, split: str) -> pl.DataFrame:
        """Impression-level ranking examples of a split."""
        _check_split(split)
        return self._read(f"ranking_{split}")

    @property
    def test_start(self) -> datetime:
        """``t2``: the test window's start, the time of :meth:`feature_snapshot`."""
        return datetime.fromisoformat(self.split_bounds["t2"])

    def feature_snapshot(self) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """The raw counters as of :attr:`test_start`, as the online store would hold them.

        Returns:
            ``(users, items, user_categories)``, the frames of
            :func:`~feedforge.features.offline.snapshot_counters` (from every event before
            ``t2``), for :func:`~feedforge.models.two_stage.two_stage_recommend`.
        """
        users, items, user_categories = (self._read(f"snapshot/{name}") for name in SNAPSHOT_FRAMES)
        return users, items, user_categories

    def test_outcomes(self) -> pl.DataFrame:
        """Observed outcomes of the test window ``[t2, end]`` per (user, item): ``user_id``,
        ``item_id``, ``user_idx``, ``item_idx`` (null: not in the id map), ``clicks``,
        ``watch_seconds`` and ``revenue`` (see
        :data:`~feedforge.datasets.build.OUTCOME_COLUMNS`)."""
        return self._read("outcomes_test")

    def item_features(self) -> sp.csr_matrix | None:
        """``(n_items, n_categories)`` multi-hot CSR of the id-mapped items' categories, or
        ``None`` when the dataset has no category file or no categories."""
        path = self.root / "ids" / "item_categories.parquet"
        if not path.is_file():
            return None
        cats = pl.read_parquet(path).get_column("categories")
        exploded = (
            pl.DataFrame({"categories": cats})
            .with_row_index("row")
            .explode("categories", empty_as_null=True)
            .drop_nulls()
        )
        if exploded.is_empty():
            return None
        names = exploded.get_column("categories").unique().sort()
        codes = exploded.get_column("categories").replace_strict(
            names, pl.int_range(names.len(), eager=True), return_dtype=pl.Int64
        )
        return sp.csr_matrix(
            (
                np.ones(exploded.height, dtype=np.float32),
                (exploded.get_column("row").to_numpy(), codes.to_numpy()),
            ),
            shape=(len(self.items), names.len()),
        )

    def train_interactions(self) -> Interactions:
        """Train-split positives of users and items in the id maps, for retrieval training
        (with the items' category features and the ratings, where there are any)."""
        pos = self.positives("train").drop_nulls(["user_idx", "item_idx"])
        return Interactions(
            user_idx=pos.get_column("user_idx").to_numpy().astype(np.int32),
            item_idx=pos.get_column("item_idx").to_numpy().astype(np.int32),
            weight=pos.get_column("weight").to_numpy().astype(np.float32),
            timestamp_us=pos.get_column("timestamp").dt.epoch("us").to_numpy().astype(np.int64),
            n_users=len(self.users),
            n_items=len(self.items),
            item_features=self.item_features(),
        )

    def relevant(self, split: str, flags: Sequence[str]) -> sp.csr_matrix:
        """``(n_users, n_items)`` binary CSR of a split's positives with any of ``flags``
        (an objective's :func:`~feedforge.features.objectives.positive_flags`).

        Only users and items known to the id maps appear; a rating above the threshold is
        positive for every objective.
        """
        wanted = pl.col("rated")
        for flag in flags:
            wanted = wanted | pl.col(flag)
        pos = (
            self.positives(split)
            .filter(wanted)
            .drop_nulls(["user_idx", "item_idx"])
            .unique(["user_idx", "item_idx"])
        )
        return sp.csr_matrix(
            (
                np.ones(pos.height, dtype=np.float32),
                (pos.get_column("user_idx").to_numpy(), pos.get_column("item_idx").to_numpy()),
            ),
            shape=(len(self.users), len(self.items)),
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValidationError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def load_dataset(workdir: Workdir) -> Dataset:
    """Open the dataset of a work directory.

    Raises:
        feedforge.errors.ArtifactError: the dataset is missing, corrupt or of an unknown schema.
    """
    command = workdir.command("build")
    root = workdir.dataset_dir
    manifest = read_manifest(root, DATASET_ARTIFACT, (DATASET_SCHEMA_VERSION,), command)
    return Dataset(
        root=root,
        manifest=manifest,
        users=IdMap.load(root / "ids" / "users.parquet", command),
        items=IdMap.load(root / "ids" / "items.parquet", command),
        build_command=command,
    )
