"""The append-only event log: Parquet files partitioned by UTC date, de-duplicated on event_id.

Layout::

    events/date=2026-01-01/part-<version>.parquet
    events/date=2026-01-02/part-<version>.parquet

An append is durable when it returns: each file is written to a temporary name, fsynced and
atomically renamed, then the directory is fsynced. Appends from several processes are
serialised with an advisory file lock. An event whose ``event_id`` is already in the log (or
twice in one batch) is stored once; the duplicate count is returned. Duplicates are looked up in
the partition of the event's own date, so a re-sent event must keep its timestamp (it does when
it is the same event).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from feedforge.artifacts import new_version
from feedforge.events.schema import (
    EVENT_REQUIRED,
    EVENT_SCHEMA,
    Event,
    check_event_values,
    conform,
)

_LOCK = ".append.lock"


@dataclass(frozen=True)
class AppendResult:
    """What an append did: rows ``written`` and ``duplicates`` skipped."""

    written: int
    duplicates: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """An append-only, date-partitioned Parquet event log rooted at ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / _LOCK).open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _partition(self, date: str) -> Path:
        return self.root / f"date={date}"

    def _existing_ids(self, date: str, candidates: pl.Series) -> pl.Series:
        part = self._partition(date)
        files = sorted(part.glob("*.parquet")) if part.is_dir() else []
        if not files:
            return pl.Series("event_id", [], dtype=pl.String)
        return (
            pl.scan_parquet(files)
            .select("event_id")
            .filter(pl.col("event_id").is_in(candidates.implode()))
            .collect()
            .get_column("event_id")
        )

    def append(self, events: pl.DataFrame | Sequence[Event], where: str = "events") -> AppendResult:
        """Append events durably.

        Args:
            events: A frame with the :data:`~feedforge.events.schema.EVENT_SCHEMA` columns
                (optional ones may be absent), or validated :class:`Event` objects.
            where: Where the events came from, quoted in validation errors.

        Returns:
            How many rows were written and how many duplicates were skipped.

        Raises:
            feedforge.errors.ValidationError: the frame misses a column, has a wrong type or a
                value an :class:`Event` would refuse (unknown type, negative watch time...).
        """
        if isinstance(events, pl.DataFrame):
            frame = conform(events, EVENT_SCHEMA, EVENT_REQUIRED, where)
            check_event_values(frame, where)
        else:
            frame = pl.DataFrame([e.to_row() for e in events], schema=EVENT_SCHEMA)
        if frame.is_empty():
            return AppendResult(0, 0)
        total = frame.height
        frame = frame.unique(subset="event_id", keep="first", maintain_order=True)
        frame = frame.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%d").alias("_date"))
        written = 0
        version = new_version()
        with self._locked():
            for (date,), part in frame.group_by("_date", maintain_order=True):
                part = part.drop("_date")
                seen = self._existing_ids(str(date), part.get_column("event_id"))
                if seen.len():
                    part = part.filter(~pl.col("event_id").is_in(seen.implode()))
                if part.is_empty():
                    continue
                directory = self._partition(str(date))
                directory.mkdir(parents=True, exist_ok=True)
                target = directory / f"part-{version}.parquet"
                tmp = directory / f".part-{version}.tmp"
                with tmp.open("wb") as fh:
                    part.sort("timestamp").write_parquet(fh, compression="zstd", statistics=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
                _fsync_dir(directory)
                written += part.height
        return AppendResult(written=written, duplicates=total - written)

    def files(self) -> list[Path]:
        """All committed Parquet files of the log, oldest partition first."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob("date=*/*.parquet"))

    def scan(self) -> pl.LazyFrame:
        """A lazy frame over the whole log with the :data:`EVENT_SCHEMA` columns.

        Rows are unique on ``event_id`` (a safety net; appends already de-duplicate).
        """
        files = self.files()
        if not files:
            return pl.LazyFrame(schema=EVENT_SCHEMA)
        return pl.scan_parquet(files, hive_partitioning=False, schema=EVENT_SCHEMA).unique(
            subset="event_id", keep="first"
        )

    def count(self) -> int:
        """Number of events in the log."""
        return int(self.scan().select(pl.len()).collect().item())
