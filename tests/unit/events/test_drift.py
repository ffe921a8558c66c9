"""The drifting world: day 0 is the history's world plus its new items, tastes move at the
documented rates, the shift happens on its day, and every draw is seeded."""

from __future__ import annotations

import numpy as np
import pytest

from feedforge.config import SimulatorConfig
from feedforge.errors import ValidationError
from feedforge.events.drift import DriftingWorld, DriftSpec
from feedforge.events.world import DAY_S, generate_world


@pytest.fixture(scope="module")
def drifting() -> DriftingWorld:
    base = generate_world(SimulatorConfig(n_users=300, n_items=100, n_days=5, seed=1))
    return DriftingWorld(base, DriftSpec(new_items_per_day=4, shift_day=3, seed=2), days=6)


def test_day_zero_keeps_tastes_and_adds_the_days_items(drifting: DriftingWorld) -> None:
    base, day0 = drifting.base, drifting.day(0)
    np.testing.assert_allclose(day0.user_taste, base.user_taste, atol=1e-6)
    np.testing.assert_allclose(day0.user_vectors, base.user_vectors, atol=1e-6)
    assert day0.n_items == base.n_items + 4 and day0.end_s == base.end_s
    assert (day0.item_created_at_s[-4:] == base.end_s).all()
    assert day0.item_ids()[-1] == "i000103"
    np.testing.assert_array_equal(drifting.new_item_indices(2), np.arange(108, 112))


def test_tastes_drift_at_the_documented_rates(drifting: DriftingWorld) -> None:
    base, day2 = drifting.base, drifting.day(2)
    spec = drifting.spec  # before the shift day every user drifts gradually
    cos = (day2.user_vectors * base.user_vectors).sum(1) / (
        np.linalg.norm(day2.user_vectors, axis=1) * np.linalg.norm(base.user_vectors, axis=1)
    )
    np.testing.assert_allclose(cos, np.cos(2 * spec.latent_rate), atol=1e-4)
    np.testing.assert_allclose(
        np.linalg.norm(day2.user_vectors, axis=1),
        np.linalg.norm(base.user_vectors, axis=1),
        rtol=1e-4,
    )
    np.testing.assert_allclose(day2.user_taste.sum(1), 1.0, atol=1e-5)
    assert day2.end_s == base.end_s + 2 * DAY_S


def test_the_shift_replaces_a_share_of_users_on_its_day(drifting: DriftingWorld) -> None:
    before, on = drifting.day(2), drifting.day(3)
    moved = np.abs(on.user_taste - before.user_taste).sum(1) > 0.5
    shifted = drifting._shifted
    assert 0.35 < shifted.mean() < 0.65
    assert moved[shifted].mean() > 0.8 and moved[~shifted].mean() < 0.05
    again = DriftingWorld(drifting.base, drifting.spec, days=6).day(3)
    np.testing.assert_array_equal(again.user_vectors, on.user_vectors)
    with pytest.raises(ValidationError, match="day 6"):
        drifting.day(6)
