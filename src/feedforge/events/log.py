"""The append-only event log: Parquet files partitioned by UTC date, de-duplicated on event_id.

Layout::

    events/date=2026-01-01/part-<version>.parquet
    events/date=2026-01-02/part-<version>.parquet

An append is durable when it returns: each day's file is written to a temporary name and
fsynced, then renamed into place, then the day's directory is fsynced (and the log's root once,
when the append created days). Appends from several processes are serialised with an advisory
file lock, held only for the duplicate check, the renames and the directories' fsyncs: the
files are written and fsynced before it is taken, several at once when an append spans several
days, so one append's many days hold other appends up for little. An event whose ``event_id``
is already in the log (or twice in one batch) is stored once (the first of the batch); the
duplicate count and the ids stored are returned. Duplicates are looked up in the partition of
the event's own date, so a re-sent event must keep its timestamp (it does when it is the same
event).

**The id index.** Looking duplicates up by scanning a partition's files on every append costs
O(files) per append, and the service appends one file per request. So an :class:`EventLog`
keeps, per partition it appended to, a 64-bit hash of each event id with the file it is in
(12 bytes per event, where a set of the id strings took about 120: a day of 720,000 events
grew each service worker by ~85 MB) and the names of the files read; each append (under the
lock) lists the partition and reads the ids of only the files it has not seen, which also
picks up other processes' appends. A candidate whose hash is indexed is confirmed by reading
the ids of the files holding that hash (a re-send; a collision of distinct ids, about one in
10^7 per day of 2 million events, is told apart there), so a hash never drops an event. At
most :data:`MAX_INDEXED_IDS` ids are held: the least recently used partitions are dropped
first, and a partition larger than that on its own is scanned as before.

**Compaction.** One file per append adds up (the service appends once per request):
:meth:`EventLog.compact` (``feedforge compact``) rewrites each closed day's files into one.
A reader wraps its use of :meth:`EventLog.scan` in :meth:`EventLog.reading` (a shared lock):
compaction removes the old files only when no reader holds it, so a file a reader listed is
never gone when it reads it. It removes them under the append lock too, since an append lists
a day's files and then reads the ones it has not seen: appends go on during a compaction, wait
only while a batch of old files is removed, and never wait for readers.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from feedforge.artifacts import fsync, new_version
from feedforge.errors import EventLogError
from feedforge.events.durable import DayFile, commit, on_each, tmp_name
from feedforge.events.schema import (
    EVENT_REQUIRED,
    EVENT_SCHEMA,
    Event,
    check_event_values,
    conform,
)

_LOCK = ".append.lock"
_READ_LOCK = ".read.lock"
_COMPACT_LOCK = ".compact.lock"
MAX_INDEXED_IDS = 10_000_000
"""Event ids an :class:`EventLog` indexes in memory for duplicate checks (12 bytes each, so
at most about 120 MB)."""
_HASH_SEED = 0x5EED
UNLINK_BATCH = 1_000
"""Old files a compaction removes per hold of the append lock."""


@dataclass(frozen=True)
class AppendResult:
    """What an append did: rows ``written`` and ``duplicates`` skipped.

    ``stored_ids`` are the ``event_id`` of the rows written (for each, the row is the first
    of the batch with that id); they are left out of comparisons, which compare the counts.
    """

    written: int
    duplicates: int
    stored_ids: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did: partitions rewritten, their files before and after, and the
    events they hold."""

    partitions: int
    files_before: int
    files_after: int
    events: int


_Failure = tuple[Path, OSError]
"""Where an append failed first (the directory) and why."""


_RECENT_MIN = 65_536
"""The recent run of a day's id index merges into the base run only past this many hashes."""


def _id_hashes(ids: pl.Series) -> np.ndarray:
    """64-bit hashes of event ids (stable within a process, which is all the index needs)."""
    return ids.hash(seed=_HASH_SEED).to_numpy()


class _SortedRun:
    """Sorted 64-bit id hashes and the file (position in :attr:`_DayIndex.files`) of each."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.uint64)
        self.file_of = np.empty(0, dtype=np.uint32)

    def __len__(self) -> int:
        return len(self.hashes)

    def merge(self, hashes: np.ndarray, file_of: np.ndarray) -> None:
        """Merge sorted ``hashes`` (with their files) in: O(len(self) + new)."""
        at = np.searchsorted(self.hashes, hashes)
        self.hashes = np.insert(self.hashes, at, hashes)
        self.file_of = np.insert(self.file_of, at, file_of)

    def files_of(self, hashes: np.ndarray) -> tuple[np.ndarray, set[int]]:
        """Which ``hashes`` are here (a bool mask) and the files holding them."""
        lo = np.searchsorted(self.hashes, hashes, side="left")
        hi = np.searchsorted(self.hashes, hashes, side="right")
        hit = hi > lo
        holders = {int(f) for a, b in zip(lo[hit], hi[hit], strict=True) for f in self.file_of[a:b]}
        return hit, holders


class _DayIndex:
    """The hashed event ids of one partition's files (see the module docs), in two sorted
    runs: a large ``base`` and a small ``recent`` one that each append merges into.

    ``recent`` joins ``base`` once it holds more than an eighth of it (and at least
    :data:`_RECENT_MIN` hashes), so an append copies the recent run (at most an eighth of
    the day's index, or 64k hashes), not the whole index: one sorted array copied on every
    append of a busy day (8 MB per append at ~700k events) was a churn of large blocks
    (``docs/benchmarks/README.md``, issue 14 soak).
    """

    def __init__(self) -> None:
        self.files: list[str] = []
        self.base = _SortedRun()
        self.recent = _SortedRun()

    def __len__(self) -> int:
        return len(self.base) + len(self.recent)

    def add(self, names: list[str], ids: list[pl.Series]) -> None:
        """Index the ids of files ``names`` (``ids[j]`` those of ``names[j]``)."""
        if not names:
            return
        hashes = np.concatenate([_id_hashes(i) for i in ids])
        file_of = np.repeat(
            np.arange(len(self.files), len(self.files) + len(names), dtype=np.uint32),
            [len(i) for i in ids],
        )
        order = np.argsort(hashes, kind="stable")
        self.recent.merge(hashes[order], file_of[order])
        self.files.extend(names)
        if len(self.recent) > max(_RECENT_MIN, len(self.base) // 8):
            self.base.merge(self.recent.hashes, self.recent.file_of)
            self.recent = _SortedRun()

    def files_holding(self, ids: pl.Series) -> tuple[np.ndarray, list[str]]:
        """Which ``ids`` have an indexed hash (a bool mask), and the files holding those
        hashes."""
        hashes = _id_hashes(ids)
        hit_base, in_base = self.base.files_of(hashes)
        hit_recent, in_recent = self.recent.files_of(hashes)
        return hit_base | hit_recent, [self.files[f] for f in sorted(in_base | in_recent)]


def _stored_among(files: list[Path], candidates: pl.Series) -> pl.Series:
    """The ``candidates`` found in the event ids of ``files``."""
    return (
        pl.scan_parquet(files)
        .select("event_id")
        .filter(pl.col("event_id").is_in(candidates.implode()))
        .collect()
        .get_column("event_id")
    )


class EventLog:
    """An append-only, date-partitioned Parquet event log rooted at ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        # partition date -> its id index; most recently used last
        self._index: dict[str, _DayIndex] = {}

    @contextmanager
    def _locked(self, name: str = _LOCK) -> Iterator[None]:
        """Hold the exclusive advisory lock ``root/name`` (default: the append lock)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / name).open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Keep every file of the log in place while the block runs: wrap all use of a
        :meth:`scan` (and every ``collect`` of frames built on it) in this.

        A shared lock: readers do not wait for each other or for appends, and appends do not
        wait for readers; :meth:`compact` waits for the readers before it removes the files
        it merged. A log that does not exist yet, or one this user may not write (a read-only
        copy, which nothing can compact from here), is read without the lock.
        """
        try:
            fh = (self.root / _READ_LOCK).open("a")
        except OSError:
            yield
            return
        with fh:  # closing the file releases the lock
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
            yield

    def _partition(self, date: str) -> Path:
        return self.root / f"date={date}"

    def _existing_ids(self, date: str, candidates: pl.Series) -> pl.Series:
        """The ``candidates`` already stored in partition ``date`` (call under the lock)."""
        part = self._partition(date)
        files = {f.name: f for f in part.glob("*.parquet")} if part.is_dir() else {}
        if not files:
            self._index.pop(date, None)
            return pl.Series("event_id", [], dtype=pl.String)
        index = self._index.pop(date, None)
        if index is None or not set(index.files) <= files.keys():
            index = _DayIndex()  # new, or a file went away (rewritten partition): start over
        new = sorted(files.keys() - set(index.files))
        index.add(new, [pl.read_parquet(files[n], columns=["event_id"])["event_id"] for n in new])
        if len(index) > MAX_INDEXED_IDS:  # too large to hold: scan it, as without an index
            return _stored_among(list(files.values()), candidates)
        self._index[date] = index
        while sum(len(i) for i in self._index.values()) > MAX_INDEXED_IDS:
            del self._index[next(iter(self._index))]
        hit, holders = index.files_holding(candidates)
        if not holders:
            return pl.Series("event_id", [], dtype=pl.String)
        # Confirmed against the ids themselves, in the files that hold the hashes.
        return _stored_among([files[n] for n in holders], candidates.filter(pl.Series(hit)))

    def _indexed(self, date: str, name: str, ids: pl.Series) -> None:
        """Record a file this process has just committed in the id index."""
        index = self._index.get(date)
        if index is not None:
            index.add([name], [ids])

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
            feedforge.errors.EventLogError: the log could not be written (an ``OSError``:
                full or read-only disk, permissions); the message names the directory and how
                many events were stored before the failure.
        """
        if isinstance(events, pl.DataFrame):
            frame = conform(events, EVENT_SCHEMA, EVENT_REQUIRED, where)
            check_event_values(frame, where)
        else:
            rows = [e.to_row() for e in events]
            frame = pl.DataFrame(
                {name: [row[name] for row in rows] for name in EVENT_SCHEMA}, schema=EVENT_SCHEMA
            )
        if frame.is_empty():
            return AppendResult(0, 0)
        total = frame.height
        frame = frame.unique(subset="event_id", keep="first", maintain_order=True)
        shares = self._split(frame)
        stored: list[DayFile] = []
        try:
            staged, failure = self._stage(shares)
            if staged:
                with self._locked():
                    stored, late = self._commit_staged(staged)
                failure = late or failure  # its days come before the one staging failed on
        except OSError as exc:  # the lock file (or the root) could not be opened
            failure = (self.root, exc)
        finally:
            for share in shares:
                share.discard()
        written = sum(share.rows.height for share in stored)
        if failure is not None:
            directory, error = failure
            raise EventLogError(
                directory,
                error.strerror or type(error).__name__,  # no path: the client sees it
                f"{written} new event(s) of this batch were stored before the failure and the "
                "rest were not: re-send the batch once the log is writable (stored events are "
                "de-duplicated by event_id)",
                stored=written,
            ) from error
        ids = frozenset(i for share in stored for i in share.rows.get_column("event_id").to_list())
        return AppendResult(written=written, duplicates=total - written, stored_ids=ids)

    def existing_ids(self, events: Sequence[Event]) -> set[str]:
        """The ids of ``events`` the log already holds (de-duplication is per UTC day of the
        event's timestamp, as :meth:`append` does it)."""
        days: dict[str, list[str]] = {}
        for event in events:
            day = event.timestamp.astimezone(UTC).strftime("%Y-%m-%d")
            days.setdefault(day, []).append(event.event_id)
        found: set[str] = set()
        if not days or not self.root.is_dir():
            return found
        with self._locked():
            for day, ids in days.items():
                found.update(self._existing_ids(day, pl.Series("event_id", ids)).to_list())
        return found

    def _split(self, frame: pl.DataFrame) -> list[DayFile]:
        """``frame`` (unique ids) cut into one share per UTC day, oldest day first, each
        sorted by time, all bound for files of one new version."""
        version = new_version()
        days = (
            frame.sort("timestamp", maintain_order=True)
            .with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%d").alias("_date"))
            .partition_by("_date", maintain_order=True, include_key=False, as_dict=True)
        )
        return [
            DayFile(str(day), rows, self._partition(str(day)) / f"part-{version}.parquet")
            for (day,), rows in days.items()
        ]

    def _stage(self, shares: list[DayFile]) -> tuple[list[DayFile], _Failure | None]:
        """Create the shares' day directories durably (the root fsynced once for all the new
        ones) and write and fsync each share's temporary file, several at once. No lock is
        needed: nothing is visible until it is renamed.

        Returns:
            The shares staged before the first failure, and that failure (None: all were).
        """
        try:
            if not self.root.is_dir():
                self.root.mkdir(parents=True, exist_ok=True)
                fsync(self.root.parent)
        except OSError as exc:
            return [], (self.root, exc)
        created = any(not share.target.parent.is_dir() for share in shares)
        ready, failure = shares, None
        for n, error in enumerate(on_each(DayFile.stage, shares)):
            if error is not None:
                ready, failure = shares[:n], (shares[n].target.parent, error)
                break
        try:
            if created and ready:  # the new days' directory entries
                fsync(self.root)
        except OSError as exc:
            return [], (self.root, exc)
        return ready, failure

    def _commit_staged(self, staged: list[DayFile]) -> tuple[list[DayFile], _Failure | None]:
        """Under the append lock: drop the rows already in the log, rename each staged file
        into place and fsync the directories, several at once.

        Returns:
            The shares now durable (not those whose rows were all in the log already), and
            the first failure.
        """
        failure: _Failure | None = None
        renamed: list[DayFile] = []
        for share in staged:
            try:
                ids = share.rows.get_column("event_id")
                seen = self._existing_ids(share.date, ids)
                if seen.len():  # re-sent events: rewrite the file without them (rare)
                    share.rows = share.rows.filter(~pl.col("event_id").is_in(seen.implode()))
                    share.discard()
                    if share.rows.is_empty():
                        continue
                    share.stage()
                os.replace(tmp_name(share.target), share.target)
            except OSError as exc:
                failure = (share.target.parent, exc)
                break
            renamed.append(share)
        stored: list[DayFile] = []
        synced = on_each(lambda s: fsync(s.target.parent), renamed)
        for share, error in zip(renamed, synced, strict=True):
            if error is not None:
                failure = failure or (share.target.parent, error)
                continue
            self._indexed(share.date, share.target.name, share.rows.get_column("event_id"))
            stored.append(share)
        return stored, failure

    def compact(self, before: date | None = None) -> CompactResult:
        """Rewrite every partition of several files into one file (the service writes one file
        per ``POST /events`` request: at 20 requests/s about 1.7M files a day, which every
        reader of the log then opens).

        One compaction runs at a time, one partition at a time, and appends go on meanwhile,
        to any day: a partition's files are merged (one row per ``event_id``, sorted by time)
        into a new file written durably like an append; files appended meanwhile are left as
        they are. Then, once no reader holds :meth:`reading` (``feedforge build``, publish,
        evaluate and batch-score do while they read), the merged files are removed under the
        append lock, a batch at a time (an append waits for one batch of removals at most),
        and the directory is fsynced; readers and appends that look meanwhile see both, which
        :meth:`scan` and the duplicate check handle. A crash in between leaves both as well (the
        next compaction drops the duplicates; no event is lost). A reader that never lets go
        holds the compaction up, not the appends.
        The merge is one polars query written with ``sink_parquet``; its sort needs a whole
        day, so memory grows with the largest.

        Args:
            before: Only partitions dated before this day (default: every partition).
                ``feedforge compact`` passes today's UTC date, so the open day is left alone.

        Raises:
            feedforge.errors.EventLogError: a partition could not be rewritten: it keeps its
                files (plus the merged one if the failure came while removing them, which
                reads de-duplicate); the partitions before it stay compacted.
        """
        if not self.root.is_dir():
            return CompactResult(0, 0, 0, 0)
        with self._locked(_COMPACT_LOCK):
            return self._compact(before)

    def _compact(self, before: date | None) -> CompactResult:
        partitions = files_before = files_after = events = 0
        for directory in sorted(self.root.glob("date=*")):
            day = directory.name.removeprefix("date=")
            if before is not None and day >= before.isoformat():
                continue
            try:
                # No lock for the merge: committed files never change and appends only add
                # files, which this compaction neither merges nor removes.
                files = sorted(directory.glob("*.parquet"))
                if len(files) <= 1:
                    continue
                target = directory / f"part-{new_version()}.parquet"
                merged = (
                    pl.scan_parquet(files, hive_partitioning=False, schema=EVENT_SCHEMA)
                    .unique(subset="event_id", keep="any")
                    .sort("timestamp")
                )
                commit(target, partial(merged.sink_parquet, compression="zstd", statistics=True))
                self._remove(directory, files)
                rows = pl.scan_parquet(target).select(pl.len()).collect().item()
            except OSError as exc:
                raise EventLogError(
                    directory,
                    exc.strerror or str(exc),
                    f"this day was not compacted (its files are as they were, or merged with "
                    f"duplicates that reads drop); {partitions} day(s) before it were",
                ) from exc
            partitions += 1
            files_before += len(files)
            files_after += 1
            events += int(rows)
        return CompactResult(partitions, files_before, files_after, events)

    def _remove(self, directory: Path, files: list[Path]) -> None:
        """Remove a compacted day's old files, then fsync its directory.

        Once no reader holds :meth:`reading` (a reader may have listed them), and
        :data:`UNLINK_BATCH` files at a time under the append lock (an append lists a day's
        files, then reads those it has not seen). Locks are taken in this order only (appends
        never take the read lock), so they cannot deadlock.
        """
        with self._locked(_READ_LOCK):
            for start in range(0, len(files), UNLINK_BATCH):
                with self._locked():
                    for old in files[start : start + UNLINK_BATCH]:
                        old.unlink(missing_ok=True)
            fsync(directory)

    def files(self) -> list[Path]:
        """All committed Parquet files of the log, oldest partition first."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob("date=*/*.parquet"))

    def scan(self) -> pl.LazyFrame:
        """A lazy frame over the files the log has now, with the :data:`EVENT_SCHEMA` columns.

        Rows are unique on ``event_id`` (a safety net; appends already de-duplicate, and a
        compaction leaves a day's old and merged files side by side for a while). Collect it
        inside :meth:`reading`, or a compaction may remove a file before it is read.
        """
        files = self.files()
        if not files:
            return pl.LazyFrame(schema=EVENT_SCHEMA)
        return pl.scan_parquet(files, hive_partitioning=False, schema=EVENT_SCHEMA).unique(
            subset="event_id", keep="first"
        )

    def count(self) -> int:
        """Number of events in the log."""
        with self.reading():
            return int(self.scan().select(pl.len()).collect().item())
