"""Field parsers of the importers: polars expressions that read ids, numbers and timestamps,
and the :class:`~feedforge.events.importers.text.Rule` objects that check them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from feedforge.events.importers.text import Rule
from feedforge.events.schema import UTC_US

MAX_ID = 128
"""The longest user or item id an event may carry (see :class:`~feedforge.events.schema.Event`)."""


def int_id(column: str) -> pl.Expr:
    """An integer id read from a String column (Int64; null where it is not one)."""
    return pl.col(column).str.strip_chars().cast(pl.Int64, strict=False)


def present_rule(expr: pl.Expr, expected: str) -> Rule:
    return Rule(expr.is_null(), expected)


def id_rule(expr: pl.Expr, expected: str) -> Rule:
    length = expr.str.len_chars()
    return Rule(expr.is_null() | (length < 1) | (length > MAX_ID), expected)


def number(column: str) -> pl.Expr:
    """A number read from a String column (null where it is not one)."""
    return pl.col(column).str.strip_chars().cast(pl.Float64, strict=False)


def number_rule(expr: pl.Expr, expected: str) -> Rule:
    return Rule(expr.is_null() | ~expr.is_finite(), expected)


def latest_allowed() -> datetime:
    """Timestamps after this are refused: a day of clock skew, like the event API allows."""
    return datetime.now(UTC) + timedelta(days=1)


def unix_seconds(expr: pl.Expr) -> pl.Expr:
    """Unix seconds (float, possibly fractional) as a UTC timestamp (null stays null)."""
    micros = (expr * 1_000_000).round(0)
    # Out-of-range values would overflow the microsecond integer; they become null (bad).
    safe = pl.when(micros.abs() < 9e18).then(micros).cast(pl.Int64, strict=False)
    return pl.from_epoch(safe, time_unit="us").dt.replace_time_zone("UTC").cast(UTC_US)


def timestamp_rule(expr: pl.Expr, expected: str) -> list[Rule]:
    limit = latest_allowed()
    return [
        Rule(expr.is_null(), expected),
        Rule(
            expr > limit,
            f"{expected}, not after {limit:%Y-%m-%d} (milliseconds instead of seconds?)",
        ),
    ]


_AWARE = ("%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z")


_ZULU = ("%Y-%m-%dT%H:%M:%S%.fZ", "%Y-%m-%d %H:%M:%S%.fZ")


_NAIVE = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


def parse_timestamp(column: str, dtype: pl.DataType) -> pl.Expr:
    """A timestamp column of any dtype as UTC (null where it cannot be read).

    Numbers are unix seconds; strings are unix seconds or ISO 8601 (with an offset or ``Z``,
    or naive, which is taken as UTC); naive datetimes are UTC; dates are midnight UTC.
    """
    col = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return col.dt.replace_time_zone("UTC").cast(UTC_US)
        return col.dt.convert_time_zone("UTC").cast(UTC_US)
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if dtype.is_numeric():
        return unix_seconds(col.cast(pl.Float64))
    text = col.cast(pl.String).str.strip_chars()
    parsed = [unix_seconds(text.cast(pl.Float64, strict=False))]
    parsed += [
        text.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC")
        for f in (*_AWARE, *_ZULU)
    ]
    parsed += [
        text.str.to_datetime(f, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        for f in _NAIVE
    ]
    return pl.coalesce(parsed)


def first_duplicate_rule(key: pl.Expr, expected: str) -> Rule:
    """Bad on the second (and later) occurrence of a key."""
    return Rule(~key.is_first_distinct(), expected)
