"""The simulator: feed sessions of a synthetic world, logged through a mixed policy.

This is feedforge's embedded default data. :func:`simulate` draws the latent world
(:mod:`feedforge.events.world`), plays ``n_days`` of feed sessions through a mixed logging
policy, samples each impression's outcome from the ground-truth user-response model
(:mod:`feedforge.events.response`) and writes the catalog and the event log of a work
directory. The world and response-model names are re-exported here for existing imports.

Everything is vectorised with numpy and polars; the only Python loops run over days and over
chunks of sessions. The same seed gives identical worlds, catalogs and events.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import polars as pl
from scipy import sparse

from feedforge.config import SimulatorConfig
from feedforge.errors import DataError
from feedforge.events.catalog import write_catalog
from feedforge.events.log import EventLog
from feedforge.events.response import (
    BETA_CONCENTRATION,
    ResponseProbabilities,
    affinity,
    affinity_matrix,
    expected_watch_seconds,
    response_probabilities,
)
from feedforge.events.schema import EventType
from feedforge.events.world import (
    DAY_S,
    DEVICES,
    WORLD_FILE,
    FloatArray,
    IntArray,
    World,
    format_ids,
    generate_world,
    seeded_rng,
    sequential_ids,
    to_timestamps,
)
from feedforge.workdir import Workdir

__all__ = [
    "WORLD_FILE",
    "ResponseProbabilities",
    "SimulationSummary",
    "World",
    "affinity",
    "expected_watch_seconds",
    "generate_world",
    "response_probabilities",
    "simulate",
]

SURFACE = "home"
# Sessions per hour of day (UTC): a small lunch bump and an evening peak.
_HOURLY = (
    0.2
    + np.exp(-(((np.arange(24) - 20.5) / 2.5) ** 2))
    + 0.4 * np.exp(-(((np.arange(24) - 12.5) / 1.5) ** 2))
)
# Logging policy: uniform exploration, popularity and (noisy) taste shares; catalog pool cap.
POLICY_EXPLORE, POLICY_POPULAR, POLICY_TEMPERATURE, POOL_MAX = 0.15, 0.25, 0.5, 4096


def _logging_policy(
    world: World,
    rng: np.random.Generator,
    users: IntArray,
    times: FloatArray,
    feed_size: int,
    watched: sparse.csr_array,
) -> IntArray:
    """Pick the feeds of sessions ``(users, times)``: an ``(S, feed_size)`` item matrix.

    Feeds are weighted samples without replacement (drawn order = position) from the mixture
    ``0.15 uniform + 0.25 popularity + 0.6 softmax(policy affinity)`` over items created
    before the session and not yet clicked by the user on an earlier day. The policy affinity
    sees the category taste fully but only half of the latent term, so logs cover the catalog
    while leaving room for learned models. Catalogs larger than :data:`POOL_MAX` are scored on a
    candidate pool (half uniform, half popularity draws) per chunk of sessions. Slots that
    cannot be filled hold ``-1`` (they trail the filled ones).
    """
    n_avail = int(np.searchsorted(world.item_created_at_s, times.max(initial=0), side="right"))
    feeds = np.full((len(users), feed_size), -1, dtype=np.int64)
    if n_avail == 0 or len(users) == 0:
        return feeds
    pop = np.exp(world.item_quality[:n_avail])
    cum_pop = np.cumsum(pop, dtype=np.float64)
    chunk = max(1, 2_000_000 // min(n_avail, POOL_MAX))
    for lo in range(0, len(users), chunk):
        u, t = users[lo : lo + chunk], times[lo : lo + chunk]
        if n_avail <= POOL_MAX:
            pool = np.arange(n_avail)
        else:
            draws = rng.random(POOL_MAX // 2) * cum_pop[-1]
            popular = np.minimum(np.searchsorted(cum_pop, draws, side="right"), n_avail - 1)
            pool = np.unique(np.concatenate([rng.integers(0, n_avail, POOL_MAX // 2), popular]))
        valid = world.item_created_at_s[pool][None, :] <= t[:, None]
        valid &= watched[u][:, pool].toarray() == 0
        n_valid = valid.sum(axis=1, keepdims=True, dtype=np.float32)
        logits = affinity_matrix(world, u, pool, 0.5)
        logits *= np.float32(1.0 / POLICY_TEMPERATURE)
        logits[~valid] = -np.inf
        with np.errstate(divide="ignore", invalid="ignore"):  # rows without a valid item
            peak = logits.max(axis=1, keepdims=True)
            mix = np.exp(logits - np.where(n_valid > 0, peak, 0), out=logits)
            mix *= np.float32(1 - POLICY_EXPLORE - POLICY_POPULAR) / mix.sum(axis=1, keepdims=True)
            popular_w = valid * pop[pool]
            popular_w *= np.float32(POLICY_POPULAR) / popular_w.sum(axis=1, keepdims=True)
            mix += popular_w
            mix += valid * (np.float32(POLICY_EXPLORE) / n_valid)
            # Exponential races: the k smallest E_i / w_i are a weighted sample without
            # replacement, in order (the same law as Gumbel-top-k on log w).
            key = rng.standard_exponential(mix.shape, dtype=np.float32) / mix
        key[~valid] = np.inf
        k = min(feed_size, len(pool))
        top = np.argpartition(key, k - 1, axis=1)[:, :k]
        top_key = np.take_along_axis(key, top, 1)
        order = np.argsort(top_key, axis=1, kind="stable")
        top, top_key = np.take_along_axis(top, order, 1), np.take_along_axis(top_key, order, 1)
        picked = pool[top]
        picked[~np.isfinite(top_key)] = -1
        feeds[lo : lo + chunk, :k] = picked
    return feeds


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate` wrote.

    Attributes:
        counts: Events per event type.
        n_requests: Feed requests (sessions) with at least one impression.
        seconds: Wall-clock duration of the simulation.
    """

    n_users: int
    n_items: int
    n_days: int
    n_requests: int
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_events(self) -> int:
        return sum(self.counts.values())


_SIM_TYPES = (
    EventType.IMPRESSION,
    EventType.CLICK,
    EventType.WATCH,
    EventType.LIKE,
    EventType.PURCHASE,
    EventType.SKIP,
)


class _Day(NamedTuple):
    frame: pl.DataFrame
    n_requests: int
    clicked_users: IntArray
    clicked_items: IntArray


def _simulate_day(
    world: World,
    config: SimulatorConfig,
    day: int,
    watched: sparse.csr_array,
    ids: tuple[pl.Series, pl.Series],
    first_event: int,
    first_request: int,
) -> _Day:
    """Sessions, feeds and sampled responses of one day, as an event frame."""
    rng = seeded_rng(config.seed, 1, day)
    n_sessions = rng.poisson(world.user_activity * config.sessions_per_user_day)
    users = np.repeat(np.arange(world.n_users), n_sessions)
    hours = rng.choice(24, len(users), p=_HOURLY / _HOURLY.sum())
    times = world.start_s + day * DAY_S + (hours + rng.random(len(users))) * 3600.0
    order = np.argsort(times, kind="stable")
    users, times = users[order], times[order]
    own = rng.random(len(users)) < 0.7
    devices = np.where(own, world.user_device[users], rng.integers(0, len(DEVICES), len(users)))

    feeds = _logging_policy(world, rng, users, times, config.feed_size, watched)
    sess, pos = np.nonzero(feeds >= 0)  # row-major: sessions in time order, positions 0..
    user, item, t0 = users[sess], feeds[sess, pos], times[sess]
    r = response_probabilities(world, user, item, pos, t0)
    n = len(sess)
    examined = rng.random(n) < r.p_examine
    attracted = rng.random(n) < r.p_attract
    click = examined & attracted
    n_click = int(click.sum())
    m = np.clip(r.completion_mean[click], 1e-6, 1 - 1e-6)
    completion = rng.beta(BETA_CONCENTRATION * m, BETA_CONCENTRATION * (1 - m))
    like = rng.random(n_click) < completion * r.like_rate[click]
    buy = rng.random(n_click) < r.p_purchase_given_click[click]
    skip = examined & ~attracted & (rng.random(n) < r.skip_rate)

    # Follow-ups are stamped within ~2 minutes of the impression (inside any attribution
    # window); the watch event is logged at playback start and carries the total seconds.
    t_click = t0[click] + 2.0 + 2.0 * pos[click] + rng.exponential(3.0, n_click)
    t_buy = t_click + rng.uniform(5.0, 20.0, n_click)
    t_watch = t_click + rng.uniform(25.0, 30.0, n_click)
    t_like = t_watch + rng.uniform(10.0, 60.0, n_click)
    t_skip = t0[skip] + 1.0 + 1.5 * pos[skip] + rng.exponential(2.0, int(skip.sum()))
    clicked = np.flatnonzero(click)
    parts = [
        (np.arange(n), t0),
        (clicked, t_click),
        (clicked, t_watch),
        (clicked[like], t_like[like]),
        (clicked[buy], t_buy[buy]),
        (np.flatnonzero(skip), t_skip),
    ]
    watch_seconds = np.full(n, np.nan)
    watch_seconds[click] = np.round(world.item_duration[item[click]] * completion, 1)

    code = np.concatenate([np.full(len(ix), c, np.int64) for c, (ix, _) in enumerate(parts)])
    imp = np.concatenate([ix for ix, _ in parts])
    ts = np.concatenate([ts for _, ts in parts])
    order = np.lexsort((code, imp, ts))
    code, imp, ts = code[order], imp[order], ts[order]
    is_watch = code == _SIM_TYPES.index(EventType.WATCH)
    is_buy = code == _SIM_TYPES.index(EventType.PURCHASE)
    sessions, request = np.unique(sess, return_inverse=True)
    request += first_request
    frame = pl.DataFrame(
        {
            "event_id": sequential_ids(f"ev{config.seed}-", len(imp), start=first_event, width=9),
            "timestamp": to_timestamps(ts),
            "user_id": ids[0].gather(user[imp]),
            "item_id": ids[1].gather(item[imp]),
            "event_type": pl.Series([e.value for e in _SIM_TYPES]).gather(code),
            "watch_seconds": pl.Series(np.where(is_watch, watch_seconds[imp], np.nan)),
            "price": pl.Series(np.where(is_buy, world.item_price[item[imp]], np.nan)),
            "request_id": format_ids(f"rq{config.seed}-", request[imp], 8),
            "position": pl.Series(pos[imp], dtype=pl.Int32),
            "surface": pl.repeat(SURFACE, len(imp), eager=True),
            "device": pl.Series(DEVICES).gather(devices[sess[imp]]),
        }
    ).with_columns(pl.col("watch_seconds", "price").fill_nan(None))
    return _Day(frame, len(sessions), user[click], item[click])


def simulate(
    config: SimulatorConfig,
    workdir: Workdir,
    progress: Callable[[int, int], None] | None = None,
    *,
    overwrite: bool = False,
) -> SimulationSummary:
    """Simulate ``config.n_days`` of feed sessions into a work directory.

    Writes the catalog (items, users, manifest with the simulator config), the world
    (``raw/catalog/world.npz``, for ground-truth evaluation) and one event-log append per day.
    Each day, user ``u`` has ``Poisson(activity_u * sessions_per_user_day)`` sessions at
    random times (evening peak); each session is one ``home`` feed request of up to
    ``feed_size`` impressions picked by the logging policy, followed by sampled clicks,
    watches, likes, purchases and skips (see :func:`response_probabilities`).

    Args:
        config: Size, seed and behaviour of the world.
        workdir: The work directory to fill.
        progress: Called as ``progress(day + 1, n_days)`` after each day.
        overwrite: Delete ``workdir/raw`` (catalog and event log) first.

    Returns:
        Counts of what was written.

    Raises:
        DataError: the work directory already holds an event log and ``overwrite`` is false.
    """
    began = time.perf_counter()
    log = EventLog(workdir.events_dir)
    if log.files():
        if not overwrite:
            raise DataError(
                f"{workdir.events_dir} already holds an event log; simulate into a fresh "
                "--workdir (or overwrite it)",
                path=str(workdir.events_dir),
            )
        shutil.rmtree(workdir.root / "raw")
    world = generate_world(config)
    workdir.catalog_dir.mkdir(parents=True, exist_ok=True)
    world.save(workdir.catalog_dir / WORLD_FILE)
    write_catalog(
        workdir,
        world.items_frame(),
        world.users_frame(),
        extra={
            "source": "simulator",
            "simulator": config.model_dump(mode="json"),
            "world": WORLD_FILE,
        },
    )
    counts = dict.fromkeys((e.value for e in _SIM_TYPES), 0)
    watched = sparse.csr_array((world.n_users, world.n_items), dtype=np.int8)
    ids = (world.user_ids(), world.item_ids())
    n_events = n_requests = 0
    for day in range(config.n_days):
        result = _simulate_day(world, config, day, watched, ids, n_events, n_requests)
        log.append(result.frame, where="simulator")
        for kind, n in result.frame.get_column("event_type").value_counts().iter_rows():
            counts[kind] += n
        n_events += result.frame.height
        n_requests += result.n_requests
        new = sparse.csr_array(
            (
                np.ones(len(result.clicked_users), np.int8),
                (result.clicked_users, result.clicked_items),
            ),
            shape=watched.shape,
        )
        watched = ((watched + new) > 0).astype(np.int8)
        if progress is not None:
            progress(day + 1, config.n_days)
    return SimulationSummary(
        n_users=world.n_users,
        n_items=world.n_items,
        n_days=config.n_days,
        n_requests=n_requests,
        counts=counts,
        seconds=time.perf_counter() - began,
    )
