"""The closed loop: simulated users of the world request feeds from the service, respond with
events sampled from the ground-truth response model, and come back over simulated days.

Two ways to reach the service, with the same loop:

* :class:`HttpClient`: a running ``feedforge serve`` (``GET /recommend`` with a request id,
  ``POST /events`` with that id in every event's context);
* :class:`InProcessClient`: the same :class:`~feedforge.serving.pipeline.FeedService` calls
  without HTTP, for the many repetitions a benchmark needs. It can also compute each
  session's **counterfactual** feeds: what every variant of the user's experiments would
  have shown, so the true value of each variant is known, not estimated.

Both give the same outcomes for the same seed: each request's randomness comes from its
request id (:func:`~feedforge.serving.rerank.request_rng`), the users, sessions and responses
from the seed, and events are posted after each session in the same order. (The ranker's
features include item ages, computed from the wall clock; a score tie broken differently by a
few seconds of age could in principle reorder a feed.)

Each simulated day, user ``u`` has ``Poisson(activity_u * sessions_per_user_day)`` sessions
(at least ``min_sessions``), in a random order; a session's clock for the response model (item
ages) is the world's end plus the day and the session's share of it. Responses follow
:func:`~feedforge.events.response.response_probabilities`: an examined and attracted slot is
clicked, a click is watched for ``duration * Beta`` seconds and bought with its purchase
probability; the ground-truth expectations of every shown feed are recorded beside the
sampled outcomes. Events carry wall-clock timestamps (the service refuses far-off ones) and
deterministic event ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import numpy as np
import polars as pl

from feedforge.config import Settings
from feedforge.errors import ArtifactError, DataError, ValidationError
from feedforge.events.response import BETA_CONCENTRATION, response_probabilities
from feedforge.events.schema import validate_events
from feedforge.events.world import DAY_S, WORLD_FILE, World
from feedforge.serving.pipeline import FeedService
from feedforge.serving.routes.feed import feed_body
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir


class SimClock:
    """A settable simulated clock: :func:`run_closed_loop` moves it to each session's time,
    stamps the session's events with it, and a service whose feed log and experiments read it
    (``FeedLog.clock``, ``ExperimentRegistry(clock=...)``) logs its feeds at the same time,
    so a simulation can run days of traffic in minutes with a consistent event log."""

    def __init__(self, now_s: float) -> None:
        self.now_s = float(now_s)

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.now_s, UTC)


class FeedClient(Protocol):
    """How the loop reaches the service."""

    def feed(self, user_id: str, k: int, request_id: str) -> dict[str, Any]:
        """A ``/recommend`` answer body."""
        ...

    def post(self, events: list[dict[str, Any]]) -> None:
        """Ingest events (raises when the service refuses one)."""
        ...


class HttpClient:
    """A running ``feedforge serve`` at ``base_url``.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        api_key: ``serving.api_key`` (events), if set.
        read_api_key: ``serving.read_api_key`` (feeds), if set.
        timeout_s: Per-request timeout.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        read_api_key: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s)
        self._write = {"X-API-Key": api_key} if api_key else {}
        self._read = {"X-API-Key": read_api_key} if read_api_key else {}

    def feed(self, user_id: str, k: int, request_id: str) -> dict[str, Any]:
        response = self._client.get(
            "/recommend",
            params={"user_id": user_id, "k": k, "request_id": request_id},
            headers=self._read,
        )
        if response.status_code != 200:
            raise DataError(
                f"{self.base_url}/recommend answered {response.status_code}: {response.text[:300]}"
            )
        body: dict[str, Any] = response.json()
        return body

    def post(self, events: list[dict[str, Any]]) -> None:
        response = self._client.post("/events", json=events, headers=self._write)
        if response.status_code != 200:
            raise DataError(
                f"{self.base_url}/events answered {response.status_code}: {response.text[:300]}"
            )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class InProcessClient:
    """The service's own calls, without HTTP (``service``'s experiment follower must have
    been refreshed or started, as the app does)."""

    def __init__(self, service: FeedService) -> None:
        self.service = service

    def feed(self, user_id: str, k: int, request_id: str) -> dict[str, Any]:
        return feed_body(self.service.serve(user_id, k, None, request_id), request_id)

    def post(self, events: list[dict[str, Any]]) -> None:
        serving = self.service.settings.serving
        good, issues = validate_events(
            events,
            max_future_skew_s=serving.max_future_skew_s,
            max_past_age_days=serving.max_past_age_days,
        )
        if issues:
            raise DataError(f"the service refused {len(issues)} simulated events: {issues[:3]}")
        self.service.ingest(good)

    def counterfactuals(self, user_id: str, k: int, request_id: str) -> dict[str, list[str]]:
        """``"experiment/variant"`` -> the feed that variant would have shown this request
        (for each running experiment the user is in; nothing is logged)."""
        followed = self.service.experiments
        assigned = followed.assign(user_id)
        out: dict[str, list[str]] = {}
        for assignment in assigned.assignments:
            experiment = assignment.experiment
            for variant in experiment.variants:
                if variant.version is not None and variant.version not in assigned.pinned:
                    continue
                plan = followed.plan(assigned, variant, experiment.id)
                # The key the service draws the variant's randomness from (an A/B arm's
                # feed is the served one when it is the user's variant).
                key = request_id if experiment.mode == "ab" else f"{request_id}:{variant.name}"
                feed = self.service.recommend(user_id, k, None, plan, key)
                out[f"{experiment.id}/{variant.name}"] = feed.item_ids
        return out


@dataclass(frozen=True)
class LoopResult:
    """What a closed-loop run served and what the users did.

    Attributes:
        sessions: One row per session: ``day``, ``request_id``, ``user_id``, ``experiment``,
            ``variant`` (null outside experiments), ``version``, ``items`` (shown),
            ``clicks``, ``watch_seconds``, ``revenue`` (sampled), and the ground-truth
            expectations of the shown feed ``true_clicks``, ``true_watch_seconds``,
            ``true_revenue``.
        counterfactual: With ``counterfactual=True`` (in process), one row per session and
            variant of the user's experiments: ``request_id``, ``arm``
            (``experiment/variant``), ``true_clicks``, ``true_watch_seconds``,
            ``true_revenue`` of the feed that variant would have shown.
    """

    sessions: pl.DataFrame
    counterfactual: pl.DataFrame | None


def run_closed_loop(
    world: World,
    client: FeedClient,
    *,
    users: int,
    days: int,
    seed: int = 0,
    k: int = 10,
    sessions_per_user_day: float = 1.0,
    min_sessions: int = 0,
    counterfactual: bool = False,
    clock: SimClock | None = None,
) -> LoopResult:
    """Run the loop (see the module docs).

    Args:
        world: The simulator's world (``raw/catalog/world.npz``).
        client: The service.
        users: How many of the world's users take part (the first ``users`` by a seeded
            shuffle).
        days: Simulated days.
        seed: Users, sessions, responses and request ids.
        k: Feed length.
        sessions_per_user_day: Mean sessions of an average user per day.
        min_sessions: Sessions every user has at least, each day.
        counterfactual: Also record every variant's feed of each session (an
            :class:`InProcessClient` only).
        clock: Simulated time: set to each session's time before its feed is requested, and
            its events are stamped with it (default: the wall clock).

    Raises:
        ValidationError: bad sizes, or ``counterfactual`` over HTTP.
        DataError: the service refused a request or an event.
    """
    if users < 1 or days < 1 or k < 1:
        raise ValidationError(f"simulate-online: users {users}, days {days}, k {k} must be >= 1")
    if users > world.n_users:
        raise ValidationError(f"simulate-online: --users {users} > the world's {world.n_users}")
    if counterfactual and not isinstance(client, InProcessClient):
        raise ValidationError("simulate-online: counterfactual feeds need the in-process mode")
    rng = np.random.default_rng([seed, 0x5EED])
    people = np.sort(rng.permutation(world.n_users)[:users])
    user_ids = world.user_ids().to_list()
    item_index = {item: j for j, item in enumerate(world.item_ids().to_list())}
    rows: list[dict[str, Any]] = []
    cf_rows: list[dict[str, Any]] = []
    for day in range(days):
        n = rng.poisson(world.user_activity[people] * sessions_per_user_day)
        n = np.maximum(n, min_sessions)
        order = rng.permutation(np.repeat(people, n))
        day_start = world.end_s + day * DAY_S
        for s, u in enumerate(order):
            request_id = f"sim{seed}-d{day}-s{s:06d}"
            now_s = day_start + DAY_S * s / max(len(order), 1)
            user_id = user_ids[int(u)]
            if clock is not None:
                clock.now_s = now_s
            body = client.feed(user_id, k, request_id)
            shown = [item["item_id"] for item in body["items"]]
            outcome, events = _respond(world, rng, int(u), shown, item_index, now_s, body, clock)
            exposures = body.get("experiments") or [{}]
            rows.append(
                {
                    "day": day,
                    "request_id": request_id,
                    "user_id": user_id,
                    "experiment": exposures[0].get("experiment"),
                    "variant": exposures[0].get("variant"),
                    "version": body["version"],
                    "items": shown,
                    **outcome,
                }
            )
            if counterfactual:
                assert isinstance(client, InProcessClient)
                for arm, items in client.counterfactuals(user_id, k, request_id).items():
                    truth = _truth(world, int(u), items, item_index, now_s)
                    cf_rows.append({"request_id": request_id, "arm": arm, **truth})
            if events:
                client.post(events)
    sessions = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
    cf = pl.DataFrame(cf_rows) if counterfactual else None
    return LoopResult(sessions, cf)


def _indices(items: Sequence[str], item_index: dict[str, int]) -> np.ndarray:
    return np.asarray([item_index.get(i, -1) for i in items], dtype=np.int64)


def _truth(
    world: World, user: int, items: Sequence[str], item_index: dict[str, int], now_s: float
) -> dict[str, float]:
    idx = _indices(items, item_index)
    keep = idx >= 0
    if not keep.any():
        return {"true_clicks": 0.0, "true_watch_seconds": 0.0, "true_revenue": 0.0}
    pos = np.flatnonzero(keep)
    r = response_probabilities(world, user, idx[keep], pos, now_s)
    return {
        "true_clicks": float(r.p_click.sum()),
        "true_watch_seconds": float(r.expected_watch_seconds.sum()),
        "true_revenue": float(r.expected_revenue.sum()),
    }


def _respond(
    world: World,
    rng: np.random.Generator,
    user: int,
    shown: list[str],
    item_index: dict[str, int],
    now_s: float,
    body: dict[str, Any],
    clock: SimClock | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sampled outcomes and the events of one session (items the world does not know, if
    any, are shown but never engaged with)."""
    idx = _indices(shown, item_index)
    n = len(idx)
    truth = _truth(world, user, shown, item_index, now_s)
    known = idx >= 0
    pos = np.arange(n)
    if known.any():
        r = response_probabilities(world, user, np.where(known, idx, 0), pos, now_s)
        p_examine, p_attract = r.p_examine, r.p_attract
        completion_mean, p_buy = r.completion_mean, r.p_purchase_given_click
    else:
        p_examine = p_attract = completion_mean = p_buy = np.zeros(n)
    examined = rng.random(n) < p_examine
    attracted = rng.random(n) < p_attract
    click = examined & attracted & known
    m = np.clip(completion_mean, 1e-6, 1 - 1e-6)
    completion = rng.beta(BETA_CONCENTRATION * m, BETA_CONCENTRATION * (1 - m))
    buy = rng.random(n) < p_buy
    request_id = str(body["request_id"])
    stamp = clock() if clock is not None else datetime.now(UTC)
    events: list[dict[str, Any]] = []
    watch_total = revenue = 0.0

    def event(slot: int, kind: str, offset_s: float, **extra: Any) -> dict[str, Any]:
        return {
            "event_id": f"{request_id}-{slot}-{kind}",
            "timestamp": (stamp + timedelta(seconds=offset_s)).isoformat(),
            "user_id": body["user_id"],
            "item_id": shown[slot],
            "event_type": kind,
            "context": {"request_id": request_id, "position": slot},
            **extra,
        }

    for slot in range(n):
        events.append(event(slot, "impression", 0.0))
        if click[slot]:
            j = int(idx[slot])
            seconds = round(float(world.item_duration[j] * completion[slot]), 1)
            events.append(event(slot, "click", 0.001))
            events.append(event(slot, "watch", 0.002, watch_seconds=seconds))
            watch_total += seconds
            price = float(world.item_price[j])
            if price > 0 and buy[slot]:
                events.append(event(slot, "purchase", 0.003, price=price))
                revenue += price
    outcome = {
        "clicks": int(click.sum()),
        "watch_seconds": watch_total,
        "revenue": revenue,
        **truth,
    }
    return outcome, events


def world_traffic(
    workdir: Workdir, settings: Settings, users: int, k: int = 10
) -> Callable[[Any], None]:
    """Simulated traffic for a waiting canary: each call runs one simulated day of ``users``
    users of the simulator's world against the service in process (experiments refreshed
    first, so the canary's share is served), posting their events to the event log.

    Raises:
        ArtifactError: the work directory has no simulator world.
    """
    path = workdir.catalog_dir / WORLD_FILE
    if not path.is_file():
        raise ArtifactError(
            path, "simulated traffic needs the simulator's world", workdir.command("simulate")
        )
    world = World.load(path)
    rounds = 0

    def traffic(_run: Any) -> None:
        nonlocal rounds
        rounds += 1
        with open_store(settings.store, workdir.store_path) as store:
            service = FeedService(settings, workdir, store)
            try:
                service.versions.preload()
                service.experiments.refresh()
                run_closed_loop(
                    world,
                    InProcessClient(service),
                    users=min(users, world.n_users),
                    days=1,
                    seed=int(time.time()) * 1000 + rounds,
                    k=k,
                )
            finally:
                service.close()

    return traffic
