"""Tests of the simulator: the logged events, the catalog it writes and its contract."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import feedforge.events.response as response_module
import feedforge.events.simulator as simulator_module
import feedforge.events.world as world_module
from feedforge.config import SimulatorConfig
from feedforge.errors import DataError
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from feedforge.events.simulator import (
    WORLD_FILE,
    SimulationSummary,
    World,
    affinity,
    generate_world,
    simulate,
)
from feedforge.workdir import Workdir

SMALL = SimulatorConfig(
    seed=3, n_users=600, n_items=400, n_days=5, n_categories=8, item_backlog_days=10
)


def _index(ids: pl.Series) -> np.ndarray:
    return ids.str.slice(1).cast(pl.Int64).to_numpy()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workdir, SimulationSummary]:
    workdir = Workdir.at(tmp_path_factory.mktemp("sim"))
    return workdir, simulate(SMALL, workdir)


@pytest.fixture(scope="module")
def events(run: tuple[Workdir, SimulationSummary]) -> pl.DataFrame:
    return EventLog(run[0].events_dir).scan().collect()


@pytest.fixture(scope="module")
def items(run: tuple[Workdir, SimulationSummary]) -> pl.DataFrame:
    return read_catalog(run[0])[1]


@pytest.fixture(scope="module")
def world(run: tuple[Workdir, SimulationSummary]) -> World:
    return World.load(run[0].catalog_dir / WORLD_FILE)


def _of(events: pl.DataFrame, kind: str) -> pl.DataFrame:
    return events.filter(pl.col("event_type") == kind)


# --- the simulated logs ----------------------------------------------------------------------


def test_large_catalog_simulates_on_a_pool(tmp_path: Path) -> None:
    config = SimulatorConfig(n_users=200, n_items=50_000, n_days=2, item_backlog_days=5)
    workdir = Workdir.at(tmp_path)
    began = time.perf_counter()
    summary = simulate(config, workdir)
    assert time.perf_counter() - began < 15
    shown = _of(EventLog(workdir.events_dir).scan().collect(), "impression")
    assert shown.height == summary.counts["impression"] > 0
    created = generate_world(config).item_created_at_s[_index(shown.get_column("item_id"))]
    shown_s = shown.get_column("timestamp").dt.epoch("s").to_numpy()
    assert np.all(created <= shown_s)


def test_same_seed_same_output(tmp_path: Path, events: pl.DataFrame) -> None:
    again = Workdir.at(tmp_path / "again")
    simulate(SMALL, again)
    repeat = EventLog(again.events_dir).scan().collect()
    assert repeat.sort("event_id").equals(events.sort("event_id"))
    other = Workdir.at(tmp_path / "other")
    simulate(SMALL.model_copy(update={"seed": 4}), other)
    different = EventLog(other.events_dir).scan().collect()
    assert not different.sort("event_id").equals(events.sort("event_id"))


def test_events_schema_and_payloads(
    run: tuple[Workdir, SimulationSummary], events: pl.DataFrame
) -> None:
    _, summary = run
    assert events.schema == pl.Schema(EVENT_SCHEMA)
    assert events.get_column("event_id").is_unique().all()
    counts = dict(events.get_column("event_type").value_counts().iter_rows())
    assert counts == {k: v for k, v in summary.counts.items() if v}
    assert summary.n_events == events.height
    assert set(counts) == {"impression", "click", "watch", "like", "purchase", "skip"}
    context = ["request_id", "position", "surface", "device"]
    assert events.select(pl.col(context).null_count().sum()).row(0) == (0, 0, 0, 0)
    assert set(events.get_column("device").unique()) <= {"tv", "mobile", "web"}
    assert events.get_column("position").is_between(0, SMALL.feed_size - 1).all()
    is_watch = pl.col("event_type") == "watch"
    assert events.filter(is_watch & pl.col("watch_seconds").is_null()).is_empty()
    assert events.filter(~is_watch & pl.col("watch_seconds").is_not_null()).is_empty()
    is_buy = pl.col("event_type") == "purchase"
    assert events.filter(is_buy & pl.col("price").is_null()).is_empty()
    assert events.filter(~is_buy & pl.col("price").is_not_null()).is_empty()
    assert events.get_column("value").null_count() == events.height


def test_catalog_written(run: tuple[Workdir, SimulationSummary], items: pl.DataFrame) -> None:
    manifest, _, users = read_catalog(run[0])
    assert items.schema == pl.Schema(ITEM_SCHEMA)
    assert users.schema == pl.Schema(USER_SCHEMA)
    assert manifest.counts == {"items": SMALL.n_items, "users": SMALL.n_users}
    assert manifest.extra["simulator"]["seed"] == SMALL.seed
    assert (run[0].catalog_dir / WORLD_FILE).is_file()


def test_feeds_are_well_formed(events: pl.DataFrame) -> None:
    feeds = (
        _of(events, "impression")
        .group_by("request_id")
        .agg(
            pl.col("item_id").n_unique().alias("distinct"),
            pl.len().alias("n"),
            pl.col("position").max().alias("last"),
            pl.col("user_id").n_unique().alias("users"),
            pl.col("timestamp").n_unique().alias("times"),
        )
    )
    assert (feeds.get_column("distinct") == feeds.get_column("n")).all()
    assert (feeds.get_column("last") == feeds.get_column("n") - 1).all()
    assert (feeds.get_column("users") == 1).all() and (feeds.get_column("times") == 1).all()
    assert feeds.get_column("n").mean() > SMALL.feed_size - 0.5  # feeds are nearly all full


def test_no_item_shown_before_created(events: pl.DataFrame, items: pl.DataFrame) -> None:
    joined = events.join(items.select("item_id", "created_at"), on="item_id", how="left")
    assert joined.get_column("created_at").null_count() == 0
    assert (joined.get_column("timestamp") >= joined.get_column("created_at")).all()
    start = SMALL.start
    new_items = items.filter(pl.col("created_at") > start).get_column("item_id")
    assert _of(events, "impression").get_column("item_id").is_in(new_items.implode()).any()


def test_followups_follow_their_impression(events: pl.DataFrame) -> None:
    keys = ["request_id", "position"]
    shown = _of(events, "impression").select(*keys, "user_id", "item_id", shown="timestamp")
    follow = events.filter(pl.col("event_type") != "impression").join(shown, on=keys, how="left")
    assert follow.get_column("shown").null_count() == 0
    assert (follow.get_column("timestamp") > follow.get_column("shown")).all()
    assert (follow.get_column("item_id") == follow.get_column("item_id_right")).all()
    assert (follow.get_column("user_id") == follow.get_column("user_id_right")).all()
    clicked = _of(events, "click").select(keys)
    for kind in ("watch", "like", "purchase"):
        assert _of(events, kind).join(clicked, on=keys, how="anti").is_empty(), kind
    assert _of(events, "skip").join(clicked, on=keys, how="semi").is_empty()


def test_watch_within_duration_and_purchase_priced(
    events: pl.DataFrame, items: pl.DataFrame
) -> None:
    watches = _of(events, "watch").join(items, on="item_id")
    assert (watches.get_column("watch_seconds") >= 0).all()
    assert (watches.get_column("watch_seconds") <= watches.get_column("duration_seconds")).all()
    buys = _of(events, "purchase").join(items, on="item_id", suffix="_item")
    assert buys.height > 0
    assert (buys.get_column("price_item") > 0).all()
    assert (buys.get_column("price") == buys.get_column("price_item")).all()


def test_rates_are_realistic(events: pl.DataFrame) -> None:
    counts = dict(events.get_column("event_type").value_counts().iter_rows())
    ctr = counts["click"] / counts["impression"]
    assert 0.05 <= ctr <= 0.2
    assert counts["purchase"] < counts["like"] < counts["click"]
    # Position bias shows in the logs: the top slot is clicked more than the last one.
    keys = ["request_id", "position"]
    shown = _of(events, "impression").join(
        _of(events, "click").select(keys).with_columns(clicked=pl.lit(1)), on=keys, how="left"
    )
    by_pos = shown.group_by("position").agg(pl.col("clicked").fill_null(0).mean()).sort("position")
    ctr_by_pos = by_pos.get_column("clicked").to_numpy()
    assert ctr_by_pos[0] > 1.5 * ctr_by_pos[-1]


def test_high_affinity_items_get_more_clicks(events: pl.DataFrame, world: World) -> None:
    keys = ["request_id", "position"]
    shown = _of(events, "impression").join(
        _of(events, "click").select(keys).with_columns(clicked=pl.lit(1)), on=keys, how="left"
    )
    users = _index(shown.get_column("user_id"))
    items = _index(shown.get_column("item_id"))
    a = affinity(world, users, items)
    clicked = shown.get_column("clicked").fill_null(0).to_numpy()
    high = a > np.median(a)
    assert clicked[high].mean() > 2 * clicked[~high].mean()


def test_clicked_items_are_not_reshown_on_later_days(events: pl.DataFrame) -> None:
    days = (
        _of(events, "click")
        .group_by("user_id", "item_id")
        .agg(pl.col("timestamp").dt.date().n_unique().alias("days"))
    )
    assert days.get_column("days").max() == 1


# --- simulate() contract ---------------------------------------------------------------------


def test_refuses_existing_log_unless_overwrite(tmp_path: Path) -> None:
    config = SimulatorConfig(n_users=50, n_items=40, n_days=2)
    workdir = Workdir.at(tmp_path)
    calls: list[tuple[int, int]] = []
    first = simulate(config, workdir, progress=lambda d, n: calls.append((d, n)))
    assert calls == [(1, 2), (2, 2)]
    with pytest.raises(DataError, match="fresh --workdir"):
        simulate(config, workdir)
    second = simulate(config, workdir, overwrite=True)
    assert second.counts == first.counts
    assert EventLog(workdir.events_dir).count() == first.n_events


def test_world_and_response_model_are_reexported() -> None:
    # Other stages import these names from feedforge.events.simulator.
    assert simulator_module.World is world_module.World
    assert simulator_module.generate_world is world_module.generate_world
    assert simulator_module.WORLD_FILE == world_module.WORLD_FILE
    assert simulator_module.response_probabilities is response_module.response_probabilities
    assert simulator_module.expected_watch_seconds is response_module.expected_watch_seconds
    assert simulator_module.affinity is response_module.affinity
    required = {
        "simulate",
        "generate_world",
        "World",
        "response_probabilities",
        "expected_watch_seconds",
        "SimulationSummary",
    }
    assert required <= set(simulator_module.__all__)
    assert all(hasattr(simulator_module, name) for name in simulator_module.__all__)
