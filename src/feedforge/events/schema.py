"""Typed schemas of raw user interactions, the item catalog and users.

Two views of the same schema live here: pydantic models validate single records at the edge
(the API, importers), and polars schemas type whole tables in the event log and the catalog.

(Over 400 lines on purpose: both views and their bounds stay in one file so they cannot drift.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import polars as pl
import pydantic
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
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
_TIMESTAMP_FORMAT = "timestamp_format"

# Bounds of the values an event may carry: what a real product sees, with room to spare. An
# attacker's 1e308 or a client's unit mix-up (milliseconds sent as seconds) is refused at the
# edge instead of skewing every counter and objective computed from the log.
MAX_ID_LENGTH = 128
"""Longest event, user, item and request id (characters)."""
MAX_LABEL_LENGTH = 64
"""Longest ``context.surface`` and ``context.device``."""
MAX_WATCH_SECONDS = 7 * 24 * 3600.0
"""Longest ``watch_seconds``: one week (a session longer than that is a broken client)."""
MAX_PRICE = 1_000_000.0
"""Largest ``price`` of one purchase, in the catalog's currency unit."""
RATING_RANGE = (-100.0, 100.0)
"""Smallest and largest rating ``value``: covers thumbs (-1/1), stars (0.5-5), 0-10 and 0-100
scales."""
MAX_POSITION = 10_000
"""Largest ``context.position`` (0-based slot in a feed)."""

_PRINTABLE_CHAR = r"[^\x00-\x1F\x7F-\x9F\u2028\u2029]"
PRINTABLE = rf"^{_PRINTABLE_CHAR}+$"
"""Ids and labels: no control characters (C0, DEL, C1) and no line or paragraph separators,
so an id can never break a log line, a header or a CSV row. Written for every regex engine
that reads it (pydantic-core's and polars' Rust regex, the JSON schema's ECMA-262)."""
PRINTABLE_OR_EMPTY = rf"^{_PRINTABLE_CHAR}*$"
""":data:`PRINTABLE`, or the empty string (the optional context fields)."""

_PRINTABLE_REASON = "must not contain control characters or line breaks"

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=PRINTABLE)]
Label = Annotated[str, Field(max_length=MAX_LABEL_LENGTH, pattern=PRINTABLE_OR_EMPTY)]

_ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}(:?\d{2})?)",
    re.ASCII,
)


def _iso_timestamp(value: Any) -> Any:
    """Let through a datetime (Python callers) or an ISO-8601 string with a timezone; refuse
    what pydantic would otherwise read as a time: epoch numbers, numeric strings, booleans."""
    if isinstance(value, datetime) or (isinstance(value, str) and _ISO_8601.fullmatch(value)):
        return value
    raise PydanticCustomError(
        _TIMESTAMP_FORMAT,
        "must be an ISO-8601 datetime string with a timezone, e.g. 2026-11-25T12:00:00Z",
    )


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_timestamp)]


def _number(low: float, high: float) -> Any:
    # strict: a JSON number only (an integer is a number too), never a string or a boolean.
    return Field(ge=low, le=high, strict=True, allow_inf_nan=False)


class EventContext(BaseModel):
    """Where an event happened. All fields are optional."""

    model_config = ConfigDict(extra="forbid")

    request_id: (
        Annotated[str, Field(max_length=MAX_ID_LENGTH, pattern=PRINTABLE_OR_EMPTY)] | None
    ) = None
    position: Annotated[int, Field(ge=0, le=MAX_POSITION, strict=True)] | None = None
    surface: Label | None = None
    device: Label | None = None


class Event(BaseModel):
    """One raw user interaction.

    ``watch`` events need ``watch_seconds`` (0 to :data:`MAX_WATCH_SECONDS`), ``purchase``
    events need ``price`` (0 to :data:`MAX_PRICE`) and ``rating`` events need ``value`` (in
    :data:`RATING_RANGE`); numbers must be numbers (not strings or booleans). Timestamps are
    ISO-8601 strings (or datetimes) with a timezone and are stored in UTC. Ids are 1 to 128
    characters without control characters or line breaks.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: Id
    timestamp: Timestamp = Field(
        description="ISO-8601 with a timezone, e.g. 2026-11-25T12:00:00Z; POST /events takes "
        "at most serving.max_future_skew_s ahead and serving.max_past_age_days back"
    )
    user_id: Id
    item_id: Id
    event_type: EventType
    watch_seconds: Annotated[float, _number(0, MAX_WATCH_SECONDS)] | None = None
    price: Annotated[float, _number(0, MAX_PRICE)] | None = None
    value: Annotated[float, _number(*RATING_RANGE)] | None = None
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

MAX_QUOTED = 80
"""Longest piece of a request quoted back in an error (an unknown field's name, say): a
rejection never echoes a large input."""


def quote(text: str, limit: int = MAX_QUOTED) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis), for error messages."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def issue_reason(err: Mapping[str, Any]) -> str:
    """A readable reason for one pydantic error (``ErrorDetails``), never quoting the input.

    Args:
        err: One entry of ``pydantic.ValidationError.errors()`` (``ErrorDetails``).
    """
    pattern = (err.get("ctx") or {}).get("pattern")
    if err["type"] == "string_pattern_mismatch" and pattern in (PRINTABLE, PRINTABLE_OR_EMPTY):
        return _PRINTABLE_REASON
    return quote(str(err["msg"]), 4 * MAX_QUOTED)


def validate_events(
    raw: list[Any],
    *,
    now: datetime | None = None,
    max_future_skew_s: float = 300.0,
    max_past_age_days: float | None = None,
) -> tuple[list[Event], list[EventIssue]]:
    """Validate a batch of raw events one by one.

    Args:
        raw: Decoded JSON objects.
        now: The reference time for the timestamp bounds (default: now, UTC).
        max_future_skew_s: How far in the future a timestamp may lie (clock skew).
        max_past_age_days: How far in the past a timestamp may lie (``serving.
            max_past_age_days`` for live ingestion); None: no bound (historical data).

    Returns:
        The valid events, and one :class:`EventIssue` per rejected event naming its index in
        ``raw``, the field and the reason. Good events are never dropped because of bad ones.
    """
    now = now or datetime.now(UTC)
    limit = now + timedelta(seconds=max_future_skew_s)
    oldest = _oldest(now, max_past_age_days)
    issues: list[EventIssue] = []
    try:  # the common case, a clean batch, in one call into pydantic-core
        valid = list(enumerate(_EVENTS_ADAPTER.validate_python(raw)))
    except pydantic.ValidationError:
        valid = []
        for index, item in enumerate(raw):
            try:
                valid.append((index, _EVENT_ADAPTER.validate_python(item)))
            except pydantic.ValidationError as exc:
                for err in exc.errors(include_input=False, include_url=False):
                    loc = ".".join(str(p) for p in err["loc"]) or "<event>"
                    if err["type"] == _MISSING_PAYLOAD:
                        loc = str(err.get("ctx", {}).get("field", loc))
                    issues.append(
                        EventIssue(index=index, field=quote(loc), reason=issue_reason(err))
                    )
    good: list[Event] = []
    for index, event in valid:
        if event.timestamp > limit:
            reason = (
                f"timestamp {event.timestamp.isoformat()} is in the future "
                f"(more than {max_future_skew_s:g}s ahead of the server clock)"
            )
        elif oldest is not None and event.timestamp < oldest:
            reason = (
                f"timestamp {event.timestamp.isoformat()} is older than "
                f"serving.max_past_age_days = {max_past_age_days:g} days "
                f"(before {oldest.isoformat()}); import historical data with feedforge import"
            )
        else:
            good.append(event)
            continue
        issues.append(EventIssue(index=index, field="timestamp", reason=reason))
    issues.sort(key=lambda issue: issue.index)
    return good, issues


def _oldest(now: datetime, max_past_age_days: float | None) -> datetime | None:
    if max_past_age_days is None:
        return None
    try:
        return now - timedelta(days=max_past_age_days)
    except OverflowError:  # a bound reaching before year 1: every datetime is recent enough
        return None


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
                (pl.col(c).str.len_chars() < 1) | (pl.col(c).str.len_chars() > MAX_ID_LENGTH),
                f"must be 1 to {MAX_ID_LENGTH} characters",
            )
            for c in ("event_id", "user_id", "item_id")
        ),
        *(
            (c, ~pl.col(c).str.contains(PRINTABLE), _PRINTABLE_REASON)
            for c in ("event_id", "user_id", "item_id")
        ),
        *(
            (c, ~pl.col(c).is_between(0, high), f"must be 0 to {high:g}")  # NaN is above all
            for c, high in (("watch_seconds", MAX_WATCH_SECONDS), ("price", MAX_PRICE))
        ),
        (
            "value",
            ~pl.col("value").is_between(*RATING_RANGE),
            f"must be {RATING_RANGE[0]:g} to {RATING_RANGE[1]:g}",
        ),
        ("position", ~pl.col("position").is_between(0, MAX_POSITION), "out of range"),
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
