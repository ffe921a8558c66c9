"""What every dataset reader returns: validated interactions plus optional item and user files."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from feedforge.errors import ValidationError
from feedforge.events.schema import UTC_US

ID = None
"""The dtype of ids in parsed frames: kept as read, Int64 (MovieLens) or String (the others).
Integer ids stay numbers until the catalog and the events are written, which makes grouping
and sorting 25M rows several times faster; they are written in decimal form."""

INTERACTIONS: dict[str, pl.DataType | None] = {
    "user_id": ID,
    "item_id": ID,
    "timestamp": UTC_US,
    "value": pl.Float64(),
}
"""Columns of :attr:`Parsed.interactions` (``value`` is null for implicit interactions)."""

ITEMS: dict[str, pl.DataType | None] = {
    "item_id": ID,
    "title": pl.String(),
    "categories": pl.List(pl.String()),
    "released": UTC_US,
}
"""Columns of :attr:`Parsed.items` (``released`` is null where the source has no date)."""

USERS: dict[str, pl.DataType | None] = {"user_id": ID, "age_bucket": pl.String()}
"""Columns of :attr:`Parsed.users`."""

SYNTHETIC_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
"""Synthesised timestamps are this instant plus the line number in seconds."""


@dataclass(frozen=True)
class Parsed:
    """A source read and validated, before conversion into events and a catalog.

    Attributes:
        interactions: One row per input row, in file order (:data:`INTERACTIONS`).
        files: The files read.
        items: The source's item file (:data:`ITEMS`), if it has one.
        users: The source's user file (:data:`USERS`), if it has one.
        explicit: Rows carry ratings (``rating`` events) rather than plain interactions
            (``click`` events).
        synthetic_time: Timestamps were synthesised from line order.
    """

    interactions: pl.DataFrame
    files: tuple[Path, ...]
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    explicit: bool = True
    synthetic_time: bool = False


def typed(frame: pl.DataFrame, schema: dict[str, pl.DataType | None]) -> pl.DataFrame:
    """``frame`` reduced to ``schema``'s columns, cast to its types (ids keep theirs)."""
    return frame.select(
        pl.col(name) if dtype is None else pl.col(name).cast(dtype)
        for name, dtype in schema.items()
    )


def empty(schema: dict[str, pl.DataType | None], ids: pl.DataType) -> pl.DataFrame:
    """An empty frame of ``schema`` whose ids are of type ``ids``."""
    return pl.DataFrame(schema={n: ids if d is None else d for n, d in schema.items()})


def dataset_file(directory: Path, name: str, source: str, layout: str) -> Path:
    """``directory / name``, or an error naming the missing file and the expected layout."""
    path = directory / name
    if not path.is_file():
        raise ValidationError(
            f"{source}: missing {name} in {directory}; expected the {source} layout: {layout}",
            path=str(path),
        )
    return path
