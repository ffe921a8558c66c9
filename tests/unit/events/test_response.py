"""Tests of the ground-truth user-response model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from feedforge.config import SimulatorConfig
from feedforge.errors import ValidationError
from feedforge.events.response import (
    affinity,
    affinity_matrix,
    expected_watch_seconds,
    response_probabilities,
)
from feedforge.events.world import generate_world

SMALL = SimulatorConfig(
    seed=3, n_users=600, n_items=400, n_days=5, n_categories=8, item_backlog_days=10
)


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


def test_affinity_matrix_matches_affinity() -> None:
    world = generate_world(SMALL)
    users, items = np.arange(0, 600, 7), np.arange(0, 400, 3)
    for latent_weight in (0.5, 1.0):
        expected = affinity(world, users[:, None], items[None, :], latent_weight)
        got = affinity_matrix(world, users, items, latent_weight)
        assert got.shape == (len(users), len(items)) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
