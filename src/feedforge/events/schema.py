"""Typed schemas of raw user interactions, the item catalog and users.

Two views of the same schema live here: pydantic models validate single records at the edge
(the API, importers), and polars schemas type whole tables in the event log and the catalog.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import polars as pl
import pydantic
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError


class EventType(StrEnum):
    """Kinds of raw interaction. ``rating`` carries an explicit rating in ``value``."""

    IMPRESSION = "impression"
    CLICK = "click"
    WATCH = "watch"
    LIKE = "like"
    PURCHASE = "purchase"
    SKIP = "skip"
    RATING = "rating"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)

CONSUMED_EVENTS: tuple[str, ...] = ("click", "watch", "like", "purchase", "rating")
"""Event types after which an item counts as consumed by the user: never recommended again,
and part of the user's live history (impressions and skips are not)."""

_PAYLOAD: dict[EventType, str] = {
    EventType.WATCH: "watch_seconds",
    EventType.PURCHASE: "price",
    EventType.RATING: "value",
}
"""The payload field each event type must carry."""

_MISSING_PAYLOAD = "missing_payload"

Id = Annotated[str, Field(min_length=1, max_length=128)]


class EventContext(BaseModel):
    """Where an event happened. All fields are optional."""

    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(max_length=128)] | None = None
    position: Annotated[int, Field(ge=0, le=10_000)] | None = None
    surface: Annotated[str, Field(max_length=64)] | None = None
    device: Annotated[str, Field(max_length=64)] | None = None


class Event(BaseModel):
    """One raw user interaction.

    ``watch`` events need ``watch_seconds`` (>= 0), ``purchase`` events need ``price`` (>= 0)
    and ``rating`` events need ``value``. Timestamps must carry a timezone and are stored in
    UTC.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: Id
    timestamp: AwareDatetime
    user_id: Id
    item_id: Id
    event_type: EventType
    watch_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    price: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None
    context: EventContext | None = None

    @field_validator("timestamp")
    @classmethod
    def _to_utc(cls, ts: datetime) -> datetime:
        return ts.astimezone(UTC)

    @model_validator(mode="after")
    def _required_payload(self) -> Event:
        for kind, name in _PAYLOAD.items():
            if self.event_type is kind and getattr(self, name) is None:
                # A custom error type carries the field name, so batch validation can report
                # ``watch_seconds`` instead of the whole event as the offending field.
                raise PydanticCustomError(
                    _MISSING_PAYLOAD,
                    "{field} is required for a {kind} event",
                    {"field": name, "kind": kind.value},
                )
        return self

    def to_row(self) -> dict[str, Any]:
        """The flat row stored in the event log (see :data:`EVENT_SCHEMA`)."""
        ctx = self.context or EventContext()
        return {
            "event_id": self.event_id,
            "timestamp": self.timestamp,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type.value,
            "watch_seconds": self.watch_seconds,
            "price": self.price,
            "value": self.value,
            "request_id": ctx.request_id,
            "position": ctx.position,
            "surface": ctx.surface,
            "device": ctx.device,
        }


class EventIssue(BaseModel):
    """Why one event of a batch was rejected."""

    index: int
    field: str
    reason: str


_EVENT_ADAPTER = pydantic.TypeAdapter(Event)
_EVENTS_ADAPTER = pydantic.TypeAdapter(list[Event])


def validate_events(
    raw: list[Any],
    *,
    now: datetime | None = None,
    max_future_skew_s: float = 300.0,
) -> tuple[list[Event], list[EventIssue]]:
    """Validate a batch of raw events one by one.

    Args:
        raw: Decoded JSON objects.
        now: The reference time for the future-timestamp check (default: now, UTC).
        max_future_skew_s: How far in the future a timestamp may lie (clock skew).

    Returns:
        The valid events, and one :class:`EventIssue` per rejected event naming its index in
        ``raw``, the field and the reason. Good events are never dropped because of bad ones.
    """
    limit = (now or datetime.now(UTC)) + timedelta(seconds=max_future_skew_s)
    issues: list[EventIssue] = []
    try:  # the common case, a clean batch, in one call into pydantic-core
        valid = list(enumerate(_EVENTS_ADAPTER.validate_python(raw)))
    except pydantic.ValidationError:
        valid = []
        for index, item in enumerate(raw):
            try:
                valid.append((index, _EVENT_ADAPTER.validate_python(item)))
            except pydantic.ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"]) or "<event>"
                    if err["type"] == _MISSING_PAYLOAD:
                        loc = str(err.get("ctx", {}).get("field", loc))
                    issues.append(EventIssue(index=index, field=loc, reason=err["msg"]))
    good: list[Event] = []
    for index, event in valid:
        if event.timestamp > limit:
            issues.append(
                EventIssue(
                    index=index,
                    field="timestamp",
                    reason=f"timestamp {event.timestamp.isoformat()} is in the future "
                    f"(more than {max_future_skew_s:g}s ahead of the server clock)",
                )
            )
            continue
        good.append(event)
    issues.sort(key=lambda issue: issue.index)
    return good, issues


class Item(BaseModel):
    """One catalog item."""

    model_config = ConfigDict(extra="forbid")

    item_id: Id
    title: str
    categories: list[str] = []
    created_at: AwareDatetime
    duration_seconds: Annotated[float, Field(ge=0)] | None = None
    price: Annotated[float, Field(ge=0)] | None = None


class User(BaseModel):
    """One user. Attributes are optional and free-form categorical values."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id
    created_at: AwareDatetime | None = None
    country: str | None = None
    age_bucket: str | None = None


UTC_US = pl.Datetime("us", "UTC")

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "timestamp": UTC_US,
    "user_id": pl.String(),
    "item_id": pl.String(),
    "event_type": pl.String(),
    "watch_seconds": pl.Float64(),
    "price": pl.Float64(),
    "value": pl.Float64(),
    "request_id": pl.String(),
    "position": pl.Int32(),
    "surface": pl.String(),
    "device": pl.String(),
}
"""Columns of the event log. The log adds a ``date`` (YYYY-MM-DD) hive partition on disk."""

EVENT_REQUIRED = ("event_id", "timestamp", "user_id", "item_id", "event_type")

ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "categories": pl.List(pl.String()),
    "created_at": UTC_US,
    "duration_seconds": pl.Float64(),
    "price": pl.Float64(),
}

USER_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "created_at": UTC_US,
    "country": pl.String(),
    "age_bucket": pl.String(),
}


def conform(
    frame: pl.DataFrame, schema: dict[str, pl.DataType], required: tuple[str, ...], where: str
) -> pl.DataFrame:
    """Cast ``frame`` to ``schema``: add missing optional columns, drop nothing silently.

    Raises:
        feedforge.errors.ValidationError: a required column is missing, an unknown column is
            present, or a column cannot be cast; the message names ``where`` and the column.
    """
    from feedforge.errors import ValidationError

    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValidationError(f"{where}: missing required column(s) {missing}")
    unknown = [c for c in frame.columns if c not in schema]
    if unknown:
        raise ValidationError(f"{where}: unknown column(s) {unknown}; expected {list(schema)}")
    exprs: list[pl.Expr] = []
    for name, dtype in schema.items():
        if name not in frame.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        expr = pl.col(name)
        current = frame.schema[name]
        if isinstance(dtype, pl.Datetime) and current.is_numeric():
            # polars would read the numbers as microseconds since 1970 without a word.
            raise ValidationError(
                f"{where}: column {name!r} of type {current} cannot be read as {dtype} "
                "(numbers are not timestamps; pass a datetime column)"
            )
        if isinstance(dtype, pl.Datetime) and isinstance(current, pl.Datetime):
            if current.time_zone is None:
                expr = expr.dt.replace_time_zone("UTC")
            elif current.time_zone != "UTC":
                expr = expr.dt.convert_time_zone("UTC")
        exprs.append(expr.cast(dtype, strict=True).alias(name))
    try:
        out = frame.select(exprs)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        for name, expr in zip(schema, exprs, strict=True):
            try:
                frame.select(expr)
            except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
                raise ValidationError(
                    f"{where}: column {name!r} of type {frame.schema.get(name)} "
                    f"cannot be read as {schema[name]}"
                ) from exc
        raise ValidationError(f"{where}: columns cannot be cast: {exc}") from exc
    nulls = [c for c in required if out.get_column(c).null_count()]
    if nulls:
        raise ValidationError(f"{where}: null values in required column(s) {nulls}")
    return out


def check_event_values(frame: pl.DataFrame, where: str) -> None:
    """Apply :class:`Event`'s value rules to a frame already cast by :func:`conform`.

    Raises:
        feedforge.errors.ValidationError: a row breaks a rule; the message names ``where``,
            the column, the number of bad rows and the first bad row's index.
    """
    from feedforge.errors import ValidationError

    et = pl.col("event_type")
    rules: list[tuple[str, pl.Expr, str]] = [
        ("event_type", ~et.is_in(EVENT_TYPES), f"must be one of {list(EVENT_TYPES)}"),
        *(
            (
                c,
                (pl.col(c).str.len_chars() < 1) | (pl.col(c).str.len_chars() > 128),
                "must be 1 to 128 characters",
            )
            for c in ("event_id", "user_id", "item_id")
        ),
        *(
            (c, pl.col(c).is_nan() | pl.col(c).is_infinite() | (pl.col(c) < 0), "must be >= 0")
            for c in ("watch_seconds", "price")
        ),
        ("value", pl.col("value").is_nan() | pl.col("value").is_infinite(), "must be finite"),
        ("position", (pl.col("position") < 0) | (pl.col("position") > 10_000), "out of range"),
        *(
            (name, (et == kind.value) & pl.col(name).is_null(), f"required for {kind.value}")
            for kind, name in _PAYLOAD.items()
        ),
    ]
    bad = frame.select(
        *(
            expr.fill_null(False).arg_true().alias(str(i)).implode()
            for i, (_, expr, _) in enumerate(rules)
        )
    ).row(0)
    for (column, _, reason), rows in zip(rules, bad, strict=True):
        if rows:
            raise ValidationError(
                f"{where}: {len(rows)} row(s) with an invalid {column!r} ({reason}), "
                f"first at row {rows[0]}"
            )
