"""The soak test: ``feedforge bench soak``, half an hour of mixed traffic against the real
service and Redis while an operator publishes, rolls back and compacts.

In a temporary work directory it:

1. simulates a world, builds, trains and publishes it to Redis (a namespace of its own,
   deleted at the end);
2. starts ``feedforge serve --workers W`` with a write key and a read key (in its
   environment, as a deployment sets them);
3. runs the mixed traffic of :mod:`feedforge.bench.soak_traffic` from a separate process for
   ``--duration`` seconds: feeds, event batches (with re-sends and invalid events), health
   and metrics scrapes;
4. meanwhile, as an operator would, runs ``feedforge publish`` every ``--publish-every``
   seconds, ``feedforge rollback`` half-way between two publishes, and ``feedforge compact``
   (today's partition included) every ``--compact-every`` seconds, each as its own process;
5. samples every ``--sample-every`` seconds the resident memory (RSS) of the service's
   processes (the supervisor and every worker) and of the Redis server, and the sizes of the
   feed log, the event log and the held-history journals;
6. stops the service gracefully and checks every acknowledged event id against the event
   log.

The report (``docs/benchmarks/soak.json`` and ``.md``) gives the 5xx count per stream, lost
acknowledged events, counts that do not add up, feed latency per 5-minute window, the memory
series with start, reference and end values, and the operations' exit codes and durations.

**Flat memory** is measured, for each process of the service, as its RSS at the end against
its RSS at the reference sample, the first one at least two publish cycles in (both a publish
and a rollback have made every worker load a new version by then): flat when the end is at most
:data:`FLAT_GROWTH` above the reference. The least-squares slope after the reference (MiB per
hour) is reported beside it. The Redis server's RSS is reported too, with its data (keys,
``used_memory``): it holds the data set, which grows by design while versions are kept and
the users' live histories fill up to ``serving.history_length``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from feedforge.bench import serve_load
from feedforge.bench.report import run_info, write_report
from feedforge.bench.service import (
    Progress,
    bench_settings,
    drop_namespace,
    key_env,
    key_header,
    set_up_world,
    start_service,
    write_service_config,
)
from feedforge.bench.soak_traffic import TrafficSpec, drive
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.errors import FeedforgeError
from feedforge.events.log import EventLog
from feedforge.workdir import Workdir

FLAT_GROWTH = 0.10
"""A process's memory is flat when its end RSS is at most this share above the reference."""

MIB = 1024 * 1024


@dataclass(frozen=True)
class SoakSpec:
    """What the soak builds, how hard it drives it and how often the operator acts."""

    duration_s: float = 1800.0
    items: int = 10_000
    users: int = 5_000
    days: int = 14
    feed_rate: float = 40.0
    event_rate: float = 400.0
    workers: int = 2
    publish_every_s: float = 300.0
    compact_every_s: float = 600.0
    sample_every_s: float = 30.0
    redis_url: str = "redis://127.0.0.1:6379/0"


def _dir_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    total = 0
    for file in path.rglob("*"):
        try:
            if file.is_file():
                total += file.stat().st_size
        except OSError:  # deleted meanwhile (rotation, compaction)
            pass
    return total


def _child_name(child: Any) -> str:
    """``worker <pid>`` for a service worker, else the helper's kind and pid (e.g. the
    multiprocessing resource tracker uvicorn's supervisor starts)."""
    command = " ".join(child.cmdline())
    if "resource_tracker" in command:
        return f"resource tracker {child.pid}"
    return f"worker {child.pid}"


class _Sampler(threading.Thread):
    """Samples memory and sizes every ``every`` seconds until stopped."""

    def __init__(self, service_pid: int, redis_url: str, workdir: Workdir, every: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        import psutil  # the bench extra (serve_load.require_client_libraries)
        import redis

        self.service = psutil.Process(service_pid)
        self.redis = redis.Redis.from_url(redis_url)
        self.workdir = workdir
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.started = time.monotonic()
        try:  # the server's own process when it runs on this machine, else its INFO figure
            self.redis_process: Any = psutil.Process(int(self.redis.info("server")["process_id"]))
        except (psutil.Error, KeyError, ValueError):
            self.redis_process = None

    def sample(self) -> None:
        import psutil

        rss: dict[str, float] = {}
        try:
            rss["service"] = self.service.memory_info().rss / MIB
            for child in self.service.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # gone since the listing
                    rss[_child_name(child)] = child.memory_info().rss / MIB
        except psutil.Error:
            pass
        try:
            if self.redis_process is not None:
                rss["redis-server"] = self.redis_process.memory_info().rss / MIB
            else:
                rss["redis-server"] = int(self.redis.info("memory")["used_memory_rss"]) / MIB
        except Exception:  # a sample is best effort; the next one tries again
            pass
        redis_data: dict[str, float] = {}
        with contextlib.suppress(Exception):  # best effort, as above
            redis_data["used_memory_mib"] = int(self.redis.info("memory")["used_memory"]) / MIB
            redis_data["keys"] = int(self.redis.dbsize())
        feedlog = self.workdir.feedlog_dir
        self.samples.append(
            {
                "t_s": round(time.monotonic() - self.started, 1),
                "rss_mib": {name: round(value, 1) for name, value in rss.items()},
                "redis_data": {name: round(value, 1) for name, value in redis_data.items()},
                "feed_log_mib": round(_dir_bytes(feedlog) / MIB, 2),
                "feed_log_files": len(list(feedlog.glob("*.jsonl"))) if feedlog.is_dir() else 0,
                "event_log_mib": round(_dir_bytes(self.workdir.events_dir) / MIB, 2),
                "held_mib": round(_dir_bytes(self.workdir.held_dir) / MIB, 3),
            }
        )

    def run(self) -> None:
        self.sample()
        while not self.stop.wait(self.every):
            self.sample()
        self.sample()
        self.redis.close()


class _Operator(threading.Thread):
    """Publishes, rolls back and compacts on a schedule, each as a ``feedforge`` process."""

    def __init__(self, workdir: Workdir, config: Path, env: dict[str, str], spec: SoakSpec) -> None:
        super().__init__(name="soak-operator", daemon=True)
        self.workdir = workdir
        self.config = config
        self.env = {**os.environ, **env}
        self.stop = threading.Event()
        plan: list[tuple[float, str]] = []
        t = spec.publish_every_s
        while t < spec.duration_s:
            plan.append((t, "publish"))
            if t + spec.publish_every_s / 2 < spec.duration_s:
                plan.append((t + spec.publish_every_s / 2, "rollback"))
            t += spec.publish_every_s
        t = spec.compact_every_s - 90.0
        while t < spec.duration_s:
            if t > 0:
                plan.append((t, "compact"))
            t += spec.compact_every_s
        self.plan = sorted(plan)
        self.done: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def run(self) -> None:
        for at, name in self.plan:
            if self.stop.wait(max(0.0, self.started + at - time.monotonic())):
                return
            command = [
                sys.executable, "-c", "from feedforge.cli import main; main()", name,
                "--workdir", str(self.workdir.root), "--config", str(self.config),
            ]  # fmt: skip
            if name == "compact":  # today's partition too: appends go on meanwhile
                tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
                command += ["--before", tomorrow]
            t0 = time.monotonic()
            result = subprocess.run(
                command, env=self.env, capture_output=True, text=True, check=False
            )
            self.done.append(
                {
                    "operation": name,
                    "at_s": round(t0 - self.started, 1),
                    "seconds": round(time.monotonic() - t0, 1),
                    "exit_code": result.returncode,
                    "output": (result.stdout + result.stderr).strip().splitlines()[-3:],
                }
            )


def _memory(samples: list[dict[str, Any]], reference_s: float) -> list[dict[str, Any]]:
    """Per process: RSS at start, at the reference sample, at the end, the maximum, the
    slope after the reference, and whether the end is within :data:`FLAT_GROWTH`."""
    names = sorted({name for s in samples for name in s["rss_mib"]})
    rows = []
    for name in names:
        series = [(s["t_s"], s["rss_mib"][name]) for s in samples if name in s["rss_mib"]]
        after = [(t, v) for t, v in series if t >= reference_s]
        if not after:
            continue
        reference, end = after[0][1], series[-1][1]
        slope = None
        if len(after) >= 3:
            t = np.asarray([p[0] for p in after]) / 3600.0
            slope = float(np.polyfit(t, np.asarray([p[1] for p in after]), 1)[0])
        rows.append(
            {
                "process": name,
                "start_mib": series[0][1],
                "reference_mib": reference,
                "end_mib": end,
                "max_mib": max(v for _, v in series),
                "growth_after_reference": (end - reference) / reference if reference else None,
                "slope_mib_per_hour": slope,
                "flat": end <= reference * (1 + FLAT_GROWTH),
            }
        )
    return rows


def _lost_events(workdir: Workdir, acked_path: Path) -> dict[str, Any]:
    """Acknowledged ids missing from the event log, and soak events stored unacknowledged."""
    import polars as pl

    acked = set(acked_path.read_text(encoding="utf-8").split())
    log = EventLog(workdir.events_dir)
    with log.reading():
        stored = set(
            log.scan()
            .filter(pl.col("event_id").str.starts_with("soak-"))
            .select("event_id")
            .collect()["event_id"]
            .to_list()
        )
    lost = sorted(acked - stored)
    return {
        "acknowledged": len(acked),
        "in_log": len(stored),
        "lost": len(lost),
        "lost_examples": lost[:10],
        "stored_not_acknowledged": len(stored - acked),
    }


def run_soak(
    base_settings: Settings,
    spec: SoakSpec,
    out_dir: Path | None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the soak (see the module docs); write ``soak.json`` / ``.md`` to ``out_dir``.

    Raises:
        FeedforgeError: the ``bench`` extra is not installed, the service did not start, or
            the traffic process gave no result.
    """
    serve_load.require_client_libraries()
    import httpx  # the bench extra, checked above

    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    namespace = f"soak-{uuid.uuid4().hex[:12]}"
    # Keys of this run only.
    keys = {"api_key": uuid.uuid4().hex, "read_api_key": uuid.uuid4().hex}
    settings = bench_settings(
        base_settings,
        items=spec.items,
        users=spec.users,
        days=spec.days,
        redis_url=spec.redis_url,
        namespace=namespace,
        serving=keys,
    )
    with tempfile.TemporaryDirectory(prefix="feedforge-soak-") as tmp:
        workdir = Workdir.at(Path(tmp) / "work")
        config = Path(tmp) / "config.yaml"
        write_service_config(settings, config)
        env = key_env(settings)
        acked_path = Path(tmp) / "acknowledged.txt"
        try:
            setup = set_up_world(workdir, settings, say)
            dataset = load_dataset(workdir)
            users = dataset.users.ids.to_list()
            items = dataset.items.ids.to_list()
            say(f"starting feedforge serve --workers {spec.workers}")
            service_log = Path(tmp) / "service.log"
            process, base = start_service(workdir, config, spec.workers, env, service_log)
            read_headers = key_header(settings.serving.read_api_key)
            try:
                with httpx.Client(base_url=base, timeout=120, headers=read_headers) as client:
                    for j in range(20 * spec.workers):
                        client.get("/recommend", params={"user_id": users[j % len(users)]})
                sampler = _Sampler(process.pid, spec.redis_url, workdir, spec.sample_every_s)
                operator = _Operator(workdir, config, env, spec)
                traffic = TrafficSpec(
                    base=base,
                    users=users,
                    items=items,
                    duration_s=spec.duration_s,
                    feed_rate=spec.feed_rate,
                    event_rate=spec.event_rate,
                    read_headers=read_headers,
                    write_headers=key_header(settings.serving.api_key),
                    acked_path=acked_path,
                )
                context = multiprocessing.get_context("spawn")
                queue: Any = context.Queue()
                driver = context.Process(target=drive, args=(traffic, queue))
                say(f"soaking for {spec.duration_s:.0f} s")
                sampler.start()
                operator.start()
                driver.start()
                try:
                    result = _result(queue, driver, spec.duration_s + 600)
                finally:
                    driver.join(timeout=60)
                    operator.stop.set()
                    operator.join()
                    sampler.stop.set()
                    sampler.join()
            finally:
                say("stopping the service")
                process.terminate()
                service_exit = process.wait(timeout=120)
            say("checking every acknowledged event against the event log")
            events = _lost_events(workdir, acked_path)
            log_summary = _log_summary(service_log)
        finally:
            drop_namespace(settings)
    reference_s = min(2 * spec.publish_every_s, spec.duration_s / 2)
    memory = _memory(sampler.samples, reference_s)
    server_errors = {
        stream: sum(n for code, n in counts.items() if code.isdigit() and int(code) >= 500)
        for stream, counts in result["statuses"].items()
    }
    report: dict[str, Any] = {
        "spec": asdict(spec),
        "namespace": namespace,
        "setup_seconds": setup,
        "traffic": result,
        "server_errors": server_errors,
        "events_check": events,
        "operations": operator.done,
        "service_exit_code": service_exit,
        "service_log": log_summary,
        "reference_s": reference_s,
        "memory": memory,
        "samples": sampler.samples,
        # The cap counts every file but those the workers are writing, each up to
        # feed_log_max_bytes.
        "feed_log_bound_mib": None
        if settings.serving.feed_log_max_total_bytes is None
        else (
            settings.serving.feed_log_max_total_bytes
            + spec.workers * settings.serving.feed_log_max_bytes
        )
        / MIB,
        **run_info(started),
    }
    report["targets"] = _targets(report)
    if out_dir is not None:
        write_report(out_dir, "soak", report, _markdown(report))
    return report


def _result(queue: Any, driver: Any, timeout_s: float) -> dict[str, Any]:
    """The traffic process's summary; fails as soon as that process died without one."""
    import queue as queues

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result: dict[str, Any] = queue.get(timeout=5)
            return result
        except queues.Empty:
            if not driver.is_alive():
                raise FeedforgeError(
                    f"the soak's traffic process exited with code {driver.exitcode} "
                    "without a result (its traceback is above)"
                ) from None
    raise FeedforgeError(f"the soak's traffic process gave no result in {timeout_s:.0f} s")


def _log_summary(path: Path) -> dict[str, Any]:
    """Lines of the service's log by level, with the first error and warning lines."""
    levels: dict[str, int] = {}
    examples: dict[str, list[str]] = {"ERROR": [], "WARNING": []}
    text = path.read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        level = next((name for name in ("ERROR", "WARNING", "INFO") if name in line), "other")
        levels[level] = levels.get(level, 0) + 1
        if level in examples and len(examples[level]) < 5:
            examples[level].append(line[:300])
    # uvicorn's line once a worker ran its shutdown (the app's lifespan: held histories
    # written, feed log closed).
    shutdowns = text.count("Application shutdown complete")
    return {"lines_by_level": levels, "examples": examples, "worker_shutdowns": shutdowns}


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    events = report["events_check"]
    traffic = report["traffic"]
    fives = sum(report["server_errors"].values())
    transport = sum(
        n for counts in traffic["statuses"].values() for code, n in counts.items()
        if not code.isdigit()
    )  # fmt: skip
    failed_ops = [op for op in report["operations"] if op["exit_code"] != 0]
    bound = report["feed_log_bound_mib"]
    biggest = max(s["feed_log_mib"] for s in report["samples"])
    # Redis holds the data set (versions kept, live histories filling up), reported on its own.
    service = [row for row in report["memory"] if row["process"] != "redis-server"]
    flat = all(row["flat"] for row in service)
    return [
        {"target": "0 responses 5xx", "measured": fives, "met": fives == 0},
        {"target": "0 transport failures", "measured": transport, "met": transport == 0},
        {
            "target": "0 lost acknowledged events",
            "measured": events["lost"],
            "met": not events["lost"],
        },
        {
            "target": "every answer's counts add up",
            "measured": traffic["events"]["n_count_mismatches"],
            "met": traffic["events"]["n_count_mismatches"] == 0,
        },
        {
            "target": f"flat memory (end <= {1 + FLAT_GROWTH:.2f} x reference, every process "
            "of the service)",
            "measured": ", ".join(
                f"{row['process']} {row['reference_mib']:.0f}->{row['end_mib']:.0f} MiB"
                for row in service
            ),
            "met": flat,
        },
        {
            "target": "feed log within its cap plus each worker's open file",
            "measured": f"max {biggest:.1f} MiB (bound {bound} MiB)",
            "met": bound is None or biggest <= bound,
        },
        {
            "target": "every operation succeeded",
            "measured": f"{len(report['operations']) - len(failed_ops)} of "
            f"{len(report['operations'])}",
            "met": not failed_ops,
        },
        {
            # A single uvicorn process re-raises SIGTERM once it has shut down: exit -15.
            "target": "graceful stop (every worker shut its app down)",
            "measured": f"exit code {report['service_exit_code']}, "
            f"{report['service_log']['worker_shutdowns']} of {report['spec']['workers']} "
            "workers shut down",
            "met": report["service_exit_code"] in (0, -signal.SIGTERM)
            and report["service_log"]["worker_shutdowns"] == report["spec"]["workers"],
        },
    ]


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f}"


def _markdown(report: dict[str, Any]) -> str:
    spec = report["spec"]
    traffic = report["traffic"]
    events = traffic["events"]
    check = report["events_check"]
    lines = [
        "# Soak: mixed traffic with publishes, rollbacks and compactions",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{spec['duration_s']:.0f} s against `feedforge serve --workers {spec['workers']}` and "
        f"Redis, with a write key and a read key; a simulated world of {spec['items']} items "
        f"and {spec['users']} users. Traffic from a separate process: feeds at "
        f"{spec['feed_rate']}/s (5 % unknown users, k of 10, 50 or 100), events at "
        f"{spec['event_rate']}/s in batches of 1 to 200 (5 % of the batches re-sent, 5 % with "
        "one invalid event), `/health` every 5 s and `/metrics` every 15 s. The operator ran "
        f"`feedforge publish` every {spec['publish_every_s']:.0f} s, `feedforge rollback` "
        "half-way between publishes and `feedforge compact` (today included) every "
        f"{spec['compact_every_s']:.0f} s. Machine: {report['machine']['cpus']} CPUs (service, "
        "Redis, traffic and operator share them). Setup (s): "
        f"{report['setup_seconds']}; whole run {report['total_seconds']} s.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(
            f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |"
            for t in report["targets"]
        ),
        "",
        f"Statuses: {traffic['statuses']}. The service's log, lines by level: "
        f"{report['service_log']['lines_by_level']}.",
        "",
        f"Events: {events['events_sent']} sent in {events['batches']} batches; "
        f"{check['acknowledged']} acknowledged, {check['in_log']} of the soak's events in the "
        f"log after the stop, {check['lost']} acknowledged ones missing, "
        f"{check['stored_not_acknowledged']} stored without an acknowledgement; "
        f"{events['resends']} re-sent batches ({events['resent_events']} events) answered "
        f"{events['duplicates']} duplicates; {events['invalid_sent']} invalid events sent, "
        f"{events['invalid_rejected']} rejected.",
        "",
        f"Feeds: {traffic['feeds']['requests']} requests, {traffic['feeds']['degraded']} "
        f"degraded; versions served: {traffic['feeds']['versions_served']}.",
        "",
        "| window from s | requests | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        *(
            f"| {w['from_s']:.0f} | {w['requests']} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | "
            f"{w['max_ms']:.1f} |"
            for w in traffic["feeds"]["windows"]
        ),
        "",
        f"Memory (RSS, MiB; reference: the first sample at or after {report['reference_s']:.0f}"
        f" s; flat: end <= {1 + FLAT_GROWTH:.2f} x reference):",
        "",
        "| process | start | reference | end | max | growth after reference | slope MiB/h "
        "after reference | flat |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['process']} | {r['start_mib']:.1f} | {r['reference_mib']:.1f} | "
            f"{r['end_mib']:.1f} | {r['max_mib']:.1f} | "
            f"{100 * (r['growth_after_reference'] or 0):+.1f} % | "
            f"{_signed(r['slope_mib_per_hour'])} | "
            f"{'yes' if r['flat'] else '**no**'} |"
            for r in report["memory"]
        ),
        "",
        "Sizes over time (MiB; the feed log's bound, its cap plus each worker's open file: "
        f"{report['feed_log_bound_mib']} MiB):",
        "",
        "| t s | feed log | feed log files | event log | held journals | Redis keys | Redis "
        "used_memory |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {s['t_s']:.0f} | {s['feed_log_mib']:.1f} | {s['feed_log_files']} | "
            f"{s['event_log_mib']:.1f} | {s['held_mib']:.3f} | "
            f"{s['redis_data'].get('keys', '')} | {s['redis_data'].get('used_memory_mib', '')} |"
            for s in report["samples"][:: max(1, len(report["samples"]) // 12)]
        ),
        "",
        "Operations:",
        "",
        "| at s | operation | seconds | exit code |",
        "|---|---|---|---|",
        *(
            f"| {op['at_s']:.0f} | {op['operation']} | {op['seconds']} | {op['exit_code']} |"
            for op in report["operations"]
        ),
        "",
    ]
    return "\n".join(lines)
