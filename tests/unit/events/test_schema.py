"""Tests of the raw event schema: per-event validation and whole-frame conformance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import polars as pl
import pytest

from feedforge.errors import ValidationError
from feedforge.events.schema import (
    EVENT_REQUIRED,
    EVENT_SCHEMA,
    EVENT_TYPES,
    ITEM_SCHEMA,
    MAX_POSITION,
    MAX_PRICE,
    MAX_WATCH_SECONDS,
    Event,
    EventType,
    check_event_values,
    conform,
    validate_events,
)

NOW = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def _raw(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e1",
        "timestamp": "2026-02-01T10:00:00+00:00",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "click",
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()

_PAYLOADS: dict[str, dict[str, Any]] = {
    "watch": {"watch_seconds": 120.5},
    "purchase": {"price": 2.99},
    "rating": {"value": 4.5},
}


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_accepts_every_event_type(event_type: str) -> None:
    raw = _raw(
        event_id=f"e-{event_type}",
        event_type=event_type,
        context={"request_id": "r1", "position": 3, "surface": "home", "device": "tv"},
        **_PAYLOADS.get(event_type, {}),
    )
    good, issues = validate_events([raw], now=NOW)
    assert issues == []
    assert len(good) == 1
    event = good[0]
    assert event.event_type is EventType(event_type)
    row = event.to_row()
    assert set(row) == set(EVENT_SCHEMA)
    assert row["request_id"] == "r1"
    assert row["position"] == 3


BAD: list[tuple[dict[str, Any], str]] = [
    (_raw(user_id=_DROP), "user_id"),
    (_raw(event_id=_DROP), "event_id"),
    (_raw(timestamp=_DROP), "timestamp"),
    (_raw(user_id=5), "user_id"),
    (_raw(item_id=["i1"]), "item_id"),
    (_raw(event_id=""), "event_id"),
    (_raw(user_id="u" * 129), "user_id"),
    (_raw(event_type="hover"), "event_type"),
    (_raw(timestamp="2026-02-01T10:00:00"), "timestamp"),
    (_raw(timestamp="not a time"), "timestamp"),
    (_raw(timestamp="2026-02-01T12:05:01+00:00"), "timestamp"),  # 301 s ahead
    (_raw(timestamp="2027-01-01T00:00:00+00:00"), "timestamp"),
    (_raw(event_type="watch", watch_seconds=-1.0), "watch_seconds"),
    (_raw(event_type="watch", watch_seconds=float("nan")), "watch_seconds"),
    (_raw(event_type="purchase", price=-0.01), "price"),
    (_raw(event_type="watch"), "watch_seconds"),
    (_raw(event_type="purchase"), "price"),
    (_raw(event_type="rating"), "value"),
    (_raw(bogus=1), "bogus"),
    (_raw(context={"request_id": "r", "bogus": 1}), "context.bogus"),
    (_raw(context={"position": -1}), "context.position"),
    # Strict types (issue 14): timestamps are ISO-8601 strings, numbers are JSON numbers.
    (_raw(timestamp=1_769_940_000), "timestamp"),  # an epoch number
    (_raw(timestamp="1769940000"), "timestamp"),  # an epoch in a string
    (_raw(timestamp=False), "timestamp"),
    (_raw(timestamp="2026-02-01"), "timestamp"),  # a date is not a point in time
    (_raw(event_type="watch", watch_seconds="120"), "watch_seconds"),
    (_raw(event_type="watch", watch_seconds=False), "watch_seconds"),
    (_raw(event_type="purchase", price="2.99"), "price"),
    (_raw(event_type="rating", value=True), "value"),
    (_raw(context={"position": "3"}), "context.position"),
    (_raw(context={"position": True}), "context.position"),
    # Upper bounds a real product needs.
    (_raw(event_type="watch", watch_seconds=1e308), "watch_seconds"),
    (_raw(event_type="watch", watch_seconds=MAX_WATCH_SECONDS + 1), "watch_seconds"),
    (_raw(event_type="purchase", price=1e308), "price"),
    (_raw(event_type="purchase", price=MAX_PRICE * 1.01), "price"),
    (_raw(event_type="rating", value=1e308), "value"),
    (_raw(event_type="rating", value=-1e308), "value"),
    (_raw(context={"position": MAX_POSITION + 1}), "context.position"),
    # Ids and context strings: printable, no control characters or line breaks.
    (_raw(user_id="u1\nadmin"), "user_id"),
    (_raw(event_id="e\x001"), "event_id"),
    (_raw(item_id="i1\r"), "item_id"),
    (_raw(item_id="i\u2028"), "item_id"),
    (_raw(user_id="u\x851"), "user_id"),
    (_raw(context={"request_id": "r\t1"}), "context.request_id"),
    (_raw(context={"device": "tv\x1b[31m"}), "context.device"),
    (_raw(context={"surface": "s" * 65}), "context.surface"),
]


@pytest.mark.parametrize(("raw", "field"), BAD)
def test_rejects_a_bad_event_naming_index_and_field(raw: dict[str, Any], field: str) -> None:
    good, issues = validate_events([_raw(event_id="ok-1"), raw, _raw(event_id="ok-2")], now=NOW)
    assert [e.event_id for e in good] == ["ok-1", "ok-2"]
    assert len(issues) == 1
    assert issues[0].index == 1
    assert issues[0].field == field
    assert issues[0].reason


def test_far_future_reason_mentions_the_skew() -> None:
    _, issues = validate_events([_raw(timestamp="2026-02-01T13:00:00Z")], now=NOW)
    assert "future" in issues[0].reason


def test_future_skew_is_configurable() -> None:
    ahead = _raw(timestamp="2026-02-01T12:05:01+00:00")
    good, _ = validate_events([ahead], now=NOW, max_future_skew_s=600)
    assert len(good) == 1
    good, issues = validate_events([_raw(timestamp="2026-02-01T12:00:30Z")], now=NOW)
    assert len(good) == 1 and not issues


@pytest.mark.parametrize(
    "timestamp",
    ["2026-02-01T10:00:00Z", "2026-02-01T10:00:00.123456+00:00", "2026-02-01t05:00:00-05:00"],
)
def test_iso_8601_timestamps_with_a_timezone_are_accepted(timestamp: str) -> None:
    good, issues = validate_events([_raw(timestamp=timestamp)], now=NOW)
    assert issues == [] and len(good) == 1


def test_a_timestamp_that_is_not_an_iso_string_says_what_is_expected() -> None:
    _, issues = validate_events([_raw(timestamp=1_769_940_000)], now=NOW)
    assert "ISO-8601" in issues[0].reason and "timezone" in issues[0].reason


def test_values_at_the_bounds_and_integer_numbers_are_accepted() -> None:
    batch = [
        _raw(event_id="w", event_type="watch", watch_seconds=MAX_WATCH_SECONDS),
        _raw(event_id="w0", event_type="watch", watch_seconds=120),  # a JSON integer
        _raw(event_id="p", event_type="purchase", price=MAX_PRICE),
        _raw(event_id="r", event_type="rating", value=-1),
        _raw(event_id="c", context={"position": MAX_POSITION, "device": "Smart TV (Wohnzimmer)"}),
        _raw(event_id="unicode", user_id="ユーザー-1", item_id="élément 7"),
    ]
    good, issues = validate_events(batch, now=NOW)
    assert issues == []
    assert [e.event_id for e in good] == ["w", "w0", "p", "r", "c", "unicode"]


def test_a_control_character_gets_a_readable_reason() -> None:
    _, issues = validate_events([_raw(user_id="u1\nadmin")], now=NOW)
    assert "control characters" in issues[0].reason


def test_rejections_quote_no_large_input() -> None:
    huge = "x" * 60_000
    batch = [_raw(**{huge: 1}), _raw(user_id=huge), _raw(timestamp=huge), {huge: huge}]
    _, issues = validate_events(batch, now=NOW)
    assert len(issues) >= 4
    assert all(len(i.field) <= 100 and len(i.reason) <= 300 for i in issues), [
        (len(i.field), len(i.reason)) for i in issues
    ]


# -- the accepted past (serving.max_past_age_days) -----------------------------------------


def test_timestamps_older_than_the_past_bound_are_rejected_naming_it() -> None:
    batch = [
        _raw(event_id="recent", timestamp="2026-01-05T00:00:00Z"),  # 27 days before NOW
        _raw(event_id="old", timestamp="2025-12-01T00:00:00Z"),  # 62 days
        _raw(event_id="year-1", timestamp="0001-01-01T00:00:00Z"),
        _raw(event_id="year-1000", timestamp="1000-06-01T00:00:00+00:00"),
    ]
    good, issues = validate_events(batch, now=NOW, max_past_age_days=30)
    assert [e.event_id for e in good] == ["recent"]
    assert [(i.index, i.field) for i in issues] == [
        (1, "timestamp"),
        (2, "timestamp"),
        (3, "timestamp"),
    ]
    assert all("max_past_age_days" in i.reason and "30" in i.reason for i in issues)


def test_the_past_bound_can_be_lifted() -> None:
    # Importers of historical datasets validate frames (check_event_values), not through this
    # bound; a caller of validate_events may lift it too.
    good, issues = validate_events([_raw(timestamp="1998-04-22T23:10:38Z")], now=NOW)
    assert issues == [] and len(good) == 1


def test_not_a_mapping_is_rejected() -> None:
    good, issues = validate_events(["a string", None, 3], now=NOW)
    assert good == []
    assert [i.index for i in issues] == [0, 1, 2]
    assert all(i.field == "<event>" for i in issues)


def test_good_events_survive_bad_ones_in_a_batch() -> None:
    batch = [
        _raw(event_id="g0"),
        _raw(event_id="b1", event_type="hover"),
        _raw(event_id="g2", event_type="watch", watch_seconds=3.0),
        _raw(event_id="b3", event_type="watch", watch_seconds=-3.0, user_id=_DROP),
        _raw(event_id="g4", event_type="impression", context={"position": 0}),
    ]
    good, issues = validate_events(batch, now=NOW)
    assert [e.event_id for e in good] == ["g0", "g2", "g4"]
    assert {(i.index, i.field) for i in issues} == {
        (1, "event_type"),
        (3, "user_id"),
        (3, "watch_seconds"),
    }


def test_timestamps_are_normalised_to_utc() -> None:
    good, _ = validate_events(
        [
            _raw(event_id="a", timestamp="2026-02-01T11:30:00+02:00"),
            _raw(
                event_id="b",
                timestamp=datetime(2026, 2, 1, 4, 30, tzinfo=timezone(-timedelta(hours=5))),
            ),
        ],
        now=NOW,
    )
    assert [e.timestamp for e in good] == [
        datetime(2026, 2, 1, 9, 30, tzinfo=UTC),
        datetime(2026, 2, 1, 9, 30, tzinfo=UTC),
    ]
    assert all(e.timestamp.utcoffset() == timedelta(0) for e in good)
    assert good[0].to_row()["timestamp"].utcoffset() == timedelta(0)


def test_event_model_enforces_payload_on_construction() -> None:
    with pytest.raises(Exception, match="watch_seconds is required"):
        Event(event_id="e", timestamp=NOW, user_id="u", item_id="i", event_type="watch")


# -- conform: whole frames -----------------------------------------------------------------


def _frame(**columns: Any) -> pl.DataFrame:
    base: dict[str, Any] = {
        "event_id": ["e1", "e2"],
        "timestamp": [datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC)],
        "user_id": ["u1", "u2"],
        "item_id": ["i1", "i2"],
        "event_type": ["impression", "click"],
    }
    base.update(columns)
    return pl.DataFrame({k: v for k, v in base.items() if v is not _DROP})


def test_conform_adds_optional_columns_in_schema_order() -> None:
    out = conform(_frame(), EVENT_SCHEMA, EVENT_REQUIRED, "batch")
    assert out.schema == pl.Schema(EVENT_SCHEMA)
    assert out.get_column("watch_seconds").null_count() == 2


def test_conform_converts_time_zones_to_utc() -> None:
    local = _frame().with_columns(pl.col("timestamp").dt.convert_time_zone("Asia/Tokyo"))
    out = conform(local, EVENT_SCHEMA, EVENT_REQUIRED, "batch")
    assert out.get_column("timestamp").to_list() == _frame().get_column("timestamp").to_list()
    assert out.schema["timestamp"] == pl.Datetime("us", "UTC")


@pytest.mark.parametrize("column", EVENT_REQUIRED)
def test_conform_missing_required_column(column: str) -> None:
    with pytest.raises(ValidationError, match="missing required") as info:
        conform(_frame(**{column: _DROP}), EVENT_SCHEMA, EVENT_REQUIRED, "batch-7")
    assert column in str(info.value)
    assert "batch-7" in str(info.value)


def test_conform_unknown_column() -> None:
    with pytest.raises(ValidationError, match="unknown column") as info:
        conform(_frame(colour=["red", "blue"]), EVENT_SCHEMA, EVENT_REQUIRED, "batch")
    assert "colour" in str(info.value)


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("watch_seconds", ["long", "short"]),
        ("position", ["top", "bottom"]),
        ("position", [2**40, 1]),
        ("timestamp", ["yesterday", "today"]),
        ("timestamp", [1_767_225_600, 1_767_225_601]),  # epoch numbers are not timestamps
        ("price", [[1.0], [2.0]]),
    ],
)
@pytest.mark.filterwarnings("ignore:Casting from String to DateTime:DeprecationWarning")
def test_conform_uncastable_column(column: str, values: list[Any]) -> None:
    with pytest.raises(ValidationError, match="cannot be read as") as info:
        conform(_frame(**{column: values}), EVENT_SCHEMA, EVENT_REQUIRED, "batch")
    assert repr(column) in str(info.value)


def test_conform_null_in_required_column() -> None:
    frame = _frame(user_id=["u1", None])
    with pytest.raises(ValidationError, match="null values") as info:
        conform(frame, EVENT_SCHEMA, EVENT_REQUIRED, "batch")
    assert "user_id" in str(info.value)


def test_conform_item_schema() -> None:
    items = pl.DataFrame(
        {
            "item_id": ["i1"],
            "title": ["A"],
            "categories": [["drama", "comedy"]],
            "created_at": [datetime(2025, 1, 1)],  # naive: read as UTC
        }
    )
    out = conform(items, ITEM_SCHEMA, ("item_id", "title", "created_at"), "items")
    assert out.schema == pl.Schema(ITEM_SCHEMA)
    assert out.item(0, "created_at") == datetime(2025, 1, 1, tzinfo=UTC)


# -- value rules of frames -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "column"),
    [
        ({"event_type": ["impression", "hover"]}, "event_type"),
        ({"event_type": ["watch", "click"], "watch_seconds": [None, None]}, "watch_seconds"),
        ({"event_type": ["watch", "click"], "watch_seconds": [-1.0, None]}, "watch_seconds"),
        ({"event_type": ["purchase", "click"]}, "price"),
        ({"price": [float("nan"), None]}, "price"),
        ({"event_type": ["rating", "click"]}, "value"),
        ({"value": [float("inf"), None]}, "value"),
        ({"position": [0, -2]}, "position"),
        ({"event_id": ["", "e2"]}, "event_id"),
        # The same bounds and id rules as Event (issue 14).
        ({"user_id": ["u\n1", "u2"]}, "user_id"),
        ({"item_id": ["i1", "i\x00"]}, "item_id"),
        ({"event_type": ["watch", "click"], "watch_seconds": [1e308, None]}, "watch_seconds"),
        ({"price": [MAX_PRICE * 2, None]}, "price"),
        ({"value": [1e308, None]}, "value"),
    ],
)
def test_check_event_values_names_the_column(changes: dict[str, Any], column: str) -> None:
    frame = conform(_frame(**changes), EVENT_SCHEMA, EVENT_REQUIRED, "batch")
    with pytest.raises(ValidationError) as info:
        check_event_values(frame, "batch")
    assert repr(column) in str(info.value)
    assert "batch" in str(info.value)


def test_check_event_values_accepts_good_rows() -> None:
    frame = _frame(event_type=["watch", "purchase"], watch_seconds=[10.0, None], price=[None, 0.0])
    check_event_values(conform(frame, EVENT_SCHEMA, EVENT_REQUIRED, "batch"), "batch")
