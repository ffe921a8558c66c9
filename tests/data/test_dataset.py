"""Data tests of a built dataset: schema, uniqueness, allowed values, splits, id maps, card.

Every check reads the files the build wrote and compares them with the event log and the
catalog they came from (see ``conftest.py`` for the simulated world).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING

import polars as pl
import pytest

from feedforge.artifacts import read_manifest
from feedforge.datasets.build import (
    DATASET_ARTIFACT,
    DATASET_SCHEMA_VERSION,
    SNAPSHOT_FRAMES,
    SPLITS,
)
from feedforge.datasets.idmap import IdMap
from feedforge.features.definitions import RAW_COUNTERS
from feedforge.features.objectives import objective_value, positive_flags
from feedforge.features.offline import snapshot_counters

if TYPE_CHECKING:
    from conftest import Built

COUNTERS = RAW_COUNTERS[1:6]  # the integer counters (position and item age aside)
FLAGS = ("click", "watch", "like", "purchase", "rated")

RANKING_COLUMNS: dict[str, type[pl.DataType] | pl.DataType] = {
    "event_id": pl.String,
    "request_id": pl.String,
    "timestamp": pl.Datetime("us", "UTC"),
    "user_id": pl.String,
    "item_id": pl.String,
    "position": pl.Int32,
    "device": pl.String,
    "category": pl.String,
    "item_age_seconds": pl.Float64,
    "clicked": pl.Boolean,
    "watch_seconds": pl.Float64,
    "liked": pl.Boolean,
    "purchased": pl.Boolean,
    "revenue": pl.Float64,
    "watched": pl.Boolean,
    "user_idx": pl.Int32,
    "item_idx": pl.Int32,
}

POSITIVE_COLUMNS: dict[str, type[pl.DataType] | pl.DataType] = {
    "event_id": pl.String,
    "timestamp": pl.Datetime("us", "UTC"),
    "user_id": pl.String,
    "item_id": pl.String,
    "event_type": pl.String,
    **dict.fromkeys(FLAGS, pl.Boolean),
    "weight": pl.Float32,
    "user_idx": pl.Int32,
    "item_idx": pl.Int32,
}


@pytest.mark.parametrize("split", SPLITS)
def test_ranking_schema(built: Built, split: str) -> None:
    frame = built.ranking(split)
    assert frame.height > 0
    assert set(frame.columns) == set(RANKING_COLUMNS) | set(RAW_COUNTERS)
    for name, dtype in RANKING_COLUMNS.items():
        assert frame.schema[name] == dtype, name
    for name in COUNTERS:
        assert frame.schema[name].is_integer(), name


@pytest.mark.parametrize("split", SPLITS)
def test_positives_schema(built: Built, split: str) -> None:
    frame = built.positives(split)
    assert frame.height > 0
    assert dict(frame.schema) == POSITIVE_COLUMNS


def test_event_ids_are_unique_across_all_files(built: Built) -> None:
    ranking = pl.concat([built.ranking(s).select("event_id") for s in SPLITS])
    positives = pl.concat([built.positives(s).select("event_id") for s in SPLITS])
    assert ranking.get_column("event_id").is_unique().all()
    assert positives.get_column("event_id").is_unique().all()


@pytest.mark.parametrize("split", SPLITS)
def test_ranking_allowed_values(built: Built, split: str) -> None:
    frame = built.ranking(split)
    required = [
        "event_id",
        "request_id",
        "timestamp",
        "user_id",
        "item_id",
        "position",
        *COUNTERS,
        "item_age_seconds",
        "clicked",
        "watched",
        "liked",
        "purchased",
        "watch_seconds",
        "revenue",
        "category",
    ]
    assert frame.select(required).null_count().sum_horizontal().item() == 0
    assert frame.get_column("position").is_between(0, built.sim.feed_size - 1).all()
    for name in COUNTERS:
        assert (frame.get_column(name) >= 0).all(), name
    assert (frame.get_column("watch_seconds") >= 0).all()
    assert (frame.get_column("revenue") >= 0).all()
    # watched needs watch time; a purchase needs revenue (every simulated price is > 0).
    assert frame.filter(pl.col("watched") & (pl.col("watch_seconds") <= 0)).is_empty()
    assert (frame.get_column("purchased") == (frame.get_column("revenue") > 0)).all()
    categories = set(built.items.get_column("categories").list.first().drop_nulls()) | {""}
    assert set(frame.get_column("category").unique()) <= categories
    # the user never clicked more in one category than in all of them
    assert (frame.get_column("user_category_clicks") <= frame.get_column("user_clicks")).all()
    assert set(frame.get_column("device").unique()) <= {"tv", "mobile", "web", None}


@pytest.mark.parametrize("split", SPLITS)
def test_positives_allowed_values(built: Built, split: str) -> None:
    frame = built.positives(split)
    assert frame.drop("user_idx", "item_idx").null_count().sum_horizontal().item() == 0
    assert set(frame.get_column("event_type").unique()) <= {
        "click",
        "watch",
        "like",
        "purchase",
        "rating",
    }
    assert (frame.get_column("weight") > 0).all()
    assert frame.select(pl.any_horizontal(FLAGS)).to_series().all()
    # the flag of each row matches its event type (the simulator writes no ratings)
    for kind in ("click", "watch", "like", "purchase"):
        flagged = frame.filter(pl.col(kind))
        assert (flagged.get_column("event_type") == kind).all(), kind
    assert not frame.get_column("rated").any()


def test_every_row_lands_in_the_split_of_its_timestamp(built: Built) -> None:
    t1, t2, end = built.bounds["t1"], built.bounds["t2"], built.bounds["end"]
    assert built.bounds["start"] < t1 < t2 < end
    assert t2 == end - timedelta(days=2) and t1 == t2 - timedelta(days=2)
    ranges = {"train": (None, t1), "validation": (t1, t2), "test": (t2, None)}
    for split, (lo, hi) in ranges.items():
        for frame in (built.ranking(split), built.positives(split)):
            ts = frame.get_column("timestamp")
            if lo is not None:
                assert (ts >= lo).all(), split
            if hi is not None:
                assert (ts < hi).all(), split
            assert (ts <= end).all()


def test_every_positive_event_is_in_exactly_one_split(built: Built) -> None:
    durations = dict(built.items.select("item_id", "duration_seconds").iter_rows())
    threshold = built.settings.dataset.watch_completion
    expected = set()
    for row in built.events.iter_rows(named=True):
        kind = row["event_type"]
        if kind in ("click", "like", "purchase"):
            expected.add(row["event_id"])
        elif kind == "watch":
            duration = durations.get(row["item_id"])
            ok = (
                row["watch_seconds"] > 0
                if duration is None
                else (row["watch_seconds"] >= threshold * duration)
            )
            if ok:
                expected.add(row["event_id"])
    stored = pl.concat([built.positives(s) for s in SPLITS]).get_column("event_id")
    assert stored.len() == len(expected)
    assert set(stored) == expected


def test_impressions_crossing_a_split_edge_are_absent(built: Built) -> None:
    t1, t2, end = built.bounds["t1"], built.bounds["t2"], built.bounds["end"]
    window = built.window
    impressions = built.events.filter(pl.col("event_type") == "impression")
    crossing = set()
    for event_id, ts in impressions.select("event_id", "timestamp").iter_rows():
        if any(ts < edge < ts + window for edge in (t1, t2)) or ts + window > end:
            crossing.add(event_id)
    assert crossing, "the simulated log should have impressions near the split edges"
    kept = pl.concat([built.ranking(s) for s in SPLITS])
    kept_ids = set(kept.get_column("event_id"))
    assert not kept_ids & crossing
    # ...and nothing else is missing: every other impression has exactly one ranking row.
    assert kept_ids | crossing == set(impressions.get_column("event_id"))
    card = json.loads((built.workdir.dataset_dir / "card.json").read_text())
    assert card["impressions_dropped_at_split_edges"] == len(crossing)
    # no kept row's window reaches past its split's end
    for split, hi in (("train", t1), ("validation", t2), ("test", end)):
        last = built.ranking(split).get_column("timestamp").max()
        assert last + window <= hi + timedelta(microseconds=1)


def test_id_maps_hold_exactly_the_train_users_and_items(built: Built) -> None:
    train = built.events.filter(pl.col("timestamp") < built.bounds["t1"])
    later = built.events.filter(pl.col("timestamp") >= built.bounds["t1"])
    users, items = built.dataset.users, built.dataset.items
    assert set(users.ids) == set(train.get_column("user_id"))
    assert set(items.ids) == set(train.get_column("item_id"))
    later_only_users = set(later.get_column("user_id")) - set(train.get_column("user_id"))
    later_only_items = set(later.get_column("item_id")) - set(train.get_column("item_id"))
    assert built.late_user in later_only_users
    assert built.late_item in later_only_items
    assert not later_only_users & set(users.ids)
    assert not later_only_items & set(items.ids)
    # the files on disk are what load_dataset returned
    ids_dir = built.workdir.dataset_dir / "ids"
    assert IdMap.load(ids_dir / "users.parquet").ids.to_list() == users.ids.to_list()
    assert IdMap.load(ids_dir / "items.parquet").ids.to_list() == items.ids.to_list()


@pytest.mark.parametrize("split", SPLITS)
def test_indices_match_the_id_maps(built: Built, split: str) -> None:
    for frame in (built.ranking(split), built.positives(split)):
        for column, ids in (("user", built.dataset.users), ("item", built.dataset.items)):
            raw, idx = frame.get_column(f"{column}_id"), frame.get_column(f"{column}_idx")
            known = raw.is_in(ids.ids.implode())
            assert (idx.is_null() == ~known).all(), column
            assert idx.drop_nulls().is_between(0, len(ids) - 1).all()
            known_rows = frame.filter(known)
            assert ids.id_of(known_rows.get_column(f"{column}_idx").to_numpy()) == (
                known_rows.get_column(f"{column}_id").to_list()
            )
    if split == "train":
        assert built.ranking(split).get_column("user_idx").null_count() == 0
        assert built.positives(split).get_column("item_idx").null_count() == 0


def test_late_only_ids_are_unknown_in_the_test_split(built: Built) -> None:
    late = built.ranking("test").filter(pl.col("user_id") == built.late_user)
    assert late.height == 1
    assert late.item(0, "user_idx") is None and late.item(0, "item_idx") is None
    assert late.item(0, "clicked") is True


def test_manifest_counts_match_the_files(built: Built) -> None:
    manifest = read_manifest(
        built.workdir.dataset_dir, DATASET_ARTIFACT, (DATASET_SCHEMA_VERSION,), "build"
    )
    assert manifest == built.manifest
    for split in SPLITS:
        assert manifest.counts[f"ranking_{split}"] == built.ranking(split).height
        assert manifest.counts[f"positives_{split}"] == built.positives(split).height
    assert manifest.extra["objective"] == built.settings.objective
    assert manifest.extra["n_categories"] == built.sim.n_categories
    assert manifest.inputs["catalog"]


def test_dataset_card(built: Built) -> None:
    card = json.loads((built.workdir.dataset_dir / "card.json").read_text())
    assert card["objective"] == built.settings.objective
    flags = positive_flags(objective_value(built.settings.objective))
    assert card["objective_label"] == " | ".join(flags)
    assert card["split"] == built.manifest.extra["split"]
    assert card["users_in_id_map"] == len(built.dataset.users)
    assert card["items_in_id_map"] == len(built.dataset.items)
    assert card["catalog_items"] == built.items.height
    assert card["events"] == built.events.height
    assert card["raw_counters"] == list(RAW_COUNTERS)
    markdown = (built.workdir.dataset_dir / "card.md").read_text()
    for split in SPLITS:
        rank, pos, entry = built.ranking(split), built.positives(split), card["splits"][split]
        assert entry["impressions"] == rank.height
        assert entry["positives"] == pos.height
        assert entry["users"] == pos.get_column("user_id").n_unique()
        assert entry["items"] == pos.get_column("item_id").n_unique()
        for flag, column in (
            ("click", "clicked"),
            ("watch", "watched"),
            ("like", "liked"),
            ("purchase", "purchased"),
        ):
            assert entry["label_rates"][flag] == pytest.approx(rank.get_column(column).mean())
        assert 0 < entry["label_rates"]["click"] < 1
        assert entry["positives_by_kind"]["click"] == pos.get_column("click").sum()
        assert f"| {split} | {pos.height} |" in markdown
    for name, value in card["split"].items():
        assert f"{name} = {value}" in markdown


def test_train_interactions_are_the_known_train_positives(built: Built) -> None:
    inter = built.dataset.train_interactions()
    positives = built.positives("train").drop_nulls(["user_idx", "item_idx"])
    assert len(inter.user_idx) == positives.height
    assert inter.n_users == len(built.dataset.users)
    assert inter.n_items == len(built.dataset.items)
    assert inter.user_idx.max() < inter.n_users and inter.item_idx.max() < inter.n_items


def test_feature_snapshot_is_the_snapshot_at_the_test_start(built: Built) -> None:
    assert built.dataset.test_start == built.bounds["t2"]
    fresh = snapshot_counters(built.events.lazy(), built.items, built.bounds["t2"])
    stored = built.dataset.feature_snapshot()
    for name, want, got in zip(SNAPSHOT_FRAMES, fresh, stored, strict=True):
        key = [c for c in ("user_id", "item_id", "category") if c in want.columns]
        assert got.schema == want.schema, name
        assert got.sort(key).equals(want.sort(key)), name
        assert built.manifest.counts[f"snapshot_{name}"] == got.height
    # the late-only user's events are in the test window, after the snapshot
    assert built.late_user not in set(stored[0].get_column("user_id"))


def test_test_outcomes_sum_the_test_windows_events(built: Built) -> None:
    t2, end = built.bounds["t2"], built.bounds["end"]
    expected: dict[tuple[str, str], list[float]] = {}
    for row in built.events.iter_rows(named=True):
        kind = row["event_type"]
        if not t2 <= row["timestamp"] <= end or kind not in ("click", "watch", "purchase"):
            continue
        sums = expected.setdefault((row["user_id"], row["item_id"]), [0.0, 0.0, 0.0])
        if kind == "click":
            sums[0] += 1
        elif kind == "watch":
            sums[1] += row["watch_seconds"]
        else:
            sums[2] += row["price"]
    outcomes = built.dataset.test_outcomes()
    assert built.manifest.counts["outcomes_test"] == outcomes.height == len(expected)
    assert outcomes.select("user_id", "item_id").is_duplicated().sum() == 0
    for row in outcomes.iter_rows(named=True):
        want = expected[(row["user_id"], row["item_id"])]
        got = [row["clicks"], row["watch_seconds"], row["revenue"]]
        assert got == pytest.approx(want), (row["user_id"], row["item_id"])
    late = outcomes.filter(pl.col("user_id") == built.late_user)
    assert late.height == 1 and late.item(0, "clicks") == 1
    assert late.item(0, "user_idx") is None and late.item(0, "item_idx") is None
