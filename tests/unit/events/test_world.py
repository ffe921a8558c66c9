"""Tests of the synthetic world: generation, catalog frames, save and load."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedforge.config import SimulatorConfig
from feedforge.errors import ArtifactError
from feedforge.events.schema import ITEM_SCHEMA, USER_SCHEMA
from feedforge.events.world import World, generate_world

SMALL = SimulatorConfig(
    seed=3, n_users=600, n_items=400, n_days=5, n_categories=8, item_backlog_days=10
)


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
