"""``feedforge bench loop``: does continuous training pay off in a world that moves, is a
broken candidate stopped, and how fast is a posted item served?

One simulated history (``history_days``), then ``days`` days of a drifting world
(:class:`~feedforge.events.drift.DriftingWorld`: tastes drift, new items every day, an abrupt
shift on ``shift_day``), lived three times with the same seeds (the same users, sessions and
response draws; only the feeds differ):

* **continuous**: the system with ``feedforge loop`` (:func:`~feedforge.loop.cycle.run_cycle`):
  from day 1, a cycle at the start of each day (build on the log up to then, gates, stage,
  a canary serving ``loop.canary_share`` of the day's users) and the decision at the day's
  end (promote or roll back);
* **frozen**: the same system with the version published at day 0, never retrained (its live
  histories and posted items still work: only the models are frozen);
* **popularity**: the top items by clicks over the last 7 simulated days, the user's consumed
  items excluded.

Every arm gets the day's new items through the service's item path
(:func:`~feedforge.serving.live.store_items`, what ``POST /items`` calls); the popularity arm
learns them from clicks. Each arm's feeds are served in process on a simulated clock
(:class:`~feedforge.loop.simulate.SimClock`: the events, the feed log and the experiments all
read it), and the value of each feed is its **ground truth**: the expected watch minutes under
the world's response model of that day. On ``broken_day`` the continuous arm's candidate has
its retrieval item embeddings shuffled after training: it must be stopped by a gate or the
canary, and never serve more than the canary's share.

Then **new items in real time**: ``feedforge serve --workers 2`` on the continuous arm's work
directory; ``latency_items`` items are posted one by one to ``POST /items``, each for the
user whose embedding scores its content vector highest (a relevant user), and
``/recommend`` is polled every 20 ms until the item is in the user's feed of
``latency_k``: the time from the post to that feed, median and max.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedforge.bench.report import run_info, write_report
from feedforge.bench.service import set_up_world, start_service, write_service_config
from feedforge.config import Settings
from feedforge.datasets.idmap import IdMap
from feedforge.datasets.load import load_dataset
from feedforge.events.drift import DriftingWorld, DriftSpec
from feedforge.events.item_updates import ItemUpdate
from feedforge.events.log import EventLog
from feedforge.events.simulator import simulate
from feedforge.events.world import DAY_S, WORLD_FILE, World
from feedforge.features.content import CONTENT_MAP_FILE, ContentMap
from feedforge.loop.cycle import run_cycle
from feedforge.loop.runs import Run, unfinished
from feedforge.loop.simulate import InProcessClient, SimClock, run_closed_loop
from feedforge.models.als import ALSRecommender
from feedforge.serving.live import entry_frame, store_items
from feedforge.serving.pipeline import FeedService
from feedforge.store.bundle import ITEM_IDS_FILE
from feedforge.store.factory import open_store
from feedforge.store.keys import ITEM_EMB, USER_EMB
from feedforge.workdir import Workdir

Progress = Callable[[str], None]
ARMS = ("continuous", "frozen", "popularity")
LIFT_TARGET = 0.10


@dataclass(frozen=True)
class LoopBenchSpec:
    """The benchmark's sizes (see the module docs)."""

    days: int = 14
    history_days: int = 21
    n_users: int = 1500
    n_items: int = 500
    users_per_day: int = 1200
    new_items_per_day: int = 15
    shift_day: int = 7
    broken_day: int = 10
    latency_items: int = 100
    latency_k: int = 10
    seed: int = 3


def loop_bench_settings(base: Settings, spec: LoopBenchSpec, start: datetime) -> Settings:
    """``base`` with the benchmark's world, an exploring feed (for the off-policy gate), a
    canary of a fifth of the users decided after half a day, and events of the simulated past
    accepted."""
    data = base.model_dump(mode="json")
    data["simulator"] = {
        **data["simulator"],
        "n_users": spec.n_users,
        "n_items": spec.n_items,
        "n_days": spec.history_days,
        "seed": spec.seed,
        "start": start.isoformat(),
    }
    data["dataset"] = {**data["dataset"], "validation_days": 2, "test_days": 2}
    data["store"] = {"type": "embedded"}
    data["serving"] = {**data["serving"], "max_past_age_days": 3650, "log_format": "text"}
    data["reranking"] = {
        **data["reranking"],
        "exploration": {"type": "epsilon_greedy", "epsilon": 0.1},
    }
    data["loop"] = {
        **data.get("loop", {}),
        "canary_share": 0.2,
        "canary_window_s": DAY_S / 2,
        "canary_min_units": 50,
        "canary_max_wait_s": 3 * DAY_S,
        "ope_window_s": 2 * DAY_S,
    }
    return Settings(**data)


class PopularityClient:
    """The popularity arm: the top ``k`` items by clicks over the last 7 simulated days."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.clicks: list[tuple[float, str]] = []
        self.consumed: dict[str, set[str]] = defaultdict(set)

    def feed(self, user_id: str, k: int, request_id: str) -> dict[str, Any]:
        since = self.clock.now_s - 7 * DAY_S
        counts = Counter(item for ts, item in self.clicks if ts >= since)
        seen = self.consumed[user_id]
        ranked = [item for item, _ in counts.most_common() if item not in seen][:k]
        return {
            "request_id": request_id,
            "user_id": user_id,
            "version": "popularity",
            "items": [{"item_id": item} for item in ranked],
        }

    def post(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event["event_type"] == "click":
                ts = datetime.fromisoformat(event["timestamp"]).timestamp()
                self.clicks.append((ts, event["item_id"]))
                self.consumed[event["user_id"]].add(event["item_id"])


def _history_clicks(workdir: Workdir, client: PopularityClient) -> None:
    """Seed the popularity arm with the clicks of the simulated history."""
    frame = (
        EventLog(workdir.events_dir)
        .scan()
        .filter(pl.col("event_type") == "click")
        .select("timestamp", "user_id", "item_id")
        .collect()
    )
    for ts, user, item in frame.iter_rows():
        client.clicks.append((ts.timestamp(), item))
        client.consumed[user].add(item)


def _new_items(world: World, indices: np.ndarray) -> list[ItemUpdate]:
    frame = world.items_frame()[indices.tolist()]
    return [
        ItemUpdate(
            item_id=row["item_id"],
            title=row["title"],
            categories=row["categories"],
            duration_seconds=row["duration_seconds"],
            price=row["price"],
            created_at=row["created_at"],
        )
        for row in frame.iter_rows(named=True)
    ]


def _broken(staged: Workdir) -> None:
    """Shuffle the candidate's retrieval item embeddings (a deliberately broken model)."""
    path = staged.model_dir("als")
    model = ALSRecommender.load(path)
    factors = model.item_factors_
    if factors is None or model.manifest_ is None:
        return
    model.item_factors_ = np.random.default_rng(0).permutation(factors)
    model.save(path, inputs=dict(model.manifest_.inputs))


def _serve_day(
    workdir: Workdir,
    settings: Settings,
    world: World,
    clock: SimClock,
    items: list[ItemUpdate],
    spec: LoopBenchSpec,
    day: int,
) -> dict[str, Any]:
    with open_store(settings.store, workdir.store_path) as store:
        service = FeedService(settings, workdir, store)
        try:
            if service.feed_log is not None:
                service.feed_log.clock = clock
            service.versions.preload()
            service.experiments.refresh()
            store_items(workdir, store, service.live, lambda: service.versions.loaded, items)
            result = run_closed_loop(
                world,
                InProcessClient(service),
                users=spec.users_per_day,
                days=1,
                seed=spec.seed * 1000 + day,
                clock=clock,
            )
        finally:
            service.close()
    return _day_values(result.sessions)


def _day_values(sessions: pl.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {
        "feeds": sessions.height,
        "value_per_feed": float(sessions.get_column("true_watch_seconds").to_numpy().mean()) / 60.0,
        "clicks_per_feed": float(sessions.get_column("true_clicks").to_numpy().mean()),
    }
    # Which versions served the day's feeds (a canary's share shows here).
    by = sessions.group_by("version").agg(pl.len().alias("feeds"))
    out["feeds_by_version"] = dict(by.iter_rows())
    return out


def run_loop_bench(
    base: Settings, out_dir: Path, spec: LoopBenchSpec, say: Progress
) -> dict[str, Any]:
    """Run the benchmark and write ``loop.json`` and ``loop.md`` into ``out_dir``."""
    started = time.perf_counter()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=spec.history_days + spec.days + 1)
    settings = loop_bench_settings(base, spec, start)
    with tempfile.TemporaryDirectory(prefix="ff-bench-loop-") as tmp:
        arms = {name: Workdir.at(Path(tmp) / name) for name in ARMS}
        setup = {}
        for name in ("continuous", "frozen"):
            say(f"{name}: simulate, build, train, publish day 0")
            setup[name] = set_up_world(arms[name], settings, say)
        simulate(settings.simulator, arms["popularity"])
        base_world = World.load(arms["continuous"].catalog_dir / WORLD_FILE)
        drift = DriftSpec(
            new_items_per_day=spec.new_items_per_day, shift_day=spec.shift_day, seed=spec.seed
        )
        drifting = DriftingWorld(base_world, drift, spec.days)
        clock = SimClock(base_world.end_s)
        popularity = PopularityClient(clock)
        _history_clicks(arms["popularity"], popularity)

        days: list[dict[str, Any]] = []
        cycles: list[dict[str, Any]] = []
        for day in range(spec.days):
            world = drifting.day(day)
            items = _new_items(world, drifting.new_item_indices(day))
            row: dict[str, Any] = {"day": day}
            if day >= 1:
                clock.now_s = world.end_s
                pending = unfinished(arms["continuous"])
                if pending is not None:
                    # A canary still short of users: decided (or kept) before a new cycle.
                    say(f"day {day}: canary of {pending.run_id} still running")
                    run = run_cycle(arms["continuous"], settings, wait=False, clock=clock)
                    if run.finished:
                        _close_cycle(cycles, run)
                if unfinished(arms["continuous"]) is None:
                    say(f"day {day}: loop cycle")
                    t0 = time.perf_counter()
                    run = run_cycle(
                        arms["continuous"],
                        settings,
                        wait=False,
                        clock=clock,
                        after_train=_broken if day == spec.broken_day else None,
                        trigger=f"bench day {day}",
                    )
                    cycles.append(
                        {
                            "day": day,
                            "run_id": run.run_id,
                            "broken": day == spec.broken_day,
                            "start_seconds": round(time.perf_counter() - t0, 1),
                        }
                    )
                    if run.finished:
                        _close_cycle(cycles, run)
            for name in ARMS:
                say(f"day {day}: {name}")
                clock.now_s = world.end_s
                if name == "popularity":
                    result = run_closed_loop(
                        world,
                        popularity,
                        users=spec.users_per_day,
                        days=1,
                        seed=spec.seed * 1000 + day,
                        clock=clock,
                    )
                    row[name] = _day_values(result.sessions)
                else:
                    row[name] = _serve_day(arms[name], settings, world, clock, items, spec, day)
            if unfinished(arms["continuous"]) is not None:
                clock.now_s = world.end_s + DAY_S - 1
                run = run_cycle(arms["continuous"], settings, wait=False, clock=clock)
                if run.finished:
                    _close_cycle(cycles, run)
            days.append(row)
        say("new items in real time")
        latency = _item_latency(arms["continuous"], settings, spec, Path(tmp))

    report = _report(spec, drift, settings, days, cycles, latency, setup)
    report.update(run_info(started))
    write_report(out_dir, "loop", report, render(report))
    return report


def _close_cycle(cycles: list[dict[str, Any]], run: Run) -> None:
    """Record a finished run in its cycle's entry."""
    entry = next((c for c in cycles if c["run_id"] == run.run_id), None)
    if entry is not None:
        entry.update(_cycle_summary(run.data))


def _cycle_summary(data: dict[str, Any]) -> dict[str, Any]:
    steps = data.get("steps", {})
    decision = data.get("decision") or {}
    canary_feeds = (decision.get("checks") or {}).get("units")
    return {
        "status": data["status"],
        "gates": {
            g["name"]: ("skipped" if g.get("skipped") else g["passed"]) for g in data["gates"]
        },
        "decision": decision.get("action"),
        "reasons": decision.get("reasons"),
        "gate": decision.get("gate"),
        "canary_units": canary_feeds,
        "seconds": {name: step.get("seconds") for name, step in steps.items()},
        "peak_rss_mb": max((float(s.get("peak_rss_mb", 0)) for s in steps.values()), default=0),
        "gate_numbers": {
            g["name"]: {
                key: g["numbers"].get(key)
                for key in ("metric", "lift", "feed_metric", "feed_lift", "feeds")
                if key in g["numbers"]
            }
            for g in data["gates"]
        },
    }


def _item_latency(
    workdir: Workdir, settings: Settings, spec: LoopBenchSpec, tmp: Path
) -> dict[str, Any]:
    import httpx

    config = tmp / "serve.yaml"
    # Feeds without exploration: an item is in the feed or not, not by a random draw.
    deterministic = Settings(
        **{
            **settings.model_dump(mode="json"),
            "reranking": {
                **settings.reranking.model_dump(mode="json"),
                "exploration": {"type": "none"},
            },
        }
    )
    write_service_config(deterministic, config)
    with open_store(settings.store, workdir.store_path) as store:
        version = store.current_version()
        assert version is not None
        bundle = workdir.bundles_dir / version
        mapping = ContentMap.load(bundle / CONTENT_MAP_FILE, "publish")
        users = load_dataset(workdir).users.ids.to_list()
        vectors, found = store.get_vectors(version, USER_EMB, users)
        served = IdMap.load(bundle / ITEM_IDS_FILE, "publish").ids.to_list()
        items_matrix, _ = store.get_vectors(version, ITEM_EMB, served)
    # Each user's 10th best retrieval score: a posted item beats it for its relevant user.
    kth = np.sort(vectors @ items_matrix.T, axis=1)[:, -spec.latency_k]
    learned = found & (np.abs(vectors).sum(axis=1) > 0)  # ALS leaves users without data at 0
    process, url = start_service(workdir, config, 2, {}, tmp / "serve.log")
    rng = np.random.default_rng(spec.seed)
    latencies: list[float] = []
    missed = 0
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for n in range(spec.latency_items):
                category = str(rng.choice(mapping.vocabulary))
                item: dict[str, Any] = {
                    "item_id": f"bench-new-{n:04d}",
                    "title": f"new {n}",
                    "categories": [category],
                    "duration_seconds": float(rng.uniform(600, 5400)),
                    "price": 0.0,
                }
                now = time.time()
                vector = mapping.vectors(
                    entry_frame([(str(item["item_id"]), {**item, "created_at_s": now})]),
                    datetime.now(UTC),
                )[0]
                margin = np.where(learned, vectors @ vector - kth, -np.inf)
                user = users[int(np.argmax(margin))]
                t0 = time.perf_counter()
                response = client.post("/items", json=item)
                response.raise_for_status()
                while True:
                    feed = client.get("/recommend", params={"user_id": user, "k": spec.latency_k})
                    ids = [x["item_id"] for x in feed.json()["items"]]
                    elapsed = time.perf_counter() - t0
                    if item["item_id"] in ids:
                        latencies.append(elapsed)
                        break
                    if elapsed > 10.0:
                        missed += 1
                        break
                    time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "items": spec.latency_items,
        "k": spec.latency_k,
        "appeared": len(latencies),
        "missed_after_10s": missed,
        "median_s": statistics.median(latencies) if latencies else None,
        "p90_s": float(np.quantile(latencies, 0.9)) if latencies else None,
        "max_s": max(latencies) if latencies else None,
        "over_5s": sum(1 for x in latencies if x > 5.0),
        "latencies_s": [round(x, 3) for x in latencies],
        "refresh_s": settings.serving.live_items_refresh_s,
        "workers": 2,
        "exploration": "none",
    }


def _report(
    spec: LoopBenchSpec,
    drift: DriftSpec,
    settings: Settings,
    days: list[dict[str, Any]],
    cycles: list[dict[str, Any]],
    latency: dict[str, Any],
    setup: dict[str, Any],
) -> dict[str, Any]:
    first_retrain = next((c["day"] for c in cycles if c.get("status") == "promoted"), None)
    after = [d for d in days if first_retrain is not None and d["day"] > first_retrain]
    above = [d["continuous"]["value_per_feed"] > d["frozen"]["value_per_feed"] for d in after]
    week2 = [d for d in days if d["day"] >= 7]
    mean = {
        arm: statistics.fmean(d[arm]["value_per_feed"] for d in week2) if week2 else None
        for arm in ARMS
    }
    cont, frozen = mean["continuous"], mean["frozen"]
    lift = cont / frozen - 1 if cont is not None and frozen else None
    broken = next((c for c in cycles if c["broken"]), None)
    return {
        "spec": asdict(spec),
        "drift": asdict(drift),
        "loop": settings.loop.model_dump(mode="json"),
        "setup_seconds": setup,
        "days": days,
        "cycles": cycles,
        "targets": {
            "first_promotion_day": first_retrain,
            "continuous_above_frozen_every_day_after": all(above) if above else None,
            "days_above": f"{sum(above)}/{len(above)}",
            "week2_value_per_feed": mean,
            "week2_lift_vs_frozen": lift,
            "week2_lift_target": LIFT_TARGET,
            "broken_candidate": None
            if broken is None
            else {
                "day": broken["day"],
                "stopped": broken.get("status") in ("rejected", "rolled_back"),
                "canary_units": broken.get("canary_units"),
                "by": broken.get("gate") or broken.get("decision"),
                "reasons": broken.get("reasons"),
            },
            "new_item_latency": latency,
        },
    }


def render(report: dict[str, Any]) -> str:
    """The Markdown table of the report."""
    t = report["targets"]
    lines = [
        "# Continuous training in a drifting world (`feedforge bench loop`)",
        "",
        f"Command: `{report.get('command', '')}`; {report.get('total_seconds', '?')} s on "
        f"{report.get('machine', {}).get('cpus', '?')} CPUs.",
        "",
        "Ground-truth value per feed = expected watch minutes of the shown feed under the "
        "day's response model; the same users, sessions and draws in every arm.",
        "",
        "| day | continuous | frozen (day 0) | popularity | cycle | gates | decision |",
        "|---|---|---|---|---|---|---|",
    ]
    by_day = {c["day"]: c for c in report["cycles"]}
    for d in report["days"]:
        c = by_day.get(d["day"])
        gates = ", ".join(f"{k}: {v}" for k, v in (c or {}).get("gates", {}).items())
        decision = (
            "-" if c is None else c.get("status", "running") + (" (broken)" if c["broken"] else "")
        )
        lines.append(
            f"| {d['day']} | {d['continuous']['value_per_feed']:.3f} | "
            f"{d['frozen']['value_per_feed']:.3f} | {d['popularity']['value_per_feed']:.3f} | "
            f"{'-' if c is None else c['run_id']} | {gates or '-'} | {decision} |"
        )
    lat = t["new_item_latency"]
    week = t["week2_value_per_feed"]
    lift = t["week2_lift_vs_frozen"]
    broken = t["broken_candidate"] or {}
    lines += [
        "",
        "| target | measured |",
        "|---|---|",
        f"| continuous above frozen every day after the first promotion (day "
        f"{t['first_promotion_day']}) | {t['continuous_above_frozen_every_day_after']} "
        f"({t['days_above']} days) |",
        f"| week 2 lift over frozen >= {LIFT_TARGET:.0%} | "
        + ("-" if lift is None else f"{lift:+.1%}")
        + f" (continuous {_f(week['continuous'])}, frozen {_f(week['frozen'])}, popularity "
        f"{_f(week['popularity'])}) |",
        f"| broken candidate (day {broken.get('day')}) stopped | {broken.get('stopped')} by "
        f"{broken.get('by')}: {'; '.join(broken.get('reasons') or [])} |",
        f"| posted item in a relevant user's top {lat['k']} within 5 s | median "
        f"{_s(lat['median_s'])}, p90 {_s(lat['p90_s'])}, max {_s(lat['max_s'])} over "
        f"{lat['appeared']}/{lat['items']} items; {lat['over_5s']} over 5 s, "
        f"{lat['missed_after_10s']} not shown after 10 s |",
        "",
        "Cycle timings (seconds per step) and peak memory per run are in `loop.json`.",
    ]
    return "\n".join(lines) + "\n"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"
