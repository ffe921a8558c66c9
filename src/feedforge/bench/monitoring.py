"""``feedforge bench monitoring``: is monitoring cheap enough to run continuously, and precise
enough to catch a real fault?

Sections (targets from issue 16):

* **drift_speed**: drift of 1,000,000 served rows x 30 numeric features against a reference
  of 200,000 rows, from profiles: the time to bin the served rows into a profile, then to
  compute PSI and KS of every feature from the two profiles (target: under 10 s on 2 cores).
* **faults**: a simulated world published as ``feedforge demo`` does, served through the
  in-process service (:class:`~feedforge.serving.pipeline.FeedService`) on a simulated clock
  (``feeds_per_hour`` requests of users drawn by activity). Each scenario serves a clean
  baseline first (the version's first ``monitoring.baseline_rows`` served rows), then
  injects its fault and checks drift after every ``monitoring.window_s`` window, as the
  service's monitor thread does; it reports whether the fault was detected, after how many
  requests served since the injection, and which columns were flagged:

  - ``device_shift``: every request says ``device=tv`` (a client release mislabels devices);
  - ``new_user_surge``: half the requests come from new users with a short live history (no
    published record: their user features take the defaults);
  - ``dead_feature``: the item durations are lost (every candidate's ``item_duration_log``
    stuck at its default 0);
  - ``unit_skew``: the service computes item ages in minutes where training used seconds;
    caught by ``feedforge monitor skew`` on the sampled feature log
    (:mod:`feedforge.monitoring.skew`), reported after how many requests the first logged
    request names the feature, and by drift;
  - ``stale_version``: no publish for longer than ``monitoring.max_version_age_s``: the
    freshness gauge the alert reads crosses its threshold (a clock question: reported in
    hours after the publish, not requests).
* **false_alarms**: an unshifted simulated week (no fault): the share of window checks that
  flag any column, with the default serving baseline and with the training reference.
* **request_cost**: the request path's latency with the serving profile (and the default
  skew sample) and without, alternating request by request in one run: p50 and p99
  (target: at most +0.3 ms p50).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from feedforge.bench.report import run_info, write_report
from feedforge.bench.service import set_up_world
from feedforge.config import MonitoringConfig, Settings
from feedforge.errors import DataError
from feedforge.events.schema import Event, EventType
from feedforge.events.simulator import WORLD_FILE
from feedforge.events.world import World
from feedforge.monitoring.drift import ColumnDrift, compare, measured
from feedforge.monitoring.profile import Profile, ProfileAccumulator, reference_profile
from feedforge.monitoring.recorder import served_windows
from feedforge.monitoring.skew import skew_report
from feedforge.serving.experiments import default_plan
from feedforge.serving.pipeline import FeedService
from feedforge.serving.version import LoadedVersion
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

Progress = Callable[[str], None]
DRIFT_TARGET_S = 10.0
COST_TARGET_MS = 0.3


@dataclass(frozen=True)
class BenchSpec:
    """The benchmark's sizes.

    Attributes:
        speed_rows: Served rows of the drift-speed section.
        speed_features: Features of the drift-speed section.
        feeds_per_hour: Simulated requests per hour.
        fault_hours: Hours of traffic after an injection (a fault not flagged by then is
            reported as missed).
        week_hours: Hours of the unshifted run.
        cost_requests: Requests per arm of the request-cost section.
        k: Items per feed.
        seed: Random seed.
    """

    speed_rows: int = 1_000_000
    speed_features: int = 30
    feeds_per_hour: int = 100
    fault_hours: int = 12
    week_hours: int = 168
    cost_requests: int = 3_000
    k: int = 10
    seed: int = 0


# -- drift speed --------------------------------------------------------------------------------
def run_drift_speed(spec: BenchSpec, config: MonitoringConfig) -> dict[str, Any]:
    """Time drift over ``speed_rows`` x ``speed_features`` from profiles."""
    rng = np.random.default_rng(spec.seed)
    names = [f"f{j:02d}" for j in range(spec.speed_features)]
    reference_rows = 200_000
    t0 = time.perf_counter()
    reference = reference_profile(
        {n: rng.gamma(2.0, 1.0 + j / 10, size=reference_rows) for j, n in enumerate(names)},
        bins=config.bins,
    )
    reference_s = time.perf_counter() - t0
    served_X = rng.gamma(2.0, 1.0, size=(spec.speed_rows, spec.speed_features))
    t0 = time.perf_counter()
    accumulator = ProfileAccumulator(reference.spec)
    accumulator.add_matrix(served_X, names)
    served = accumulator.take()
    profile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    drift = compare(reference, served, config)
    drift_s = time.perf_counter() - t0
    total = profile_s + drift_s
    return {
        "served_rows": spec.speed_rows,
        "features": spec.speed_features,
        "reference_rows": reference_rows,
        "bins": config.bins,
        "reference_profile_seconds": round(reference_s, 3),
        "serving_profile_seconds": round(profile_s, 3),
        "drift_from_profiles_seconds": round(drift_s, 4),
        "total_seconds": round(total, 3),
        "target_seconds": DRIFT_TARGET_S,
        "met": total < DRIFT_TARGET_S,
        "features_flagged": sum(d.drifted for d in drift),
    }


# -- the simulated service ----------------------------------------------------------------------
class Traffic:
    """Requests to the in-process service on a simulated clock (see the module docs)."""

    def __init__(self, settings: Settings, workdir: Workdir, world: World, spec: BenchSpec) -> None:
        self.settings = settings
        self.workdir = workdir
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.user_ids = world.user_ids().to_list()
        weights = world.user_activity.astype(np.float64)
        self.weights = weights / weights.sum()
        self.item_ids = world.item_ids().to_list()
        self.store = open_store(settings.store, workdir.store_path)
        self.service = FeedService(settings, workdir, self.store)
        self.service.versions.preload()
        self.now = float(time.time())
        self.service.monitor.clock = lambda: self.now
        self.requests = 0
        self._new_users = 0

    @property
    def state(self) -> LoadedVersion:
        loaded = self.service.versions.loaded
        assert loaded is not None
        return loaded

    def close(self) -> None:
        self.service.close()
        self.store.close()

    def serve(
        self,
        variant: str,
        seconds: float,
        device: str | None = None,
        new_user_share: float = 0.0,
    ) -> None:
        """``seconds`` of simulated requests under ``variant`` (the profile's key)."""
        plan = replace(default_plan(self.settings), variant=variant)
        n = max(1, round(self.spec.feeds_per_hour * seconds / 3600.0))
        step = seconds / n
        users = self.rng.choice(len(self.user_ids), size=n, p=self.weights)
        for j in range(n):
            if new_user_share and self.rng.random() < new_user_share:
                user = self._new_user()
            else:
                user = self.user_ids[int(users[j])]
            self.service.recommend(user, self.spec.k, device, plan, f"r{self.requests}")
            self.requests += 1
            self.now += step

    def _new_user(self) -> str:
        """A user the version has no record of, with three watches in the live history."""
        self._new_users += 1
        user = f"bench-new-{self._new_users}"
        picks = self.rng.choice(len(self.item_ids), size=3, replace=False)
        events = [
            Event(
                event_id=f"{user}-{n}",
                timestamp=datetime.fromtimestamp(self.now - 60.0 * (3 - n), UTC),
                user_id=user,
                item_id=self.item_ids[int(j)],
                event_type=EventType.WATCH,
                watch_seconds=300.0,
            )
            for n, j in enumerate(picks)
        ]
        self.service.ingest(events)
        return user

    def windows(self, variant: str) -> dict[int, Profile]:
        """The variant's serving profile per window, after this worker's flush."""
        self.service.monitor.flush()
        reference = self.state.reference
        assert reference is not None, "the published version has no reference profile"
        return served_windows(self.store, self.state.version, variant, reference.spec)

    def drift(self, variant: str, config: MonitoringConfig) -> list[ColumnDrift] | None:
        """Drift of ``variant`` now, as the monitor thread computes it (None while the
        serving baseline is filling)."""
        reference = self.state.reference
        assert reference is not None
        pair = measured(self.windows(variant), reference, config)
        return None if pair is None else compare(*pair, config)

    def fill_baseline(self, variant: str, config: MonitoringConfig) -> None:
        """Serve clean windows until the variant's serving baseline is full and one window
        follows it."""
        while self.drift(variant, config) is None:
            self.serve(variant, config.window_s)


def _flagged(drift: list[ColumnDrift] | None) -> list[str]:
    return [] if drift is None else [d.feature for d in drift if d.drifted]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _swapped(mapping: dict[str, Any], key: str, value: Any) -> Iterator[None]:
    old = mapping[key]
    mapping[key] = value
    try:
        yield
    finally:
        mapping[key] = old


@contextmanager
def _ages_in_minutes() -> Iterator[None]:
    """The service computes item ages in minutes (the raw counter is seconds)."""
    from feedforge.serving import pipeline

    original = pipeline.raw_from_table

    def in_minutes(*args: Any, **kwargs: Any) -> Any:
        raw, missing = original(*args, **kwargs)
        raw["item_age_seconds"] = raw["item_age_seconds"] / 60.0
        return raw, missing

    pipeline.raw_from_table = in_minutes
    try:
        yield
    finally:
        pipeline.raw_from_table = original


def run_fault(
    traffic: Traffic,
    name: str,
    config: MonitoringConfig,
    inject: Callable[[], Any] = _nothing,
    **serving: Any,
) -> dict[str, Any]:
    """A clean baseline, then the fault, checking drift after every window until a column
    is flagged or ``fault_hours`` pass (see the module docs)."""
    variant = f"bench-{name}"
    traffic.fill_baseline(variant, config)
    result: dict[str, Any] = {
        "flagged_before_injection": _flagged(traffic.drift(variant, config)),
        "detected": False,
    }
    started = traffic.requests
    windows = int(traffic.spec.fault_hours * 3600 // config.window_s)
    with inject():
        for w in range(windows):
            traffic.serve(variant, config.window_s, **serving)
            flagged = _flagged(traffic.drift(variant, config))
            if flagged:
                result.update(
                    detected=True,
                    windows_after_injection=w + 1,
                    flagged=flagged,
                )
                break
    result["requests_after_injection"] = traffic.requests - started
    return result


def run_faults(traffic: Traffic, config: MonitoringConfig, progress: Progress) -> dict[str, Any]:
    """Every drift fault, then the stale version (see the module docs)."""
    table = traffic.state.item_table
    out: dict[str, Any] = {}
    progress("fault: device shift")
    out["device_shift"] = run_fault(traffic, "device", config, device="tv")
    progress("fault: new-user surge")
    out["new_user_surge"] = run_fault(traffic, "new-users", config, new_user_share=0.5)
    progress("fault: dead feature")
    dead = np.zeros_like(table.values["duration_seconds"])
    out["dead_feature"] = run_fault(
        traffic,
        "dead",
        config,
        lambda: _swapped(table.values, "duration_seconds", dead),
    )
    progress("fault: unit skew (drift)")
    out["unit_skew"] = {"drift": run_fault(traffic, "unit-skew", config, _ages_in_minutes)}
    progress("fault: unit skew (monitor skew)")
    out["unit_skew"]["skew_report"] = skew_detection(traffic, config)
    out["stale_version"] = stale_version(traffic, config)
    return out


def skew_detection(traffic: Traffic, config: MonitoringConfig, every: int = 25) -> dict[str, Any]:
    """Serve with item ages in minutes until ``feedforge monitor skew`` over the requests
    logged since the injection names ``item_age_days_log`` first (checked every ``every``
    requests; a ``monitoring.skew_sample`` share of requests is logged)."""
    traffic.service.monitor.write_skew_sample()  # what earlier scenarios sampled
    since = datetime.now(UTC)
    started = traffic.requests
    limit = int(traffic.spec.fault_hours * traffic.spec.feeds_per_hour)
    with _ages_in_minutes():
        while traffic.requests - started < limit:
            traffic.serve("bench-skew", every * 3600.0 / traffic.spec.feeds_per_hour)
            traffic.service.monitor.write_skew_sample()
            try:
                report = skew_report(traffic.workdir, traffic.store, since)
            except DataError:
                continue  # nothing logged yet
            worst = report.worst(1)
            if report.requests and worst and worst[0].mismatch_rate > 0.5:
                return {
                    "detected": True,
                    "requests_after_injection": traffic.requests - started,
                    "logged_requests": report.requests,
                    "named": worst[0].feature,
                    "mismatch_rate": round(worst[0].mismatch_rate, 4),
                    "skew_sample": config.skew_sample,
                }
    return {
        "detected": False,
        "requests_after_injection": traffic.requests - started,
        "skew_sample": config.skew_sample,
    }


def stale_version(traffic: Traffic, config: MonitoringConfig) -> dict[str, Any]:
    """When the version-age gauge crosses ``max_version_age_s`` without a publish, read from
    the service's own scrape on the simulated clock, hour by hour."""
    state = traffic.state
    saved = traffic.now
    crossed = None
    try:
        for hour in range(1, int(config.max_version_age_s // 3600) + 48):
            traffic.now = state.published_at + hour * 3600.0
            ages = {
                family.name: family.samples[0].value
                for family in traffic.service.monitor.collect()
                if family.name == "feedforge_version_age_seconds" and family.samples
            }
            if ages["feedforge_version_age_seconds"] > config.max_version_age_s:
                crossed = hour
                break
    finally:
        traffic.now = saved
    return {
        "detected": crossed is not None,
        "hours_after_publish": crossed,
        "threshold_hours": config.max_version_age_s / 3600,
        "alert": "FeedforgeStaleVersion (fires after its `for` on top)",
    }


def run_false_alarms(
    traffic: Traffic, config: MonitoringConfig, progress: Progress
) -> dict[str, Any]:
    """An unshifted week: how often a window check flags a column, per baseline."""
    variant = "bench-week"
    traffic.fill_baseline(variant, config)
    reference = traffic.state.reference
    assert reference is not None
    training = config.model_copy(update={"drift_baseline": "training"})
    checks = 0
    flagged: dict[str, int] = {"serving": 0, "training": 0}
    per_column: dict[str, dict[str, int]] = {"serving": {}, "training": {}}
    windows = int(traffic.spec.week_hours * 3600 // config.window_s)
    for w in range(windows):
        if w % 96 == 0:
            progress(f"unshifted week: window {w:,} / {windows:,}")
        traffic.serve(variant, config.window_s)
        served = traffic.windows(variant)
        checks += 1
        for name, cfg in (("serving", config), ("training", training)):
            pair = measured(served, reference, cfg)
            names = _flagged(None if pair is None else compare(*pair, cfg))
            flagged[name] += bool(names)
            for column in names:
                per_column[name][column] = per_column[name].get(column, 0) + 1
    return {
        "hours": traffic.spec.week_hours,
        "window_checks": checks,
        "requests": checks * round(traffic.spec.feeds_per_hour * config.window_s / 3600),
        "false_alarm_rate": {k: v / checks for k, v in flagged.items()},
        "flagged_checks": flagged,
        "flags_per_column": per_column,
    }


def run_request_cost(traffic: Traffic, progress: Progress) -> dict[str, Any]:
    """Latency of ``recommend`` with and without the serving profile, alternating."""
    monitor = traffic.service.monitor
    recorder, feature_log = monitor.recorder, monitor.feature_log
    plan = default_plan(traffic.settings)
    times: dict[str, list[float]] = {"with": [], "without": []}
    users = traffic.rng.choice(
        len(traffic.user_ids), size=traffic.spec.cost_requests, p=traffic.weights
    )
    for warm in users[:200]:
        traffic.service.recommend(traffic.user_ids[int(warm)], traffic.spec.k, None, plan, "w")
    progress("request cost: alternating requests with and without the profile")
    try:
        for n, u in enumerate(users):
            for arm in ("with", "without") if n % 2 == 0 else ("without", "with"):
                monitor.recorder = recorder if arm == "with" else None
                monitor.feature_log = feature_log if arm == "with" else None
                t0 = time.perf_counter()
                traffic.service.recommend(
                    traffic.user_ids[int(u)], traffic.spec.k, None, plan, f"c{n}"
                )
                times[arm].append((time.perf_counter() - t0) * 1e3)
    finally:
        monitor.recorder, monitor.feature_log = recorder, feature_log
    out: dict[str, Any] = {"requests_per_arm": len(users)}
    if recorder is not None:
        # What the monitor thread does with them: bin every queued feed in one pass.
        queued = recorder.queued()
        t0 = time.perf_counter()
        recorder.accumulate()
        if queued:
            out["monitor_thread_us_per_feed"] = round((time.perf_counter() - t0) / queued * 1e6, 1)
    for arm, values in times.items():
        out[arm] = {
            "p50_ms": round(float(np.percentile(values, 50)), 3),
            "p99_ms": round(float(np.percentile(values, 99)), 3),
        }
    added = out["with"]["p50_ms"] - out["without"]["p50_ms"]
    out["added_p50_ms"] = round(added, 3)
    out["added_p99_ms"] = round(out["with"]["p99_ms"] - out["without"]["p99_ms"], 3)
    out["target_added_p50_ms"] = COST_TARGET_MS
    out["met"] = added <= COST_TARGET_MS
    return out


def run_monitoring_bench(
    settings: Settings, out_dir: Path, spec: BenchSpec, progress: Progress
) -> dict[str, Any]:
    """The whole benchmark; writes ``monitoring.json`` and ``.md`` into ``out_dir``."""
    started = time.perf_counter()
    config = settings.monitoring
    report: dict[str, Any] = {"spec": asdict(spec), "monitoring": config.model_dump()}
    progress("drift speed")
    report["drift_speed"] = run_drift_speed(spec, config)
    with tempfile.TemporaryDirectory(prefix="ff-bench-mon-") as tmp:
        workdir = Workdir.at(Path(tmp) / "w")
        report["setup_seconds"] = set_up_world(workdir, settings, progress)
        world = World.load(workdir.catalog_dir / WORLD_FILE)
        report["world"] = {
            "users": world.n_users,
            "items": world.n_items,
            "ranker": settings.models.ranker.type,
            "feeds_per_hour": spec.feeds_per_hour,
            "feed_size": spec.k,
        }
        traffic = Traffic(settings, workdir, world, spec)
        try:
            report["request_cost"] = run_request_cost(traffic, progress)
            report["false_alarms"] = run_false_alarms(traffic, config, progress)
            report["faults"] = run_faults(traffic, config, progress)
        finally:
            traffic.close()
    report.update(run_info(started))
    write_report(out_dir, "monitoring", report, render_markdown(report))
    return report


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render_markdown(report: dict[str, Any]) -> str:
    """The benchmark's table."""
    speed, cost, alarms = report["drift_speed"], report["request_cost"], report["false_alarms"]
    lines = [
        "# Monitoring benchmark",
        "",
        f"Command: `{report['command']}` ({report['total_seconds']} s on "
        f"{report['machine']['cpus']} CPUs). World: {report['world']['users']:,} users, "
        f"{report['world']['items']:,} items, ranker {report['world']['ranker']}, "
        f"{report['world']['feeds_per_hour']} feeds of {report['world']['feed_size']} per "
        "simulated hour.",
        "",
        "## Drift speed (target: under 10 s)",
        "",
        f"{speed['served_rows']:,} served rows x {speed['features']} features against a "
        f"reference of {speed['reference_rows']:,} rows, {speed['bins']} quantile bins: "
        f"profiling the served rows **{speed['serving_profile_seconds']} s**, drift from the "
        f"two profiles **{speed['drift_from_profiles_seconds']} s**, total "
        f"**{speed['total_seconds']} s** (met: {_yes(speed['met'])}).",
        "",
        "## Faults",
        "",
        "| fault | detected | requests after injection | flagged |",
        "|---|---|---|---|",
    ]
    faults = report["faults"]
    for name in ("device_shift", "new_user_surge", "dead_feature"):
        f = faults[name]
        lines.append(
            f"| {name} | {_yes(f['detected'])} | {f['requests_after_injection']:,} | "
            f"{', '.join(f.get('flagged', [])) or '-'} |"
        )
    skew = faults["unit_skew"]
    lines.append(
        f"| unit_skew (drift) | {_yes(skew['drift']['detected'])} | "
        f"{skew['drift']['requests_after_injection']:,} | "
        f"{', '.join(skew['drift'].get('flagged', [])) or '-'} |"
    )
    if "skew_report" in skew:
        s = skew["skew_report"]
        lines.append(
            f"| unit_skew (`monitor skew`) | {_yes(s['detected'])} | "
            f"{s['requests_after_injection']:,} | {s.get('named') or '-'} |"
        )
    stale = faults["stale_version"]
    lines += [
        f"| stale_version | {_yes(stale['detected'])} | (clock: "
        f"{stale['hours_after_publish']} h after the publish; threshold "
        f"{stale['threshold_hours']:g} h) | feedforge_version_age_seconds |",
        "",
        "## False alarms over an unshifted week",
        "",
        f"{alarms['window_checks']:,} window checks over {alarms['hours']} simulated hours "
        f"({alarms['requests']:,} requests; consecutive checks share windows, so they are "
        "not independent trials).",
        "",
        "| baseline | checks flagging a column | rate | columns flagged (checks) |",
        "|---|---|---|---|",
    ]
    for name in ("serving", "training"):
        per = alarms["flags_per_column"][name]
        top = ", ".join(f"{c} ({n})" for c, n in sorted(per.items(), key=lambda x: -x[1])[:6])
        lines.append(
            f"| {name} | {alarms['flagged_checks'][name]:,} | "
            f"{alarms['false_alarm_rate'][name]:.1%} | {top or '-'} |"
        )
    lines += [
        "",
        "## Cost on the request path (target: at most +0.3 ms p50)",
        "",
        "| arm | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| with the profile (and the skew sample) | {cost['with']['p50_ms']} | "
        f"{cost['with']['p99_ms']} |",
        f"| without | {cost['without']['p50_ms']} | {cost['without']['p99_ms']} |",
        f"| added | **{cost['added_p50_ms']:+}** | {cost['added_p99_ms']:+} |",
        "",
        f"{cost['requests_per_arm']:,} requests per arm, alternating in one run "
        f"(met: {_yes(cost['met'])}). The request queues its rows; the monitor thread bins "
        f"them in one pass per flush: {cost.get('monitor_thread_us_per_feed', '-')} µs per "
        "feed, off the request path.",
        "",
    ]
    return "\n".join(lines)
