"""Tests of the synthetic world, the user-response model and the simulator."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedforge.config import SimulatorConfig
from feedforge.errors import ArtifactError, DataError, ValidationError
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from feedforge.events.simulator import (
    WORLD_FILE,
    SimulationSummary,
    World,
    affinity,
    expected_watch_seconds,
    generate_world,
    response_probabilities,
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


# --- the world -------------------------------------------------------------------------------


def test_world_shapes_and_ranges() -> None:
    world = generate_world(SMALL)
    assert world.user_taste.shape == (600, 8)
    np.testing.assert_allclose(world.user_taste.sum(axis=1), 1.0, rtol=1e-5)
    assert world.item_vectors.shape == (400, world.user_vectors.shape[1])
    assert np.all(np.diff(world.item_created_at_s) >= 0), "items are indexed in creation order"
    assert world.item_created_at_s.min() >= world.start_s - 10 * 86_400
    assert world.item_created_at_s.max() < world.end_s
    assert (world.item_created_at_s > world.start_s).any(), "new items appear during the run"
    assert (world.item_price == 0).mean() > 0.6
    assert (world.item_price > 0).any()
    assert world.item_duration.min() > 0
    assert np.all(world.user_created_at_s < world.start_s)
    # Heavy-tailed popularity prior: the top 1% of items hold far more than 1% of the mass.
    pop = np.sort(np.exp(world.item_quality))[::-1]
    assert pop[:4].sum() / pop.sum() > 0.05


def test_world_frames_match_schemas() -> None:
    world = generate_world(SMALL)
    items, users = world.items_frame(), world.users_frame()
    assert items.schema == pl.Schema(ITEM_SCHEMA)
    assert users.schema == pl.Schema(USER_SCHEMA)
    assert items.get_column("item_id").is_unique().all()
    assert users.get_column("user_id").is_unique().all()
    assert items.get_column("item_id")[42] == "i000042"
    assert users.get_column("user_id")[123] == "u000123"
    n_cats = items.get_column("categories").list.len()
    assert n_cats.min() == 1 and n_cats.max() == 3
    assert (items.get_column("categories").list.n_unique() == n_cats).all()
    primary = items.get_column("categories").list.first().to_list()
    assert items.get_column("title").to_list() == [f"Item {i} ({c})" for i, c in enumerate(primary)]


def test_world_save_load_roundtrip(tmp_path: Path) -> None:
    world = generate_world(SMALL)
    world.save(tmp_path / "w.npz")
    loaded = World.load(tmp_path / "w.npz")
    for f in dataclasses.fields(World):
        np.testing.assert_array_equal(getattr(loaded, f.name), getattr(world, f.name))
    with np.load(tmp_path / "w.npz", allow_pickle=False) as data:  # never pickled
        assert "user_taste" in data.files
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ArtifactError):
        World.load(tmp_path / "bad.npz")
    with pytest.raises(ArtifactError, match="missing"):
        World.load(tmp_path / "absent.npz")


def test_large_catalog_is_fast() -> None:
    config = SimulatorConfig(n_users=1_000, n_items=200_000)
    began = time.perf_counter()
    world = generate_world(config)
    items = world.items_frame()
    assert time.perf_counter() - began < 15
    assert items.height == 200_000
    assert items.get_column("item_id").is_unique().all()


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


# --- the response model ----------------------------------------------------------------------


def test_click_probability_decreases_with_position() -> None:
    world = generate_world(SMALL)
    positions = np.arange(50)
    r = response_probabilities(world, 5, 17, positions, world.start_s)
    assert np.all(np.diff(r.p_click) < 0)
    assert np.all(np.diff(r.p_examine) < 0)
    assert r.p_examine[0] == pytest.approx(1.0)
    np.testing.assert_allclose(r.p_click, r.p_examine * r.p_attract)


def test_response_increases_with_affinity() -> None:
    world = generate_world(SMALL)
    # Remove quality and freshness differences so that only affinity varies across items.
    flat = dataclasses.replace(
        world,
        item_quality=np.zeros_like(world.item_quality),
        item_created_at_s=np.full_like(world.item_created_at_s, world.start_s - 30 * 86_400),
    )
    items = np.arange(flat.n_items)
    r = response_probabilities(flat, 11, items, 2, flat.start_s)
    order = np.argsort(r.affinity)
    a = r.affinity[order]
    assert a[-1] - a[0] > 3, "affinities should spread widely"
    strictly = np.diff(a) > 1e-9
    for name in ("p_attract", "p_click", "completion_mean", "p_like_given_click"):
        diffs = np.diff(getattr(r, name)[order])
        assert np.all(diffs[strictly] >= 0), name
        assert getattr(r, name)[order][-1] > getattr(r, name)[order][0], name
    assert np.all(np.diff(r.p_skip[order])[strictly] <= 0)
    np.testing.assert_allclose(r.affinity, affinity(flat, 11, items))


def test_response_probabilities_are_consistent() -> None:
    world = generate_world(SMALL)
    rng = np.random.default_rng(0)
    users = rng.integers(0, world.n_users, 5_000)
    items = rng.integers(0, world.n_items, 5_000)
    positions = rng.integers(0, 20, 5_000)
    r = response_probabilities(world, users, items, positions, world.end_s)
    for name in ("p_examine", "p_attract", "p_click", "p_like", "p_purchase", "p_skip"):
        value = getattr(r, name)
        assert value.shape == (5_000,)
        assert np.all((value >= 0) & (value <= 1)), name
    assert np.all(r.p_click + r.p_skip <= 1 + 1e-12)
    assert np.all(r.p_purchase[world.item_price[items] == 0] == 0)
    assert np.all(r.expected_watch_seconds <= r.p_click * world.item_duration[items] + 1e-9)
    np.testing.assert_allclose(
        expected_watch_seconds(world, users, items, positions, world.end_s),
        r.expected_watch_seconds,
    )
    # Fresher items are more attractive, all else equal.
    item = int(np.argmax(world.item_created_at_s))
    created = world.item_created_at_s[item]
    later = response_probabilities(world, 0, item, 0, [created, created + 30 * 86_400])
    assert later.p_attract[0] > later.p_attract[1]


def test_negative_position_is_rejected() -> None:
    with pytest.raises(ValidationError):
        response_probabilities(generate_world(SMALL), 0, 0, -1, 0.0)


# --- the simulated logs ----------------------------------------------------------------------


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
