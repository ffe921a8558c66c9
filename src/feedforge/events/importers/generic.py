"""Readers of generic interaction files: CSV, Parquet and the ``user item`` text format.

* ``csv`` / ``parquet``: a table with a user and an item column and optional rating and
  timestamp columns. Column names are matched case-insensitively: ``user``/``user_id``/
  ``userId``, ``item``/``item_id``/``itemId``/``movieId``, ``rating``, ``timestamp``; other
  columns are ignored. Ids are strings or integers (1 to 128 characters). Timestamps are unix
  seconds (numbers, or strings of digits) or ISO 8601 (an offset or ``Z``; naive means UTC).
  CSV files are UTF-8 with a header line.
* ``user-item-text``: the sequential-recommendation formats, UTF-8, whitespace-separated:
  one ``user item`` pair per line, each user's lines in time order (SASRec's files), or one
  user per line, ``user item1 item2 ...`` in time order (S3-Rec's files); a file with any
  line of more than two fields is read as the latter. An item attribute file beside it,
  ``<name>_item2attributes.json`` (``{"item id": [attribute ids...]}``, S3-Rec's), becomes
  the catalog's categories (attribute ids as text, the first one primary).

Without a timestamp column (always, for ``user-item-text``), timestamps are synthesised as
:data:`~feedforge.events.importers.parsed.SYNTHETIC_EPOCH` plus the line (or row) number in
seconds, so line order is time order. Without a rating column, rows are implicit interactions.
The path may be a file or a directory; a directory's ``*.csv`` / ``*.parquet`` files are read
in name order as one table (``user-item-text`` takes a single file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from feedforge.errors import ValidationError
from feedforge.events.importers.fields import (
    MAX_ID,
    id_rule,
    number_rule,
    parse_timestamp,
    timestamp_rule,
)
from feedforge.events.importers.parsed import (
    INTERACTIONS,
    ITEMS,
    SYNTHETIC_EPOCH,
    Parsed,
    typed,
)
from feedforge.events.importers.text import (
    LINE,
    Origin,
    Rule,
    TextFile,
    bad_input,
    collect,
    csv_diagnosis,
    scan_csv,
    validated,
)
from feedforge.events.schema import quote

COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "user_id": ("user", "user_id", "userid"),
    "item_id": ("item", "item_id", "itemid", "movieid"),
    "value": ("rating",),
    "timestamp": ("timestamp",),
}
"""The accepted (lower-cased) column names of each role in generic tables."""

SUFFIXES = {"csv": (".csv",), "parquet": (".parquet", ".parq"), "user-item-text": (".txt",)}


@dataclass(frozen=True)
class ParquetFile:
    """A Parquet file, for error messages (rows are numbered from 1)."""

    path: Path
    unit: str = "row"

    def quote(self, number: int) -> str | None:
        try:
            row = pl.scan_parquet(self.path).slice(number - 1, 1).collect()
        except pl.exceptions.PolarsError:
            return None
        return str(row.row(0, named=True)) if row.height else None


def _files(source: str, path: Path) -> list[Path]:
    suffixes = SUFFIXES[source]
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValidationError(f"{source}: {path} does not exist", path=str(path))
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValidationError(
            f"{source}: {path} holds no {' or '.join(suffixes)} file; pass the file itself or "
            f"a directory of {'/'.join(suffixes)} files",
            path=str(path),
        )
    if source == "user-item-text" and len(files) > 1:
        raise ValidationError(
            f"{source}: {path} holds {len(files)} .txt files and their relative order is "
            "unknown; pass the file itself",
            path=str(path),
        )
    return files


def _roles(origin: Origin, header: list[str]) -> dict[str, str]:
    """Role -> column name, from the header (``user_id``/``item_id`` required)."""
    roles: dict[str, str] = {}
    for role, names in COLUMN_NAMES.items():
        matches = [c for c in header if c.strip().lower() in names]
        if len(matches) > 1:
            raise ValidationError(
                f"{origin.path}: columns {matches} all name the {role} column; keep one",
                path=str(origin.path),
            )
        if matches:
            roles[role] = matches[0]
    missing = [COLUMN_NAMES[r][0] for r in ("user_id", "item_id") if r not in roles]
    if missing:
        expected = (
            f"a user column ({'/'.join(COLUMN_NAMES['user_id'])}) and an item column "
            f"({'/'.join(COLUMN_NAMES['item_id'])}), optionally rating and timestamp"
        )
        if isinstance(origin, TextFile):
            raise bad_input(origin, 1, f"a comma-separated header with {expected}")
        raise ValidationError(
            f"{origin.path}: found columns {header}; expected {expected}", path=str(origin.path)
        )
    return roles


def _id(column: str, dtype: pl.DataType, origin: Origin) -> pl.Expr:
    if dtype.is_integer():
        return pl.col(column).cast(pl.String)
    if dtype in (pl.String, pl.Categorical, pl.Enum):
        return pl.col(column).cast(pl.String).str.strip_chars()
    raise ValidationError(
        f"{origin.path}: column {column!r} has type {dtype}; expected string or integer ids",
        path=str(origin.path),
    )


def _rating(column: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_numeric():
        return pl.col(column).cast(pl.Float64)
    return pl.col(column).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def _table(
    origin: Origin,
    rows: pl.LazyFrame,
    schema: pl.Schema,
    roles: dict[str, str],
    offset: int,
    diagnose: Callable[[], None] | None = None,
) -> pl.DataFrame:
    """Interactions of one table; synthetic timestamps count on from ``offset`` seconds."""
    user = _id(roles["user_id"], schema[roles["user_id"]], origin)
    item = _id(roles["item_id"], schema[roles["item_id"]], origin)
    outputs = {"user_id": user, "item_id": item}
    rules = [
        id_rule(user, f"a user id (1 to {MAX_ID} characters) in column {roles['user_id']!r}"),
        id_rule(item, f"an item id (1 to {MAX_ID} characters) in column {roles['item_id']!r}"),
    ]
    if "value" in roles:
        rating = _rating(roles["value"], schema[roles["value"]])
        outputs["value"] = rating
        rules.append(number_rule(rating, f"a numeric rating in column {roles['value']!r}"))
    else:
        outputs["value"] = pl.lit(None, dtype=pl.Float64)
    if "timestamp" in roles:
        stamp = parse_timestamp(roles["timestamp"], schema[roles["timestamp"]])
        outputs["timestamp"] = stamp
        rules += timestamp_rule(
            stamp,
            f"a unix timestamp in seconds or an ISO 8601 time in column {roles['timestamp']!r}",
        )
    else:
        outputs["timestamp"] = _synthetic(offset)
    described = f"{origin.unit}s with {', '.join(roles.values())}"
    return validated(origin, rows, outputs, rules, diagnose, expected=described)


def _synthetic(offset: int) -> pl.Expr:
    seconds = pl.col(LINE).cast(pl.Int64) + offset
    return pl.lit(SYNTHETIC_EPOCH) + pl.duration(seconds=seconds)


def _csv(path: Path, offset: int) -> tuple[pl.DataFrame, dict[str, str]]:
    text = TextFile.utf8(path)
    rows, header = scan_csv(text, expected="a header line naming user and item columns, and rows")
    roles = _roles(text, header)
    schema = pl.Schema({name: pl.String() for name in header})
    diagnose = csv_diagnosis(text, len(header))
    return _table(text, rows, schema, roles, offset, diagnose), roles


def _parquet(path: Path, offset: int) -> tuple[pl.DataFrame, dict[str, str]]:
    origin = ParquetFile(path)
    scan = pl.scan_parquet(path)
    schema = collect(origin, scan.head(0), expected="a Parquet table").schema
    roles = _roles(origin, list(schema.names()))
    return _table(origin, scan.with_row_index(LINE, offset=1), schema, roles, offset), roles


def _text(path: Path) -> pl.DataFrame:
    """Either sequential text format (see the module docs): pairs when no line holds more than
    two fields, else one user per line."""
    text = TextFile.utf8(path)
    lines = text.lines().filter(pl.col("text").str.strip_chars().str.len_bytes() > 0)
    fields = pl.col("text").str.extract_all(r"\S+")
    widest = collect(
        text, lines.select(fields.list.len().max()), expected="lines of 'user item'"
    ).item()
    if widest is not None and widest > 2:
        return _sequences(text, lines.select(LINE, fields.alias("_fields")))
    pair = pl.col("text").str.extract_groups(r"^\s*(\S+)\s+(\S+)\s*$")
    rows = lines.select(LINE, pair.struct.rename_fields(["user", "item"]).alias("_pair")).unnest(
        "_pair"
    )
    user, item = pl.col("user"), pl.col("item")
    return validated(
        text,
        rows,
        {
            "user_id": user,
            "item_id": item,
            "timestamp": _synthetic(0),
            "value": pl.lit(None, dtype=pl.Float64),
        },
        [
            Rule(user.is_null() | item.is_null(), "two whitespace-separated fields: user item"),
            id_rule(user, f"a user id of at most {MAX_ID} characters in field 1"),
            id_rule(item, f"an item id of at most {MAX_ID} characters in field 2"),
        ],
        expected="lines of 'user item'",
    )


def _sequences(text: TextFile, lines: pl.LazyFrame) -> pl.DataFrame:
    """``user item1 item2 ...`` lines (S3-Rec's files): one row per item, in line order, each
    reported by its user's line; synthesised times follow the items' order."""
    rows = (
        lines.select(
            LINE,
            pl.col("_fields").list.first().alias("user"),
            pl.col("_fields").list.slice(1).alias("item"),
        )
        .explode("item", empty_as_null=True)  # a user without items: a null, reported
        .with_row_index("_order", offset=1)
    )
    user, item = pl.col("user"), pl.col("item")
    order = pl.col("_order").cast(pl.Int64)
    return validated(
        text,
        rows,
        {
            "user_id": user,
            "item_id": item,
            "timestamp": pl.lit(SYNTHETIC_EPOCH) + pl.duration(seconds=order),
            "value": pl.lit(None, dtype=pl.Float64),
        },
        [
            Rule(item.is_null(), "a user id followed by their items: user item1 item2 ..."),
            id_rule(user, f"a user id of at most {MAX_ID} characters in field 1"),
            id_rule(item, f"item ids of at most {MAX_ID} characters after the user id"),
        ],
        expected="lines of 'user item1 item2 ...'",
    )


ATTRIBUTES_SUFFIX = "_item2attributes.json"
"""The item attribute file beside a sequential text file (S3-Rec's layout):
``<name>.txt`` and ``<name>_item2attributes.json``."""


def read_item_attributes(path: Path) -> pl.DataFrame:
    """An ``{"item id": [attribute ids...]}`` JSON file as items (:data:`ITEMS`) whose
    categories are the attribute ids, as text, in the file's order (the first is the
    primary category).

    Raises:
        ValidationError: the file is not such an object (the message names the item).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(
            f"{path}: cannot be read as JSON ({exc}); expected an object of item id -> list "
            "of attribute ids",
            path=str(path),
        ) from exc
    if not isinstance(data, dict):
        raise ValidationError(
            f"{path}: holds a JSON {type(data).__name__}; expected an object of item id -> "
            "list of attribute ids",
            path=str(path),
        )
    items: list[str] = []
    categories: list[list[str]] = []
    for key, value in data.items():
        if not key.strip() or len(key) > MAX_ID:
            raise ValidationError(
                f"{path}: item id {quote(key)!r} is not 1 to {MAX_ID} characters",
                path=str(path),
            )
        if not isinstance(value, list) or not all(
            isinstance(v, int | str) and not isinstance(v, bool) and str(v).strip() for v in value
        ):
            raise ValidationError(
                f"{path}: item {quote(key)!r}: expected a list of attribute ids (numbers or "
                f"strings), got {quote(json.dumps(value))}",
                path=str(path),
            )
        items.append(key)
        categories.append([str(v) for v in value])
    return pl.DataFrame(
        {
            "item_id": items,
            "title": [None] * len(items),
            "categories": categories,
            "released": [None] * len(items),
        },
        schema={"item_id": pl.String(), **{k: v for k, v in ITEMS.items() if v is not None}},
    )


def read_generic(source: str, path: Path) -> Parsed:
    """Read and validate a ``csv``, ``parquet`` or ``user-item-text`` source.

    Raises:
        ValidationError: no file found, or a file is malformed (the message names the file and
            the line or row).
    """
    files = _files(source, path)
    if source == "user-item-text":
        frame = _text(files[0])
        attributes = files[0].with_name(files[0].stem + ATTRIBUTES_SUFFIX)
        items = read_item_attributes(attributes) if attributes.is_file() else None
        sources = (*files, attributes) if items is not None else tuple(files)
        return Parsed(
            typed(frame, INTERACTIONS), sources, items=items, explicit=False, synthetic_time=True
        )
    read = _csv if source == "csv" else _parquet
    frames: list[pl.DataFrame] = []
    kinds: list[set[str]] = []
    offset = 0
    for file in files:
        frame, roles = read(file, offset)
        kinds.append(set(roles))
        if kinds[-1] != kinds[0]:
            raise ValidationError(
                f"{file}: has columns for {sorted(kinds[-1])} but {files[0]} for "
                f"{sorted(kinds[0])}; all files must have the same kinds of columns",
                path=str(file),
            )
        offset += int(frame.select(pl.col(LINE).max()).item() or 0)
        frames.append(typed(frame, INTERACTIONS))
    kind = kinds[0]
    return Parsed(
        pl.concat(frames, how="vertical"),
        tuple(files),
        explicit="value" in kind,
        synthetic_time="timestamp" not in kind,
    )
