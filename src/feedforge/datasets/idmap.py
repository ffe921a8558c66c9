"""Id maps: raw string ids <-> contiguous integer indices, fitted on the training split.

The id map is the one artifact training and serving share (besides the online-store key
layout). Unknown ids map to null on purpose: callers decide what a cold-start id gets.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

from feedforge.errors import ArtifactError, ValidationError


class IdMap:
    """A fitted, immutable mapping of string ids to indices ``0..n-1``.

    Args:
        ids: The ids, in index order. Must be unique strings (no nulls).
    """

    def __init__(self, ids: Iterable[str]) -> None:
        self._ids = pl.Series("id", list(ids), dtype=pl.String)
        if self._ids.null_count():
            raise ValidationError("IdMap: ids must not be null")
        if self._ids.n_unique() != len(self._ids):
            raise ValidationError("IdMap: ids must be unique")
        self._lookup = pl.DataFrame(
            {"id": self._ids, "idx": np.arange(len(self._ids), dtype=np.int32)}
        )
        self._dict: dict[str, int] | None = None
        self._list: list[str] | None = None

    @classmethod
    def fit(cls, ids: pl.Series) -> IdMap:
        """Fit on the distinct values of ``ids``, sorted for a deterministic order."""
        return cls(ids.drop_nulls().unique().sort().to_list())

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> pl.Series:
        """The ids in index order."""
        return self._ids

    def index(self, ids: pl.Series) -> pl.Series:
        """Indices of ``ids`` (Int32, null where unknown), in the input order."""
        frame = pl.DataFrame({"id": ids.cast(pl.String)}).with_row_index("_row")
        joined = frame.join(self._lookup, on="id", how="left").sort("_row")
        return joined.get_column("idx").alias(ids.name)

    def get(self, raw_id: str) -> int | None:
        """The index of one id, or ``None`` if unknown (O(1) after the first call)."""
        return self._lookup_dict().get(raw_id)

    def build_lookups(self) -> IdMap:
        """Build the per-id lookups of :meth:`get` and :meth:`id_of` now, not on their first
        call (a service loading a 1M-id version: 0.4 s that no request should wait for).
        Returns the map itself."""
        self._lookup_dict()
        return self

    def _lookup_dict(self) -> dict[str, int]:
        if self._dict is None:
            self._dict = {v: i for i, v in enumerate(self._id_list())}
        return self._dict

    def id_of(self, idx: np.ndarray | Iterable[int]) -> list[str]:
        """The ids of ``(N,)`` indices (a list lookup after the first call: the serving path
        maps a few hundred candidates per request).

        Raises:
            IndexError: an index is out of range.
        """
        ids = self._id_list()
        return [ids[i] for i in np.asarray(idx, dtype=np.int64).tolist()]

    def _id_list(self) -> list[str]:
        if self._list is None:
            self._list = self._ids.to_list()
        return self._list

    def save(self, path: Path) -> None:
        """Write the map to a one-column Parquet file (row order = index)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"id": self._ids}).write_parquet(path)

    @classmethod
    def load(cls, path: Path, build_command: str = "feedforge build") -> IdMap:
        """Load a map written by :meth:`save`.

        Raises:
            ArtifactError: the file is missing or not a valid id map.
        """
        if not path.is_file():
            raise ArtifactError(path, "missing id map", build_command)
        try:
            frame = pl.read_parquet(path)
            return cls(frame.get_column("id").to_list())
        except (pl.exceptions.PolarsError, OSError, TypeError, ValidationError) as exc:
            raise ArtifactError(path, f"corrupt id map ({exc})", build_command) from exc
