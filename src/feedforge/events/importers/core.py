"""Convert a read dataset into feedforge's own event log and catalog."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from feedforge.errors import DataError, ValidationError
from feedforge.events.catalog import write_catalog
from feedforge.events.importers.fields import MAX_ID
from feedforge.events.importers.generic import SUFFIXES, read_generic
from feedforge.events.importers.movielens import LAYOUTS, read_movielens
from feedforge.events.importers.parsed import ITEMS, USERS, Parsed, empty
from feedforge.events.log import EventLog
from feedforge.events.schema import EventType
from feedforge.events.world import WORLD_FILE
from feedforge.workdir import Workdir

SOURCES: tuple[str, ...] = (*LAYOUTS, *SUFFIXES)
"""Every source :func:`import_dataset` reads."""

CHUNK_ROWS = 2_000_000
"""Events per append (chunks end at a UTC date boundary, so each date gets one file)."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_dataset` read and wrote.

    Attributes:
        source: The source name, e.g. ``"ml-100k"``.
        path: The file or directory read.
        rows_read: Data rows read from the interaction file(s).
        events_written: Events appended to the log (``rows_read - duplicates``).
        duplicates: Exact duplicate rows (same user, item, timestamp and rating) dropped.
        users: Distinct users with at least one event.
        items: Distinct items with at least one event.
        catalog_users: Rows of the user table (users of the user file without events too).
        catalog_items: Rows of the item catalog (items of the item file without events too).
        event_type: ``"rating"`` (explicit ratings) or ``"click"`` (implicit interactions).
        synthetic_timestamps: Timestamps were synthesised from line order.
        seconds: Wall-clock duration of the import.
    """

    source: str
    path: Path
    rows_read: int
    events_written: int
    duplicates: int
    users: int
    items: int
    catalog_users: int
    catalog_items: int
    event_type: str
    synthetic_timestamps: bool
    seconds: float


class Catalog(NamedTuple):
    """The item and user tables, and how many of each have events."""

    items: pl.DataFrame
    users: pl.DataFrame
    n_items: int
    n_users: int


def _as_text_ids(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Sorted by id (numerically for integer ids), with the ids as text."""
    if frame.schema[column].is_integer():
        return frame.sort(column).with_columns(pl.col(column).cast(pl.String))
    return frame.sort(pl.col(column).str.len_chars(), column)


def build_catalog(parsed: Parsed) -> Catalog:
    """The item and user tables of a parsed source.

    Every item of the item file or of the interactions gets a row (an item missing from the
    item file is titled ``unknown <id>``, without categories). ``created_at`` is the earliest
    of the release date and the first interaction (an item is in the catalog when someone
    rates it, even if its official release is later), else the last interaction of the whole
    source for an item nobody interacted with. A user's ``created_at`` is their first
    interaction (null for a user of the user file without any).
    """
    events = parsed.interactions
    end = events.get_column("timestamp").max()
    first_item = events.group_by("item_id").agg(pl.col("timestamp").min().alias("first_seen"))
    items = parsed.items
    if items is None:
        items = empty(ITEMS, events.schema["item_id"])
    items = _as_text_ids(
        items.join(first_item, on="item_id", how="full", coalesce=True).select(
            "item_id",
            pl.col("title").fill_null(pl.lit("unknown ") + pl.col("item_id").cast(pl.String)),
            pl.col("categories").fill_null(pl.lit([], dtype=pl.List(pl.String()))),
            pl.min_horizontal("released", "first_seen").fill_null(end).alias("created_at"),
            pl.lit(None, dtype=pl.Float64).alias("duration_seconds"),
            pl.lit(None, dtype=pl.Float64).alias("price"),
        ),
        "item_id",
    )
    first_user = events.group_by("user_id").agg(pl.col("timestamp").min().alias("created_at"))
    users = parsed.users
    if users is None:
        users = empty(USERS, events.schema["user_id"])
    users = _as_text_ids(
        users.join(first_user, on="user_id", how="full", coalesce=True).select(
            "user_id",
            "created_at",
            pl.lit(None, dtype=pl.String).alias("country"),
            "age_bucket",
        ),
        "user_id",
    )
    return Catalog(items, users, first_item.height, first_user.height)


def _timestamp_text() -> pl.Expr:
    """Unix seconds as text, with a microsecond fraction only when there is one."""
    micros = pl.col("timestamp").dt.epoch("us")
    size = micros.abs()
    seconds, fraction = size // 1_000_000, size % 1_000_000
    text = (
        pl.when(fraction == 0)
        .then(seconds.cast(pl.String))
        .otherwise(pl.format("{}.{}", seconds, fraction.cast(pl.String).str.zfill(6)))
    )
    return pl.when(micros < 0).then(pl.lit("-") + text).otherwise(text)


def to_events(interactions: pl.DataFrame, source: str, explicit: bool) -> pl.DataFrame:
    """Interactions as event-log rows with content-derived ``event_id`` values.

    ``event_id`` is ``source:user:item:unix_seconds[:rating]``, so exact duplicate rows share an
    id and the log stores them once. An id longer than the log's 128 characters is replaced by
    ``source:sha256:<hex digest of the long id>``.
    """
    user, item = pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String)
    parts = [pl.lit(source), user, item, _timestamp_text()]
    if explicit:
        parts.append(pl.col("value").cast(pl.String))
    kind = EventType.RATING if explicit else EventType.CLICK
    frame = interactions.select(
        pl.concat_str(parts, separator=":").alias("event_id"),
        "timestamp",
        user,
        item,
        pl.lit(kind.value).alias("event_type"),
        pl.col("value") if explicit else pl.lit(None, dtype=pl.Float64).alias("value"),
    )
    ids = frame.get_column("event_id")
    long = (ids.str.len_chars() > MAX_ID).arg_true()
    if long.len():
        # Only pathological ids get here, so a Python loop over them is fine.
        digests = [
            f"{source}:sha256:{hashlib.sha256(v.encode()).hexdigest()}"
            for v in ids.gather(long).to_list()
        ]
        frame = frame.with_columns(ids.scatter(long, digests))
    return frame


def _date_chunks(timestamps: pl.Series, rows: int) -> list[tuple[int, int]]:
    """``(offset, length)`` slices of a sorted timestamp column, about ``rows`` long, that
    never split a UTC date (so one append writes each date partition once)."""
    n = timestamps.len()
    days = timestamps.dt.date().cast(pl.Int32).to_numpy()
    starts = np.flatnonzero(np.diff(days)) + 1
    at = np.searchsorted(starts, np.arange(rows, n, rows))
    bounds = [0, *(int(c) for c in np.unique(starts[at[at < len(starts)]])), n]
    return [(lo, hi - lo) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def _read(source: str, path: Path) -> Parsed:
    if source in LAYOUTS:
        return read_movielens(source, path)
    if source in SUFFIXES:
        return read_generic(source, path)
    raise ValidationError(f"unknown dataset source {source!r}; expected one of {list(SOURCES)}")


def import_dataset(
    source: str,
    path: Path | str,
    workdir: Workdir,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import a real dataset into a work directory's event log and catalog.

    Every input row becomes one event: a ``rating`` event with ``value`` = the rating where
    the source has ratings, else a ``click`` event (an implicit interaction). Exact duplicate
    rows are stored once and counted. The whole source is read and validated before anything
    is written; then the events are appended (in date-aligned chunks) and the catalog is
    written last, so a catalog manifest marks a complete import.

    Args:
        source: One of :data:`SOURCES` (``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``,
            ``ml-25m``, ``ml-latest``, ``ml-latest-small``, ``csv``, ``parquet``,
            ``user-item-text``).
        path: The dataset directory (MovieLens), or a file or directory (the others).
        workdir: The work directory to fill.
        overwrite: Delete ``workdir/raw`` (catalog and event log) first.
        progress: Called with a short message at each step.

    Returns:
        Counts of what was read and written.

    Raises:
        ValidationError: unknown source, missing file, or a malformed file (the message names
            the file, the line and what was expected there).
        DataError: the work directory already holds an event log and ``overwrite`` is false.
    """
    began = time.perf_counter()
    say = progress or (lambda _msg: None)
    path = Path(path)
    log = EventLog(workdir.events_dir)
    if log.files() and not overwrite:
        raise DataError(
            f"{workdir.events_dir} already holds an event log; import into a fresh "
            "--workdir (or overwrite it)",
            path=str(workdir.events_dir),
        )
    say(f"reading {source} from {path}")
    parsed = _read(source, path)
    if overwrite and (workdir.root / "raw").exists():
        shutil.rmtree(workdir.root / "raw")
    # A simulator world describes a catalog this import replaces.
    (workdir.catalog_dir / WORLD_FILE).unlink(missing_ok=True)

    interactions = parsed.interactions.sort("timestamp", maintain_order=True)
    rows = interactions.height
    written = duplicates = 0
    for offset, length in _date_chunks(interactions.get_column("timestamp"), CHUNK_ROWS):
        chunk = to_events(interactions.slice(offset, length), source, parsed.explicit)
        result = log.append(chunk, where=f"{source} import of {path}")
        written += result.written
        duplicates += result.duplicates
        say(f"wrote {offset + length:,}/{rows:,} events")

    say("writing the catalog")
    items, users, n_items, n_users = build_catalog(parsed)
    event_type = (EventType.RATING if parsed.explicit else EventType.CLICK).value
    write_catalog(
        workdir,
        items,
        users,
        extra={
            "source": source,
            "path": str(path.resolve()),
            "files": [str(f.resolve()) for f in parsed.files],
            "event_type": event_type,
            "synthetic_timestamps": parsed.synthetic_time,
            "import_counts": {
                "rows_read": rows,
                "events_written": written,
                "duplicates": duplicates,
                "users": n_users,
                "items": n_items,
            },
        },
    )
    return ImportSummary(
        source=source,
        path=path,
        rows_read=rows,
        events_written=written,
        duplicates=duplicates,
        users=n_users,
        items=n_items,
        catalog_users=users.height,
        catalog_items=items.height,
        event_type=event_type,
        synthetic_timestamps=parsed.synthetic_time,
        seconds=time.perf_counter() - began,
    )
