"""The load benchmark: a simulated catalog published to a real Redis, served by
``feedforge serve``, driven at a fixed arrival rate from a separate process.

``feedforge bench serve`` runs, in a temporary work directory:

1. **setup**: simulate the world (``--items``, ``--users``, ``--days``), build, train the
   configured models, publish to Redis (``--redis-url``, a namespace of its own, deleted at
   the end), all timed;
2. **service**: ``feedforge serve --workers W`` in its own process, warmed up (every worker
   loads the version) before measuring;
3. **feeds**: an open-loop driver (aiohttp) in another process sends ``GET /recommend`` at Poisson
   arrivals of ``--rate`` per second for ``--duration`` seconds, each request at its scheduled
   time whatever the earlier ones are doing; a request's latency counts from its *scheduled*
   send time, so queueing behind a slow server is measured (no coordinated omission). p50 /
   p95 / p99, errors (non-200 or transport failures), degraded answers, achieved throughput;
4. **ingestion**: ``POST /events`` in batches of ``--ingest-batch`` from 4 concurrent clients
   for ``--ingest-seconds``; an event counts when acknowledged, i.e. durable in the log;
5. **compute floor**: in this process, with no HTTP and no Redis, the same version's ANN search
   for ``serving.candidates`` candidates plus the ranker's feature assembly and forward pass,
   per request (median over sampled users);
6. **profile**: the service's own per-stage histogram sums (``/metrics``) over the run.

Results go to ``docs/benchmarks/serve.json`` and ``.md`` with the command that made them.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from feedforge.bench.report import run_info, write_report
from feedforge.config import Settings
from feedforge.datasets.build import build_dataset
from feedforge.datasets.load import load_dataset
from feedforge.errors import FeedforgeError
from feedforge.events.simulator import simulate
from feedforge.features.definitions import RAW_COUNTERS, derive_features
from feedforge.index.ann import AnnIndex
from feedforge.models.train import train_models
from feedforge.publish.publisher import publish
from feedforge.serving.version import load_version
from feedforge.store.factory import open_store
from feedforge.store.keys import USER_EMB, Keys, glob_pattern
from feedforge.workdir import Workdir

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoadSpec:
    """What the benchmark builds and how hard it drives it."""

    items: int = 1_000_000
    users: int = 20_000
    days: int = 7
    rate: float = 200.0
    duration_s: float = 60.0
    workers: int = 2
    candidates: int = 500
    ingest_seconds: float = 10.0
    ingest_batch: int = 1_000
    floor_users: int = 200
    redis_url: str = "redis://127.0.0.1:6379/0"
    extra_rates: tuple[float, ...] = ()  # further open-loop runs, e.g. to find the capacity


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(values) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


async def _open_loop(base: str, users: list[str], rate: float, duration_s: float) -> dict[str, Any]:
    import aiohttp

    rng = np.random.default_rng(0)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.5) + 16)
    schedule = np.cumsum(gaps)
    schedule = schedule[schedule < duration_s]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    degraded = 0
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2

        async def one(at: float, user: str) -> None:
            nonlocal degraded
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            try:
                async with session.get("/recommend", params={"user_id": user, "k": 10}) as r:
                    body = await r.read()
                    key = str(r.status)
                    degraded += r.status == 200 and b'"degraded":true' in body
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
            latencies.append(loop.time() - (start + at))
            statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(
            *(one(float(at), users[i % len(users)]) for i, at in enumerate(schedule))
        )
        elapsed = loop.time() - start
    ok = statuses.get("200", 0)
    return {
        "offered_rate": rate,
        "requests": len(schedule),
        "elapsed_s": elapsed,
        "throughput_rps": ok / elapsed if elapsed > 0 else 0.0,
        "statuses": statuses,
        "errors": len(schedule) - ok,
        "degraded": degraded,
        **_percentiles(latencies),
    }


def _drive(base: str, users: list[str], rate: float, duration_s: float, out: Any) -> None:
    """The load generator's process entry point."""
    out.put(asyncio.run(_open_loop(base, users, rate, duration_s)))


def _event_batches(n_batches: int, batch: int) -> list[bytes]:
    """Request bodies of ``batch`` click events each, encoded before the clock starts (so the
    load generator's JSON encoding does not compete with the service for the CPUs); every
    event has its own event_id."""
    now = datetime.now(UTC).isoformat()
    run = uuid.uuid4().hex[:8]
    bodies = []
    for n in range(n_batches):
        events = [
            {
                "event_id": f"bench-{run}-{n}-{j}",
                "timestamp": now,
                "user_id": f"bench-user-{(n * batch + j) % 5000}",
                "item_id": f"i{(n * batch + j) % 1000:06d}",
                "event_type": "click",
            }
            for j in range(batch)
        ]
        bodies.append(json.dumps(events).encode())
    return bodies


async def _ingest(
    base: str, seconds: float, batch: int, clients: int = 4, max_rate: float = 50_000.0
) -> dict[str, Any]:
    """``clients`` concurrent clients post pre-encoded batches for ``seconds`` (at most
    ``max_rate`` events/s worth of bodies are prepared; a client stops when they run out)."""
    import aiohttp

    bodies = _event_batches(int(max_rate * seconds / batch) + clients, batch)
    acknowledged = 0
    failed = 0
    next_body = 0
    stop_at = 0.0  # set when the clock starts

    async def client_loop(session: aiohttp.ClientSession) -> None:
        nonlocal acknowledged, failed, next_body
        while time.perf_counter() < stop_at and next_body < len(bodies):
            body = bodies[next_body]
            next_body += 1
            headers = {"Content-Type": "application/json"}
            async with session.post("/events", data=body, headers=headers) as response:
                if response.status == 200:
                    acknowledged += (await response.json())["accepted"]
                else:
                    failed += batch

    started = time.perf_counter()
    stop_at = started + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base, timeout=timeout) as session:
        await asyncio.gather(*(client_loop(session) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "clients": clients,
        "acknowledged": acknowledged,
        "failed": failed,
        "seconds": elapsed,
        "events_per_s": acknowledged / elapsed if elapsed > 0 else 0.0,
    }


def _compute_floor(settings: Settings, workdir: Workdir, spec: LoadSpec) -> dict[str, Any]:
    """ANN search + feature assembly + ranker forward per request, no HTTP, no Redis."""
    with open_store(settings.store, workdir.store_path) as store:
        version = store.current_version()
        assert version is not None
        meta = store.get_meta(version) or {}
        state = load_version(store, version, meta, settings.serving, workdir.bundles_dir)
        users = load_dataset(workdir).users.ids.to_list()[: spec.floor_users]
        vectors, _ = store.get_vectors(version, USER_EMB, users)
    n = settings.serving.candidates
    n_categories = int(meta["n_categories"])
    timings: dict[str, list[float]] = {"retrieve": [], "features": [], "score": []}
    raw_base = {name: np.zeros(n) for name in RAW_COUNTERS}
    for query in vectors:
        t0 = time.perf_counter()
        found = state.index.retrieve(query, n)
        t1 = time.perf_counter()
        scores = np.asarray(found.scores, dtype=np.float64)
        raw = {name: values[: len(scores)] for name, values in raw_base.items()}
        X = derive_features(raw, scores, n_categories)
        t2 = time.perf_counter()
        if state.ranker is not None:
            state.ranker.score(X)
        t3 = time.perf_counter()
        timings["retrieve"].append(t1 - t0)
        timings["features"].append(t2 - t1)
        timings["score"].append(t3 - t2)
    total = [sum(parts) for parts in zip(*timings.values(), strict=True)]
    return {
        "beam": _beam_tradeoff(state.index, vectors, n),
        "users": len(vectors),
        "candidates": n,
        "ranker": meta.get("ranker"),
        "ann": meta.get("ann"),
        "served_items": int(meta.get("n_items", 0)),
        "cold_items": meta.get("cold_items"),
        "served_users": int(meta.get("n_users", 0)),
        "median_ms": {k: float(np.median(v) * 1e3) for k, v in timings.items()},
        "floor_p50_ms": float(np.median(total) * 1e3),
    }


BEAMS = (512, 768, 1024, 2048)
"""HNSW search beams (``serving.ann_ef_search``) whose recall and time the floor reports."""


def _beam_tradeoff(index: AnnIndex, queries: np.ndarray, n: int) -> list[dict[str, float]]:
    """Per search beam: median ms of one query's search for ``n`` candidates and the mean
    recall@n against exact search, over the floor's users (empty for an exact index)."""
    if index.kind != "hnsw" or not len(queries):
        return []
    exact_ids, _ = index.exact_search(queries, n)
    configured = index.ef_search
    rows = []
    try:
        for beam in BEAMS:
            index.ef_search = beam
            times, recalls = [], []
            for query, truth in zip(queries, exact_ids, strict=True):
                t0 = time.perf_counter()
                found = index.retrieve(query, n)
                times.append(time.perf_counter() - t0)
                truth = truth[truth >= 0]
                recalls.append(np.isin(found.ids, truth).sum() / max(len(truth), 1))
            rows.append(
                {
                    "ef_search": beam,
                    "median_ms": float(np.median(times) * 1e3),
                    "recall": float(np.mean(recalls)),
                }
            )
    finally:
        index.ef_search = configured
    return rows


def _profile(metrics_text: str) -> dict[str, dict[str, float]]:
    """Per stage: count and mean milliseconds from ``feedforge_stage_seconds``; under
    ``"request"`` the same for whole ``/recommend`` requests (``feedforge_request_seconds``,
    from the app's arrival of the request to the start of its answer)."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    sources = (
        ("feedforge_stage_seconds", 'stage="', None),
        ("feedforge_request_seconds", 'endpoint="/recommend"', "request"),
    )
    for line in metrics_text.splitlines():
        for name, label, fixed in sources:
            for suffix, target in (("_sum", sums), ("_count", counts)):
                prefix = f"{name}{suffix}{{{label}"
                if line.startswith(prefix):
                    key = fixed or line[len(prefix) :].split('"', 1)[0]
                    target[key] = float(line.rsplit(" ", 1)[1])
    return {
        stage: {"count": counts.get(stage, 0.0), "mean_ms": 1e3 * sums[stage] / counts[stage]}
        for stage in sums
        if counts.get(stage)
    }


def _tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants, from
    ``/proc`` (None where there is none)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    try:
        while todo:
            p = todo.pop()
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(c) for c in children]
    except (OSError, ValueError, IndexError):
        return None
    return total


def _drive_once(
    base: str, users: list[str], rate: float, duration_s: float, service_pid: int
) -> dict[str, Any]:
    """One open-loop run from a separate process, with the service's CPU time per request."""
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    driver = context.Process(target=_drive, args=(base, users, rate, duration_s, queue))
    cpu_before = _tree_cpu_s(service_pid)
    driver.start()
    feeds: dict[str, Any] = queue.get(timeout=duration_s + 600)
    driver.join(timeout=60)
    cpu_after = _tree_cpu_s(service_pid)
    feeds["service_cpu_ms_per_request"] = (
        None
        if cpu_before is None or cpu_after is None or not feeds["requests"]
        else 1e3 * (cpu_after - cpu_before) / feeds["requests"]
    )
    return feeds


def _start_service(
    workdir: Workdir, config: Path, workers: int
) -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-c", "from feedforge.cli import main; main()", "serve",
        "--workdir", str(workdir.root), "--config", str(config), "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=os.environ
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FeedforgeError("feedforge serve exited during start-up")
        try:
            if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise FeedforgeError("feedforge serve did not start in 120 s")


def run_serve(
    base_settings: Settings, spec: LoadSpec, out_dir: Path | None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the benchmark (see the module docs); write ``serve.json`` / ``.md`` to ``out_dir``."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    namespace = f"bench-{uuid.uuid4().hex[:12]}"
    data = base_settings.model_dump(mode="json")
    data["simulator"] = {**data["simulator"], "n_items": spec.items, "n_users": spec.users}
    data["simulator"]["n_days"] = spec.days
    data["dataset"] = {**data["dataset"], "validation_days": 1, "test_days": 1}
    data["store"] = {**data["store"], "type": "redis", "redis_url": spec.redis_url}
    data["store"]["namespace"] = namespace
    data["serving"] = {**data["serving"], "candidates": spec.candidates, "log_format": "text"}
    settings = Settings(**data)
    setup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="feedforge-bench-serve-") as tmp:
        workdir = Workdir.at(Path(tmp) / "work")
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")), encoding="utf-8")
        try:
            for name, step in (
                ("simulate", lambda: simulate(settings.simulator, workdir)),
                ("build", lambda: build_dataset(workdir, settings)),
                ("train", lambda: train_models(workdir, settings)),
                ("publish", lambda: _publish(workdir, settings)),
            ):
                say(f"setup: {name}")
                t0 = time.perf_counter()
                step()
                setup[name] = round(time.perf_counter() - t0, 1)
            users = load_dataset(workdir).users.ids.to_list()
            say("compute floor")
            floor = _compute_floor(settings, workdir, spec)
            say(f"starting feedforge serve --workers {spec.workers}")
            process, base = _start_service(workdir, config, spec.workers)
            try:
                say("warming up (each worker loaded the version before it listened)")
                with httpx.Client(base_url=base, timeout=300) as client:
                    for j in range(20 * spec.workers):
                        client.get("/recommend", params={"user_id": users[j % len(users)]})
                say(f"driving {spec.rate}/s for {spec.duration_s} s (open loop)")
                feeds = _drive_once(base, users, spec.rate, spec.duration_s, process.pid)
                # An overloaded service still works through requests the driver gave up on.
                profile = _profile(httpx.get(f"{base}/metrics", timeout=600).text)
                sweep = []
                for rate in spec.extra_rates:
                    time.sleep(5)  # let a saturated run's backlog drain
                    say(f"driving {rate}/s for {spec.duration_s} s (open loop)")
                    sweep.append(_drive_once(base, users, rate, spec.duration_s, process.pid))
                say(f"ingesting for {spec.ingest_seconds} s")
                ingest = asyncio.run(_ingest(base, spec.ingest_seconds, spec.ingest_batch))
            finally:
                process.terminate()
                process.wait(timeout=30)
        finally:
            _drop_namespace(settings)
    report: dict[str, Any] = {
        "spec": asdict(spec),
        "namespace": namespace,
        "setup_seconds": setup,
        "feeds": feeds,
        "sweep": sweep,
        "compute_floor": floor,
        "profile_one_worker": profile,
        "ingestion": ingest,
        "targets": _targets(feeds, floor, ingest),
        **run_info(started),
    }
    if out_dir is not None:
        write_report(out_dir, "serve", report, render_markdown(report))
    return report


def _publish(workdir: Workdir, settings: Settings) -> None:
    with open_store(settings.store, workdir.store_path) as store:
        publish(workdir, settings, store)


def _drop_namespace(settings: Settings) -> None:
    import redis

    client = redis.Redis.from_url(settings.store.redis_url)
    pattern = glob_pattern(Keys(settings.store.namespace).prefix)
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)
    client.close()


def _targets(feeds: dict[str, Any], floor: dict[str, Any], ingest: dict[str, Any]) -> list[dict]:
    p99, p50 = feeds["p99_ms"], feeds["p50_ms"]
    return [
        {
            "target": "p99 <= 25 ms at the offered rate",
            "measured": p99,
            "met": p99 is not None and p99 <= 25.0,
        },
        {"target": "0 errors", "measured": feeds["errors"], "met": feeds["errors"] == 0},
        {
            "target": "p50 <= 2 x compute floor",
            "measured": None if p50 is None else p50 / floor["floor_p50_ms"],
            "met": p50 is not None and p50 <= 2 * floor["floor_p50_ms"],
        },
        {
            "target": "ingestion >= 20,000 events/s (acknowledged = durable)",
            "measured": ingest["events_per_s"],
            "met": ingest["events_per_s"] >= 20_000,
        },
    ]


def _outside_stages(profile: dict[str, dict[str, float]]) -> str:
    """The profile's sentence on a whole request against the sum of its stages."""
    request = profile.get("request")
    if not request:
        return ""
    stages = sum(v["mean_ms"] for k, v in profile.items() if k != "request")
    return (
        f" A whole `/recommend` request in the app (`feedforge_request_seconds`) took "
        f"{request['mean_ms']:.2f} ms on average ({int(request['count'])}), "
        f"{request['mean_ms'] - stages:.2f} ms more than its stages: routing and parameter "
        "validation, the explanations, the feed-log line and the JSON answer (HTTP parsing "
        "before the app and the loopback are in neither)."
    )


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    spec, feeds, floor, ingest = (
        report["spec"],
        report["feeds"],
        report["compute_floor"],
        report["ingestion"],
    )

    def cell(value: Any) -> str:
        return "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))

    cold = floor.get("cold_items") or {}
    cold_text = (
        f"{cold['content_items']} of them with content-mapped vectors, serving.cold_items"
        if cold.get("method") == "content"
        else "the retrieval model's items only"
    )

    lines = [
        "# Serving under load",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{spec['items']} catalog items and {spec['users']} users simulated; the published "
        f"version serves {floor['served_items']} items ({cold_text}) and "
        f"{floor['served_users']} users (the users of the train split); the ANN index covers "
        f"the served items; {spec['candidates']} candidates ranked per request (ranker "
        f"`{floor['ranker']}`); `feedforge serve --workers {spec['workers']}` against Redis; "
        f"open-loop Poisson arrivals for {spec['duration_s']} s per rate from a separate "
        f"process. Machine: {report['machine']['cpus']} CPUs (service, Redis and load generator "
        f"share them). Setup (s): {report['setup_seconds']}.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [
        f"| {t['target']} | {cell(t['measured'])} | {'yes' if t['met'] else '**no**'} |"
        for t in report["targets"]
    ]
    lines += [
        "",
        "| offered rps | requests | throughput rps | p50 ms | p95 ms | p99 ms | max ms | errors "
        "| degraded | service CPU ms / request |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {run['offered_rate']} | {run['requests']} | {cell(run['throughput_rps'])} | "
            f"{cell(run['p50_ms'])} | {cell(run['p95_ms'])} | {cell(run['p99_ms'])} | "
            f"{cell(run['max_ms'])} | {run['errors']} | {run['degraded']} | "
            f"{cell(run.get('service_cpu_ms_per_request'))} |"
            for run in [feeds, *report.get("sweep", [])]
        ),
        "",
        "The first row is the target rate (the targets above); the service CPU time per request "
        "is every worker's user + system time over the run, divided by the requests sent.",
        "",
        f"Statuses at the target rate: {feeds['statuses']}.",
        "",
        "Compute floor (no HTTP, no Redis), median ms per request: "
        + ", ".join(f"{k} {v:.2f}" for k, v in floor["median_ms"].items())
        + f"; total {floor['floor_p50_ms']:.2f}.",
        "",
        *(
            [
                f"The retrieval beam (`serving.ann_ef_search`, {spec['candidates']} candidates, "
                f"the floor's {floor['users']} users; recall@{spec['candidates']} against exact "
                "search):",
                "",
                "| ef_search | median ms | recall |",
                "|---|---|---|",
                *(
                    f"| {b['ef_search']} | {b['median_ms']:.2f} | {b['recall']:.3f} |"
                    for b in floor.get("beam", [])
                ),
                "",
            ]
            if floor.get("beam")
            else []
        ),
        "Where the time goes (one worker's `feedforge_stage_seconds`, mean ms, with counts): "
        + ", ".join(
            f"{stage} {v['mean_ms']:.2f} ({int(v['count'])})"
            for stage, v in report["profile_one_worker"].items()
            if stage != "request"
        )
        + "."
        + _outside_stages(report["profile_one_worker"]),
        "",
        f"Ingestion: {ingest['acknowledged']} events acknowledged in {ingest['seconds']:.1f} s "
        f"= {ingest['events_per_s']:.0f} events/s (batches of {ingest['batch']}, "
        f"{ingest['clients']} clients, {ingest['failed']} failed).",
    ]
    return "\n".join(lines) + "\n"
