"""The item catalog and the user table: versioned Parquet files beside the event log.

Items added, changed or withdrawn after the catalog was written (``POST /items``,
``DELETE /items/{id}``) are appended as **item updates**: one Parquet file per request under
``raw/catalog/item-updates/``, written to a temporary file, fsynced and renamed into place
(:func:`append_item_updates`). :func:`read_catalog` applies them: the newest update of an
item (by ``updated_at``, then file order) replaces its catalog row, and an item whose newest
update says ``available: false`` leaves the catalog (:func:`unavailable_items` names them, so
a publish drops them from what it serves even when the retrieval model learned them).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from feedforge.artifacts import Manifest, read_manifest, require_file, write_manifest
from feedforge.errors import ArtifactError
from feedforge.events.durable import commit
from feedforge.events.schema import ITEM_SCHEMA, USER_SCHEMA, UTC_US, conform
from feedforge.workdir import Workdir

CATALOG_ARTIFACT = "catalog"
CATALOG_SCHEMA_VERSION = 1
ITEM_UPDATES_DIR = "item-updates"
ITEM_UPDATE_SCHEMA: dict[str, pl.DataType] = {
    **ITEM_SCHEMA,
    "available": pl.Boolean(),
    "updated_at": UTC_US,
}
"""An item update: the catalog row, whether the item may be served, and when it changed."""


def write_catalog(
    workdir: Workdir,
    items: pl.DataFrame,
    users: pl.DataFrame,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Validate and write the catalog (items and users) of a work directory.

    Raises:
        feedforge.errors.ValidationError: a table misses a column, has a wrong type or repeats
            an id.
    """
    from feedforge.errors import ValidationError

    items = conform(items, ITEM_SCHEMA, ("item_id", "title", "created_at"), "items")
    users = conform(users, USER_SCHEMA, ("user_id",), "users")
    for name, frame, key in (("items", items, "item_id"), ("users", users, "user_id")):
        dupes = frame.height - frame.get_column(key).n_unique()
        if dupes:
            raise ValidationError(f"{name}: {dupes} duplicate {key} value(s)")
    directory = workdir.catalog_dir
    directory.mkdir(parents=True, exist_ok=True)
    items.write_parquet(workdir.items_path, compression="zstd")
    users.write_parquet(workdir.users_path, compression="zstd")
    return write_manifest(
        directory,
        Manifest(
            artifact=CATALOG_ARTIFACT,
            schema_version=CATALOG_SCHEMA_VERSION,
            counts={"items": items.height, "users": users.height},
            extra=extra or {},
        ),
    )


def read_catalog(workdir: Workdir) -> tuple[Manifest, pl.DataFrame, pl.DataFrame]:
    """Read the catalog's manifest, items and users.

    Raises:
        feedforge.errors.ArtifactError: the catalog is missing or corrupt.
    """
    command = workdir.command("simulate")
    manifest = read_manifest(
        workdir.catalog_dir, CATALOG_ARTIFACT, (CATALOG_SCHEMA_VERSION,), command
    )
    items = _read_table(workdir.items_path, "item catalog", command)
    users = _read_table(workdir.users_path, "user table", command)
    updates = read_item_updates(workdir)
    if updates.height:
        latest = updates.unique(subset="item_id", keep="last", maintain_order=True)
        kept = latest.filter(pl.col("available")).select(items.columns)
        items = pl.concat(
            [items.filter(~pl.col("item_id").is_in(latest.get_column("item_id").implode())), kept],
            how="vertical_relaxed",
        )
    return manifest, items, users


def updates_dir(workdir: Workdir) -> Path:
    return workdir.catalog_dir / ITEM_UPDATES_DIR


def append_item_updates(workdir: Workdir, updates: pl.DataFrame) -> Path:
    """Append item updates durably (one new file; see the module docs).

    Raises:
        feedforge.errors.ValidationError: a column is missing or of the wrong type.
        OSError: the file could not be written (nothing was appended).
    """
    frame = conform(updates, ITEM_UPDATE_SCHEMA, ("item_id", "available", "updated_at"), "items")
    directory = updates_dir(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = directory / f"part-{stamp}-{secrets.token_hex(4)}.parquet"
    commit(path, lambda tmp: frame.write_parquet(tmp, compression="zstd"))
    return path


def read_item_updates(workdir: Workdir) -> pl.DataFrame:
    """Every item update, oldest first (by ``updated_at``, then file order).

    Raises:
        feedforge.errors.ArtifactError: an update file is corrupt (the message names it).
    """
    directory = updates_dir(workdir)
    files = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
    frames = [_read_table(path, "item update file", "POST /items") for path in files]
    if not frames:
        return pl.DataFrame(schema=ITEM_UPDATE_SCHEMA)
    return pl.concat(frames, how="vertical_relaxed").sort("updated_at", maintain_order=True)


def unavailable_items(workdir: Workdir) -> set[str]:
    """Items whose newest update withdrew them from the catalog."""
    updates = read_item_updates(workdir)
    if not updates.height:
        return set()
    latest = updates.unique(subset="item_id", keep="last", maintain_order=True)
    return set(latest.filter(~pl.col("available")).get_column("item_id").to_list())


def _read_table(path: Path, what: str, command: str) -> pl.DataFrame:
    try:
        return pl.read_parquet(require_file(path, what, command))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ArtifactError(path, f"corrupt {what} ({exc})", command) from exc
