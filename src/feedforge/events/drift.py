"""A world that moves: tastes drift, new items arrive every day, and tastes shift abruptly on a
known day. The ground truth of the continuous-training benchmark (``feedforge bench loop``).

:class:`DriftingWorld` wraps a :class:`~feedforge.events.world.World` (the world of the
simulated history) and returns the world of each following day ``d = 0, 1, ...``
(:meth:`DriftingWorld.day`), every draw seeded by :attr:`DriftSpec.seed`:

* **Gradual drift.** Each user has a second category taste (a fresh Dirichlet draw) and a
  second latent direction (a fresh draw, orthogonalised to the user's vector and scaled to
  its norm). On day ``d`` the category taste is ``(1 - a) * taste + a * taste'`` with ``a =
  min(1, taste_rate * d)`` and the latent vector is ``cos(t) v + sin(t) w`` with ``t =
  latent_rate * d`` radians: with the defaults, after 14 days 42 % of a user's category
  taste has moved and the latent vector has turned 48 degrees.
* **New items.** ``new_items_per_day`` items are created at the start of each day, drawn
  like the world's own items (1-3 categories, latent vector, a popularity prior drawn from the
  world's, duration, price); their ids continue the world's sequence.
* **Abrupt shift.** On ``shift_day`` a ``shift_share`` of the users get a new category
  taste and a new latent vector at once (the drift then continues from them).

The response model (:mod:`feedforge.events.response`) is unchanged; only its inputs move.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from feedforge.errors import ValidationError
from feedforge.events.world import (
    DAY_S,
    LATENT_DIM,
    PRICES,
    TASTE_CONCENTRATION,
    World,
    seeded_rng,
)


@dataclass(frozen=True)
class DriftSpec:
    """The drift's rates (see the module docs)."""

    taste_rate: float = 0.03
    latent_rate: float = 0.06
    new_items_per_day: int = 20
    shift_day: int | None = 7
    shift_share: float = 0.5
    seed: int = 0


class DriftingWorld:
    """The world of each day after ``base`` (see the module docs).

    Args:
        base: The world of the simulated history (its end is the start of day 0).
        spec: The drift.
        days: How many days are drawn ahead (new items of every day are drawn up front).
    """

    def __init__(self, base: World, spec: DriftSpec, days: int) -> None:
        if days < 1 or spec.new_items_per_day < 0 or not 0 <= spec.shift_share <= 1:
            raise ValidationError(f"drift: days {days}, spec {spec} out of range")
        self.base, self.spec, self.days = base, spec, days
        rng = seeded_rng(spec.seed, 0xD21F7)
        n_u, n_c = base.n_users, base.user_taste.shape[1]
        self._taste_to = rng.dirichlet(np.full(n_c, TASTE_CONCENTRATION), n_u).astype(np.float32)
        self._shifted = rng.random(n_u) < spec.shift_share
        self._shift_taste = rng.dirichlet(np.full(n_c, TASTE_CONCENTRATION), n_u).astype(np.float32)
        scale = np.float32(LATENT_DIM**-0.25)
        self._shift_vectors = rng.standard_normal((n_u, LATENT_DIM), dtype=np.float32) * scale
        self._turn = self._second_direction(base.user_vectors, rng)
        self._turn_shifted = self._second_direction(self._shift_vectors, rng)
        self._items = self._new_items(rng, days)

    @staticmethod
    def _second_direction(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random direction per row, orthogonal to it, of the same norm."""
        draw = rng.standard_normal(vectors.shape).astype(np.float64)
        v = vectors.astype(np.float64)
        norm2 = np.maximum((v * v).sum(axis=1, keepdims=True), 1e-12)
        draw -= (draw * v).sum(axis=1, keepdims=True) / norm2 * v
        draw *= np.sqrt(norm2) / np.maximum(np.linalg.norm(draw, axis=1, keepdims=True), 1e-12)
        return draw.astype(np.float32)

    def _new_items(self, rng: np.random.Generator, days: int) -> dict[str, np.ndarray]:
        base, n = self.base, self.spec.new_items_per_day * days
        n_c = base.user_taste.shape[1]
        n_cats = np.minimum(rng.choice(3, n, p=(0.5, 0.35, 0.15)) + 1, n_c)
        primary = rng.choice(n_c, n)
        off1 = rng.integers(1, max(n_c, 2), n)
        off2 = rng.integers(1, max(n_c - 1, 2), n)
        off2 += off2 >= off1
        category = np.stack([primary, (primary + off1) % n_c, (primary + off2) % n_c], axis=1)
        category[np.arange(3)[None, :] >= n_cats[:, None]] = -1
        day = np.repeat(np.arange(days), self.spec.new_items_per_day)
        return {
            "item_category": category.astype(np.int16),
            "item_vectors": rng.standard_normal((n, LATENT_DIM), dtype=np.float32)
            * np.float32(LATENT_DIM**-0.25),
            "item_quality": rng.choice(base.item_quality, n).astype(np.float32),
            "item_created_at_s": (base.end_s + day * DAY_S).astype(np.int64),
            "item_duration": np.round(
                np.clip(rng.lognormal(np.log(1800.0), 0.5, n), 120.0, 4 * 3600.0)
            ),
            "item_price": np.where(rng.random(n) < 0.15, rng.choice(PRICES, n), 0.0),
        }

    def new_item_indices(self, day: int) -> np.ndarray:
        """The indices (in :meth:`day`'s world) of the items created at the start of ``day``."""
        per_day = self.spec.new_items_per_day
        start = self.base.n_items + day * per_day
        return np.arange(start, start + per_day)

    def day(self, day: int) -> World:
        """The world of ``day`` (0: the first day after the history): its users' tastes, the
        items created up to its start, and ``n_days`` extended so its ``end_s`` is the day's
        start."""
        if not 0 <= day < self.days:
            raise ValidationError(f"drift: day {day} outside [0, {self.days})")
        spec, base = self.spec, self.base
        shifted = (
            self._shifted
            if spec.shift_day is not None and day >= spec.shift_day
            else np.zeros_like(self._shifted)
        )
        since = np.where(shifted, day - (spec.shift_day or 0), day).astype(np.float32)
        taste0 = np.where(shifted[:, None], self._shift_taste, base.user_taste)
        mix = np.minimum(1.0, spec.taste_rate * since)[:, None]
        taste = (1 - mix) * taste0 + mix * self._taste_to
        vectors0 = np.where(shifted[:, None], self._shift_vectors, base.user_vectors)
        turn = np.where(shifted[:, None], self._turn_shifted, self._turn)
        angle = (spec.latent_rate * since)[:, None]
        vectors = np.cos(angle) * vectors0 + np.sin(angle) * turn
        n_new = (day + 1) * spec.new_items_per_day
        items = {
            name: np.concatenate([getattr(base, name), values[:n_new]])
            for name, values in self._items.items()
        }
        return replace(
            base,
            user_taste=taste.astype(np.float32),
            user_vectors=vectors.astype(np.float32),
            n_days=base.n_days + day,
            **items,
        )
