"""The item catalog and the user table: versioned Parquet files beside the event log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from feedforge.artifacts import Manifest, read_manifest, require_file, write_manifest
from feedforge.errors import ArtifactError
from feedforge.events.schema import ITEM_SCHEMA, USER_SCHEMA, conform
from feedforge.workdir import Workdir

CATALOG_ARTIFACT = "catalog"
CATALOG_SCHEMA_VERSION = 1


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
    return manifest, items, users


def _read_table(path: Path, what: str, command: str) -> pl.DataFrame:
    try:
        return pl.read_parquet(require_file(path, what, command))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ArtifactError(path, f"corrupt {what} ({exc})", command) from exc
