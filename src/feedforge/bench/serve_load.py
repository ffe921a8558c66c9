"""The load generator of ``feedforge bench serve``: open-loop feed requests, event ingestion,
and the service's CPU time per request.

Its HTTP client is aiohttp, an optional dependency (the ``bench`` extra), imported only where
a load runs; :func:`require_client_libraries` says how to install it before a run starts.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import multiprocessing
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from feedforge.errors import FeedforgeError

CLIENT_LIBRARIES = ("aiohttp", "httpx", "psutil")
"""What the load benchmarks need beyond the runtime dependencies (the ``bench`` extra): the
clients, and psutil for the soak's memory samples."""


def require_client_libraries() -> None:
    """Fail in one line, before minutes of setup, when the ``bench`` extra is not installed.

    Raises:
        FeedforgeError: aiohttp or httpx cannot be imported; the message says how to install
            them.
    """
    missing = []
    for name in CLIENT_LIBRARIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise FeedforgeError(
            f"the load benchmarks need {' and '.join(missing)}: pip install 'feedforge[bench]'"
        )


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


async def open_loop(
    base: str,
    users: list[str],
    rate: float,
    duration_s: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``GET /recommend`` at Poisson arrivals of ``rate`` per second for ``duration_s`` seconds.

    Each request leaves at its scheduled time whatever the earlier ones are doing, and its
    latency counts from that time (no coordinated omission).

    Args:
        base: The service's base URL.
        users: The user ids asked for, in turn.
        rate: Offered requests per second.
        duration_s: Seconds of load.
        headers: Sent with every request (the read key, where the service has one).

    Returns:
        Requests, throughput, statuses, errors, degraded answers and latency percentiles (ms).
    """
    import aiohttp  # the bench extra (require_client_libraries)

    rng = np.random.default_rng(0)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 1.5) + 16)
    schedule = np.cumsum(gaps)
    schedule = schedule[schedule < duration_s]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    degraded = 0
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        base, connector=connector, timeout=timeout, headers=headers
    ) as session:
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


def _drive(
    base: str,
    users: list[str],
    rate: float,
    duration_s: float,
    headers: dict[str, str] | None,
    out: Any,
) -> None:
    """The load generator's process entry point."""
    out.put(asyncio.run(open_loop(base, users, rate, duration_s, headers)))


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


async def ingest(
    base: str,
    seconds: float,
    batch: int,
    clients: int = 4,
    max_rate: float = 50_000.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``clients`` concurrent clients post pre-encoded batches for ``seconds`` (at most
    ``max_rate`` events/s worth of bodies are prepared; a client stops when they run out),
    with ``headers`` (the write key, where the service has one).

    Returns:
        Events acknowledged (durable) and failed, the seconds taken and events per second.
    """
    import aiohttp  # the bench extra (require_client_libraries)

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
    async with aiohttp.ClientSession(base, timeout=timeout, headers=headers) as session:
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


def drive_once(
    base: str,
    users: list[str],
    rate: float,
    duration_s: float,
    service_pid: int,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One :func:`open_loop` run from a separate process (so the driver does not share this
    one's GIL), with the CPU time per request of the service (process ``service_pid`` and its
    workers) added as ``service_cpu_ms_per_request``; ``headers`` go with every request."""
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    args = (base, users, rate, duration_s, headers, queue)
    driver = context.Process(target=_drive, args=args)
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
