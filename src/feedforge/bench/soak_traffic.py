"""The mixed traffic of ``feedforge bench soak``, from a process of its own.

Three open-loop streams run side by side for the whole soak:

* **feeds**: ``GET /recommend`` at Poisson arrivals, for known users and a share of unknown
  ones (cold start), ``k`` of 10, 50 or 100, some with a ``device``;
* **events**: ``POST /events`` batches of 1 to 200 events (clicks, watches, impressions) at
  Poisson arrivals; a share of the batches is a re-send of an acknowledged one (each event
  must be stored once), and a share carries one invalid event (the answer is 422 and the
  valid ones are stored all the same);
* **operations**: ``GET /health`` every 5 s and ``GET /metrics`` every 15 s.

Every acknowledged event id (a 200, or a 422's valid events) is written to a file, one per
line, so the soak can check each one against the event log after the service stopped.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

WINDOW_S = 300.0
"""Feed latencies are reported per window of this many seconds of the soak."""


@dataclass(frozen=True)
class TrafficSpec:
    """How hard and how long the traffic runs."""

    base: str
    users: list[str]
    items: list[str]
    duration_s: float
    feed_rate: float
    event_rate: float
    read_headers: dict[str, str] | None
    write_headers: dict[str, str] | None
    acked_path: Path
    resend_share: float = 0.05
    invalid_share: float = 0.05
    cold_share: float = 0.05
    seed: int = 0


class _Traffic:
    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.statuses: dict[str, Counter[str]] = {
            "feeds": Counter(),
            "events": Counter(),
            "ops": Counter(),
        }
        self.feed_latency: list[tuple[float, float]] = []  # (seconds into the soak, latency)
        self.versions: Counter[str] = Counter()
        self.degraded = 0
        self.events_sent = 0
        self.events_acknowledged = 0  # newly stored, by the answers' "accepted"
        self.duplicates = 0  # by the answers' "duplicates"
        self.resends = 0
        self.resent_events = 0
        self.invalid_sent = 0
        self.invalid_rejected = 0
        self.mismatches: list[str] = []  # answers whose counts do not add up
        self.acked: list[str] = []
        self.sent_bodies: list[tuple[bytes, int]] = []  # acknowledged batches, for re-sends
        self.errors: list[str] = []  # the first transport failures, for the report

    # -- events -------------------------------------------------------------------------------
    def _batch(self, n: int) -> tuple[list[dict[str, Any]], set[int]]:
        spec, rng = self.spec, self.rng
        now = datetime.now(UTC).isoformat()
        events: list[dict[str, Any]] = []
        for _ in range(n):
            kind = str(rng.choice(["click", "watch", "impression"], p=[0.3, 0.3, 0.4]))
            event: dict[str, Any] = {
                "event_id": f"soak-{self.run_id}-{uuid.uuid4().hex}",
                "timestamp": now,
                "user_id": spec.users[int(rng.integers(len(spec.users)))],
                "item_id": spec.items[int(rng.integers(len(spec.items)))],
                "event_type": kind,
            }
            if kind == "watch":
                event["watch_seconds"] = float(rng.uniform(1, 3600))
            events.append(event)
        invalid: set[int] = set()
        if rng.random() < spec.invalid_share:
            j = int(rng.integers(n))
            events[j] = {**events[j], "timestamp": "yesterday"}
            invalid.add(j)
        return events, invalid

    async def _post(self, session: Any, body: bytes) -> tuple[int | str, dict[str, Any] | None]:
        import aiohttp

        headers = {"Content-Type": "application/json"}
        try:
            async with session.post("/events", data=body, headers=headers) as response:
                answer = await response.read()
                status: int | str = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error("POST /events", exc)
            return type(exc).__name__, None
        try:
            return status, json.loads(answer)
        except ValueError:
            return status, None

    async def one_batch(self, session: Any) -> None:
        spec, rng = self.spec, self.rng
        if self.sent_bodies and rng.random() < spec.resend_share:
            body, n = self.sent_bodies[int(rng.integers(len(self.sent_bodies)))]
            status, answer = await self._post(session, body)
            self.statuses["events"][str(status)] += 1
            self.resends += 1
            self.resent_events += n
            if status == 200 and answer is not None:
                self.duplicates += int(answer["duplicates"])
                if answer["accepted"] != 0 or answer["duplicates"] != n:
                    self.mismatches.append(f"re-send of {n}: {answer}")
            return
        n = int(rng.integers(1, 201))
        events, invalid = self._batch(n)
        body = json.dumps(events).encode()
        self.events_sent += n
        self.invalid_sent += len(invalid)
        status, answer = await self._post(session, body)
        self.statuses["events"][str(status)] += 1
        if status not in (200, 422) or answer is None:
            return
        valid = [e["event_id"] for j, e in enumerate(events) if j not in invalid]
        if status == 422 and "errors" not in answer:
            self.mismatches.append(f"422 without per-event errors: {answer}")
            return
        self.invalid_rejected += int(answer["rejected"])
        self.events_acknowledged += int(answer["accepted"])
        self.duplicates += int(answer["duplicates"])
        if answer["accepted"] + answer["duplicates"] != len(valid) or (
            answer["rejected"] != len(invalid)
        ):
            self.mismatches.append(f"batch of {n} ({len(invalid)} invalid): {answer}")
        self.acked.extend(valid)
        if not invalid:
            self.sent_bodies.append((body, n))
            if len(self.sent_bodies) > 1_000:
                self.sent_bodies.pop(0)

    # -- feeds --------------------------------------------------------------------------------
    async def one_feed(self, session: Any, started: float, at: float) -> None:
        import aiohttp

        spec, rng = self.spec, self.rng
        if rng.random() < spec.cold_share:
            user = f"soak-cold-{int(rng.integers(1_000_000))}"
        else:
            user = spec.users[int(rng.integers(len(spec.users)))]
        params: dict[str, str | int] = {"user_id": user, "k": int(rng.choice([10, 50, 100]))}
        if rng.random() < 0.3:
            params["device"] = str(rng.choice(["tv", "mobile", "web"]))
        loop = asyncio.get_running_loop()
        try:
            async with session.get("/recommend", params=params) as response:
                body = await response.read()
                status: int | str = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error("GET /recommend", exc)
            status, body = type(exc).__name__, b""
        self.feed_latency.append((at, loop.time() - (started + at)))
        self.statuses["feeds"][str(status)] += 1
        if status == 200:
            answer = json.loads(body)
            self.versions[answer["version"]] += 1
            self.degraded += bool(answer["degraded"])

    # -- operations ---------------------------------------------------------------------------
    async def one_op(self, session: Any, path: str) -> None:
        import aiohttp

        try:
            async with session.get(path) as response:
                await response.read()
                status: int | str = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error(f"GET {path}", exc)
            status = type(exc).__name__
        self.statuses["ops"][str(status)] += 1

    def _error(self, what: str, exc: BaseException) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")

    # -- the run ------------------------------------------------------------------------------
    def schedule(self, rate: float) -> np.ndarray:
        gaps = self.rng.exponential(1.0 / rate, size=int(rate * self.spec.duration_s * 1.5) + 16)
        at = np.cumsum(gaps)
        return at[at < self.spec.duration_s]

    async def run(self) -> dict[str, Any]:
        import aiohttp

        spec = self.spec
        timeout = aiohttp.ClientTimeout(total=60)
        mean_batch = 100.5  # batches of 1 to 200 events, uniformly
        feed_at = self.schedule(spec.feed_rate)
        batch_at = self.schedule(spec.event_rate / mean_batch)
        loop = asyncio.get_running_loop()
        started = loop.time() + 0.2
        tasks: set[asyncio.Task[None]] = set()

        async def at(offset: float) -> None:
            await asyncio.sleep(max(0.0, started + offset - loop.time()))

        def session(headers: dict[str, str] | None, connections: int) -> aiohttp.ClientSession:
            connector = aiohttp.TCPConnector(limit=connections)
            return aiohttp.ClientSession(
                spec.base, timeout=timeout, headers=headers, connector=connector
            )

        # Reads and writes carry different keys.
        async with (
            session(spec.read_headers, 256) as reads,
            session(spec.write_headers, 16) as writes,
        ):

            async def feeds() -> None:
                for offset in feed_at:
                    await at(float(offset))
                    task = asyncio.create_task(self.one_feed(reads, started, float(offset)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

            async def events() -> None:
                for offset in batch_at:
                    await at(float(offset))
                    task = asyncio.create_task(self.one_batch(writes))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

            async def operations() -> None:
                tick = 0
                while tick * 5.0 < spec.duration_s:
                    await at(tick * 5.0)
                    await self.one_op(reads, "/health")
                    if tick % 3 == 0:
                        await self.one_op(reads, "/metrics")
                    tick += 1

            await asyncio.gather(feeds(), events(), operations())
            while tasks:
                await asyncio.gather(*list(tasks))
        spec.acked_path.write_text("".join(f"{i}\n" for i in self.acked), encoding="utf-8")
        return self.summary()

    def summary(self) -> dict[str, Any]:
        windows: dict[int, list[float]] = {}
        for offset, latency in self.feed_latency:
            windows.setdefault(int(offset // WINDOW_S), []).append(latency * 1e3)
        return {
            "statuses": {name: dict(counts) for name, counts in self.statuses.items()},
            "feeds": {
                "requests": len(self.feed_latency),
                "degraded": self.degraded,
                "versions_served": dict(self.versions),
                "windows": [
                    {
                        "from_s": w * WINDOW_S,
                        "requests": len(ms),
                        "p50_ms": float(np.percentile(ms, 50)),
                        "p99_ms": float(np.percentile(ms, 99)),
                        "max_ms": float(np.max(ms)),
                    }
                    for w, ms in sorted(windows.items())
                ],
            },
            "events": {
                "batches": sum(self.statuses["events"].values()) - self.resends,
                "events_sent": self.events_sent,
                "acknowledged": len(self.acked),
                "accepted": self.events_acknowledged,
                "resends": self.resends,
                "resent_events": self.resent_events,
                "duplicates": self.duplicates,
                "invalid_sent": self.invalid_sent,
                "invalid_rejected": self.invalid_rejected,
                "count_mismatches": self.mismatches[:20],
                "n_count_mismatches": len(self.mismatches),
            },
            "transport_errors": self.errors,
        }


def drive(spec: TrafficSpec, out: Any) -> None:
    """The traffic process's entry point: run, then put the summary on queue ``out``."""
    out.put(asyncio.run(_Traffic(spec).run()))
