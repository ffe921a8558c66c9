"""Leakage and skew tests: features see only the past, labels only their own window.

The point-in-time counters of the ranking examples are built with as-of joins. Here they are
recomputed naively, one impression at a time, with a plain ``timestamp < impression time``
filter over the raw event log: a different code path that must give the same numbers. The
serving snapshot (:func:`snapshot_counters`) must give them too, for impressions at exactly the
snapshot's cutoff (training/serving skew).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pytest

from feedforge.config import DatasetConfig
from feedforge.datasets.build import SPLITS, ranking_examples
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA
from feedforge.features.definitions import DEVICES, RAW_COUNTERS, WINDOWS
from feedforge.features.item_table import ItemTable, raw_from_table
from feedforge.features.offline import (
    point_in_time_counters,
    snapshot_candidate_counters,
    snapshot_counters,
)
from feedforge.features.online import item_records, user_records

if TYPE_CHECKING:
    from conftest import Built

SAMPLE_PER_SPLIT = 80


def _primary_category(items: pl.DataFrame) -> dict[str, str]:
    return {
        item_id: (cats[0] if cats is not None and len(cats) else "")
        for item_id, cats in items.select("item_id", "categories").iter_rows()
    }


def naive_counters(
    events: pl.DataFrame,
    items: pl.DataFrame,
    user: str,
    item: str,
    at: datetime,
    device: str | None = None,
) -> dict[str, Any]:
    """Raw counters of ``(user, item)`` at time ``at``, counted the slow, obvious way."""
    category = _primary_category(items)
    attrs = {r["item_id"]: r for r in items.iter_rows(named=True)}
    before = events.filter(pl.col("timestamp") < at)
    shown = before.filter(pl.col("event_type") == "impression")
    clicks = before.filter(pl.col("event_type") == "click")
    user_clicks = clicks.filter(pl.col("user_id") == user)
    own_category = category.get(item, "")
    age = (at - attrs[item]["created_at"]).total_seconds() if item in attrs else 0.0
    out: dict[str, Any] = {
        "user_impressions": shown.filter(pl.col("user_id") == user).height,
        "user_clicks": user_clicks.height,
        "item_impressions": shown.filter(pl.col("item_id") == item).height,
        "item_clicks": clicks.filter(pl.col("item_id") == item).height,
        "user_category_clicks": sum(
            category.get(i, "") == own_category for i in user_clicks.get_column("item_id")
        ),
        "item_age_seconds": age,
        "item_duration_seconds": (attrs.get(item, {}).get("duration_seconds") or 0.0),
        "item_price": (attrs.get(item, {}).get("price") or 0.0),
        "hour": at.astimezone(UTC).hour,
    }
    for suffix, length in WINDOWS.items():
        recent = pl.col("timestamp") >= at - length
        for who, key in (("user", user), ("item", item)):
            mine = pl.col(f"{who}_id") == key
            out[f"{who}_impressions_{suffix}"] = shown.filter(mine & recent).height
            out[f"{who}_clicks_{suffix}"] = clicks.filter(mine & recent).height
    if device in DEVICES:
        out["device_code"] = DEVICES.index(device) + 1
    else:  # the user's most recent earlier impression with a device
        mine = shown.filter((pl.col("user_id") == user) & pl.col("device").is_not_null())
        if mine.height == 0:
            out["device_code"] = 0
        else:
            last = mine.filter(pl.col("timestamp") == mine.get_column("timestamp").max())
            out["device_code"] = max(
                DEVICES.index(d) + 1 if d in DEVICES else 0 for d in last.get_column("device")
            )
    return out


def _assert_counters_equal(row: dict[str, Any], expected: dict[str, Any], label: str) -> None:
    for name, value in expected.items():
        if name == "item_age_seconds":
            assert row[name] == pytest.approx(value, abs=1e-6), (label, name)
        else:
            assert row[name] == value, (label, name, row[name], value)


@pytest.mark.parametrize("split", SPLITS)
def test_counters_equal_a_naive_recount(built: Built, split: str) -> None:
    frame = built.ranking(split)
    rng = np.random.default_rng(sum(map(ord, split)))
    picks = rng.choice(frame.height, size=min(SAMPLE_PER_SPLIT, frame.height), replace=False)
    sample = frame[picks.tolist()]
    for row in sample.iter_rows(named=True):
        expected = naive_counters(
            built.events,
            built.items,
            row["user_id"],
            row["item_id"],
            row["timestamp"],
            built.events.filter(pl.col("event_id") == row["event_id"]).item(0, "device"),
        )
        _assert_counters_equal(row, expected, row["event_id"])
    # The sample must exercise the counters, or equality would prove little.
    assert sample.get_column("user_clicks").sum() > 0
    assert sample.get_column("item_clicks").sum() > 0
    assert sample.get_column("user_category_clicks").sum() > 0
    assert sample.get_column("user_impressions").sum() > 0
    assert sample.get_column("item_clicks_1d").sum() > 0
    assert sample.get_column("user_impressions_7d").sum() > 0
    assert (sample.get_column("user_impressions_1d") < sample.get_column("user_impressions")).any()
    assert sample.get_column("device_code").n_unique() > 1


def test_same_request_impressions_do_not_see_each_other(built: Built) -> None:
    """All impressions of one request share a timestamp: none counts the others."""
    frame = built.ranking("train")
    request = (
        frame.group_by("request_id").len().filter(pl.col("len") >= 3).sort("request_id").row(0)[0]
    )
    rows = frame.filter(pl.col("request_id") == request)
    assert rows.get_column("timestamp").n_unique() == 1
    assert rows.get_column("user_impressions").n_unique() == 1
    at = rows.item(0, "timestamp")
    user = rows.item(0, "user_id")
    earlier = built.events.filter(
        (pl.col("user_id") == user)
        & (pl.col("event_type") == "impression")
        & (pl.col("timestamp") < at)
    ).height
    assert rows.item(0, "user_impressions") == earlier


@pytest.mark.parametrize("split", SPLITS)
def test_labels_equal_a_naive_attribution(built: Built, split: str) -> None:
    frame = built.ranking(split)
    window = built.window
    outcomes = built.events.filter(pl.col("event_type").is_in(["click", "watch", "purchase"]))
    rng = np.random.default_rng(7)
    clicked = frame.filter(pl.col("clicked"))
    picks = frame[rng.choice(frame.height, size=40, replace=False).tolist()]
    for row in pl.concat([picks, clicked.head(20)]).iter_rows(named=True):
        mine = outcomes.filter(
            (pl.col("request_id") == row["request_id"])
            & (pl.col("user_id") == row["user_id"])
            & (pl.col("item_id") == row["item_id"])
            & (pl.col("timestamp") >= row["timestamp"])
            & (pl.col("timestamp") < row["timestamp"] + window)
        )
        kinds = mine.get_column("event_type")
        assert row["clicked"] == (kinds == "click").any(), row["event_id"]
        assert row["purchased"] == (kinds == "purchase").any(), row["event_id"]
        watched = mine.filter(pl.col("event_type") == "watch").get_column("watch_seconds").sum()
        assert row["watch_seconds"] == pytest.approx(watched), row["event_id"]


# -- hand-built logs -------------------------------------------------------------------------

T = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=600)

ITEMS = pl.DataFrame(
    {
        "item_id": ["i1", "i2", "i3"],
        "title": ["one", "two", "three"],
        "categories": [["drama"], ["comedy"], ["drama", "comedy"]],
        "created_at": [T - timedelta(days=1), T - timedelta(days=2), T + timedelta(hours=1)],
        "duration_seconds": [100.0, 100.0, 100.0],
        "price": [None, None, 5.0],
    },
    schema=ITEM_SCHEMA,
)


def _ev(event_id: str, ts: datetime, user: str, item: str, kind: str, req: str, **kw: Any) -> dict:
    return {
        "event_id": event_id,
        "timestamp": ts,
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        "request_id": req,
        **kw,
    }


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


COUNTER_LOG = _frame(
    [
        _ev("E", T - timedelta(hours=1), "u1", "i2", "impression", "r0", position=0),
        _ev("F", T - timedelta(minutes=30), "u2", "i1", "click", "r9"),
        _ev("A", T, "u1", "i1", "impression", "r1", position=0),
        _ev("B", T, "u1", "i2", "impression", "r1", position=1),
        _ev("C0", T, "u1", "i1", "click", "r1"),  # same instant as impression A
        _ev("C1", T + timedelta(seconds=5), "u1", "i1", "click", "r1"),
        _ev("D", T + timedelta(seconds=60), "u1", "i1", "impression", "r2", position=0),
        _ev("G", T + timedelta(seconds=60), "u1", "i3", "impression", "r2", position=1),
    ]
)


def test_counters_exclude_the_present_and_the_future() -> None:
    out = ranking_examples(COUNTER_LOG.lazy(), ITEMS, DatasetConfig(attribution_seconds=600))
    rows = {r["event_id"]: r for r in out.collect().iter_rows(named=True)}
    assert sorted(rows) == ["A", "B", "D", "E", "G"]
    expected = {
        # A: the click C0 at the very same instant and C1 after it are not counted.
        "A": (1, 0, 0, 1, 0),
        "B": (1, 0, 1, 0, 0),
        # D: E, A and B before it; clicks F (other user), C0 and C1 all in the past now.
        "D": (3, 2, 1, 3, 2),
        "G": (3, 2, 0, 0, 2),  # i3's primary category is drama, like i1's
        "E": (0, 0, 0, 0, 0),
    }
    for event_id, counts in expected.items():
        got = tuple(rows[event_id][c] for c in RAW_COUNTERS[1:6])
        assert got == counts, event_id
    assert rows["A"]["item_age_seconds"] == 86_400.0
    assert rows["G"]["item_age_seconds"] == pytest.approx(-3540.0)  # created after it was shown
    assert rows["B"]["position"] == 1
    # the naive recount agrees on the hand-built log too
    for event_id, row in rows.items():
        naive = naive_counters(
            COUNTER_LOG,
            ITEMS,
            row["user_id"],
            row["item_id"],
            row["timestamp"],
            COUNTER_LOG.filter(pl.col("event_id") == event_id).item(0, "device"),
        )
        _assert_counters_equal(row, naive, event_id)


LABEL_LOG = _frame(
    [
        _ev("L", T, "u3", "i1", "impression", "r5", position=0),
        _ev("M", T, "u3", "i2", "impression", "r5", position=1),
        _ev("N", T, "u3", "i3", "impression", "r5", position=2),
        _ev("K", T, "u3", "i1", "impression", "r6", position=0),
        # L: the only click comes after the window.
        _ev("L-late", T + WINDOW + timedelta(seconds=1), "u3", "i1", "click", "r5"),
        # M: clicked within the window, but from another request.
        _ev("M-other", T + timedelta(seconds=100), "u3", "i2", "click", "r-other"),
        # N: click, watch and purchase inside the window; a click at exactly its end.
        _ev("N-click", T + timedelta(seconds=3), "u3", "i3", "click", "r5"),
        _ev("N-watch", T + timedelta(seconds=30), "u3", "i3", "watch", "r5", watch_seconds=60.0),
        _ev("N-buy", T + WINDOW - timedelta(seconds=1), "u3", "i3", "purchase", "r5", price=5.0),
        _ev("N-edge", T + WINDOW, "u3", "i3", "watch", "r5", watch_seconds=40.0),
        # K: a click at the impression's own instant is attributed to it.
        _ev("K-click", T, "u3", "i1", "click", "r6"),
    ]
)


def test_labels_respect_window_and_request() -> None:
    config = DatasetConfig(attribution_seconds=int(WINDOW.total_seconds()), watch_completion=0.5)
    out = ranking_examples(LABEL_LOG.lazy(), ITEMS, config).collect()
    rows = {r["event_id"]: r for r in out.iter_rows(named=True)}
    assert sorted(rows) == ["K", "L", "M", "N"]
    assert not rows["L"]["clicked"]
    assert not rows["M"]["clicked"]
    assert rows["N"]["clicked"] and rows["N"]["purchased"] and rows["N"]["watched"]
    assert rows["N"]["watch_seconds"] == 60.0  # N-edge (at exactly the window end) excluded
    assert rows["N"]["revenue"] == 5.0
    assert rows["K"]["clicked"]
    assert not any(rows[k]["purchased"] or rows[k]["watched"] for k in ("K", "L", "M"))


# -- training/serving skew -------------------------------------------------------------------


def _parity(
    events: pl.DataFrame, items: pl.DataFrame, pairs: pl.DataFrame, cutoff: datetime
) -> None:
    snapshot = snapshot_counters(events.lazy(), items, cutoff)
    serving = snapshot_candidate_counters(pairs, snapshot, cutoff)
    impressions = pairs.with_row_index("_n").with_columns(
        pl.format("cand-{}", pl.col("_n")).alias("event_id"),
        pl.lit(cutoff).cast(pl.Datetime("us", "UTC")).alias("timestamp"),
        pl.lit(None, pl.Int32).alias("position"),
    )
    training = point_in_time_counters(impressions.lazy(), events.lazy(), items).collect().sort("_n")
    assert serving.height == training.height == pairs.height
    assert serving.select("user_id", "item_id").equals(training.select("user_id", "item_id"))
    for name in RAW_COUNTERS:
        left = serving.get_column(name).cast(pl.Float64)
        right = training.get_column(name).cast(pl.Float64)
        assert (left - right).abs().max() < 1e-6, name


def test_snapshot_equals_point_in_time_on_a_hand_built_log() -> None:
    pairs = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u-new"],
            "item_id": ["i1", "i2", "i3", "i1", "i2"],
        }
    )
    for cutoff in (T, T + timedelta(seconds=5), T + timedelta(seconds=60), T + timedelta(days=1)):
        _parity(COUNTER_LOG, ITEMS, pairs, cutoff)


def test_snapshot_parity_for_items_missing_from_the_catalog() -> None:
    """Events may name items the catalog lacks (live events): both paths count them alike."""
    extra = _frame(
        [
            _ev("X1", T - timedelta(hours=2), "u1", "i-x", "impression", "rx", position=0),
            _ev("X2", T - timedelta(hours=2), "u1", "i-x", "click", "rx"),
            _ev("X3", T - timedelta(hours=1), "u2", "i-y", "click", "ry"),
        ]
    )
    log = pl.concat([COUNTER_LOG, extra])
    pairs = pl.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["i-x", "i-y", "i-x"]})
    _parity(log, ITEMS, pairs, T)
    serving = snapshot_candidate_counters(pairs, snapshot_counters(log.lazy(), ITEMS, T), T)
    assert serving.get_column("item_impressions").to_list() == [1, 0, 1]
    assert serving.get_column("item_clicks").to_list() == [1, 1, 1]
    assert serving.get_column("user_category_clicks").to_list() == [1, 1, 1]


def test_snapshot_equals_point_in_time_on_the_simulated_log(built: Built) -> None:
    events = built.events
    rng = np.random.default_rng(3)
    catalog_items = built.items.get_column("item_id")
    users = rng.choice(events.get_column("user_id").unique().sort().to_numpy(), 40, replace=False)
    items = rng.choice(catalog_items.to_numpy(), 25, replace=False)
    pairs = pl.DataFrame(
        {
            "user_id": np.repeat([*users, "u-nobody"], len(items)).tolist(),
            "item_id": np.tile(items, len(users) + 1).tolist(),
        }
    )
    # A cutoff at the exact instant of a logged request (events at the cutoff exist) and one
    # at the train/validation boundary.
    busy = events.filter(pl.col("event_type") == "impression").item(5_000, "timestamp")
    assert events.filter(pl.col("timestamp") == busy).height > 1
    for cutoff in (busy, built.bounds["t1"]):
        _parity(events, built.items, pairs, cutoff)


def test_store_records_give_the_snapshot_counters() -> None:
    """The service's path (JSON records -> raw counters) equals the offline snapshot path."""
    cutoff = T + timedelta(seconds=60)
    snapshot = snapshot_counters(COUNTER_LOG.lazy(), ITEMS, cutoff)
    users, items, user_cats = snapshot
    seen = pl.DataFrame({"user_id": ["u1"], "seen": [["i1"]]})
    user_ids, user_recs = user_records(users, user_cats, seen)
    item_ids, item_recs = item_records(items)
    by_user = dict(zip(user_ids, user_recs, strict=True))
    by_item = dict(zip(item_ids, item_recs, strict=True))
    candidates = ["i1", "i2", "i3", "i-unknown"]
    for user, device in (("u1", None), ("u1", "web"), ("u2", None), ("u-new", "tv")):
        pairs = pl.DataFrame({"user_id": [user] * len(candidates), "item_id": candidates})
        offline = snapshot_candidate_counters(pairs, snapshot, cutoff, device)
        table = ItemTable.from_records([by_item.get(i) for i in candidates])
        raw, missing = raw_from_table(
            by_user.get(user), table, np.arange(len(candidates)), cutoff.timestamp(), device
        )
        assert missing == 1  # i-unknown has no record: documented defaults
        for name in RAW_COUNTERS:
            expected = offline.get_column(name).cast(pl.Float64).to_numpy()
            np.testing.assert_allclose(raw[name], expected, atol=1e-6, err_msg=f"{user} {name}")
    assert by_user["u1"]["last_device"] == 0  # COUNTER_LOG impressions carry no device


def test_missing_records_and_fields_take_the_documented_defaults() -> None:
    """An item without a record, or a record from an older publisher lacking fields: zero
    counts, age 0, duration and price 0, category "" (so the user's clicks on "" count)."""
    now = 1.71e9
    full = {
        "item_impressions": 120, "item_clicks": 7, "item_impressions_1d": 9,
        "item_clicks_1d": 1, "item_impressions_7d": 40, "item_clicks_7d": 3,
        "category": "c1", "created_at_s": now - 86_400.0, "duration_seconds": 600.0,
        "price": 4.99,
    }  # fmt: skip
    old = {"item_impressions": 5, "item_clicks": 2}  # no windows, category, time, duration
    table = ItemTable.from_records([full, old, None])
    user = {"user_impressions": 40, "last_device": 2, "category_clicks": {"c1": 3, "": 2}}
    raw, missing = raw_from_table(user, table, np.array([2, 1, 0, 1]), now, device=None)
    assert missing == 1
    np.testing.assert_array_equal(raw["item_impressions"], [0, 5, 120, 5])
    np.testing.assert_array_equal(raw["item_clicks_7d"], [0, 0, 3, 0])
    np.testing.assert_array_equal(raw["item_age_seconds"], [0, 0, 86_400, 0])
    np.testing.assert_array_equal(raw["item_duration_seconds"], [0, 0, 600, 0])
    np.testing.assert_array_equal(raw["item_price"], [0, 0, 4.99, 0])
    np.testing.assert_array_equal(raw["user_category_clicks"], [0, 2, 3, 2])
    np.testing.assert_array_equal(raw["user_impressions"], [40] * 4)
    np.testing.assert_array_equal(raw["device_code"], [2] * 4)  # the user's last device
    assert raw["position"].tolist() == [0] * 4
    anonymous, _ = raw_from_table(None, table, np.array([0]), now, device="tv")
    assert anonymous["user_impressions"].tolist() == [0] and anonymous["device_code"][0] == 1
    assert anonymous["user_category_clicks"].tolist() == [0]
