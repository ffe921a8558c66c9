"""``events.stream: redis`` end to end: API hosts append to a Redis Stream, ``feedforge
ingest`` consumers write the log; a consumer killed mid-batch loses and repeats nothing.

Real processes throughout: two ``feedforge serve`` and two ``feedforge ingest`` on one work
directory, and a redis-server of the test's own with ``appendfsync always``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from feedforge.config import load_settings
from feedforge.events.log import EventLog
from feedforge.serving.app import create_app
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

from ..conftest import RedisServer, log_event_ids
from .conftest import EventFactory, ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.redis]

STREAM_KEY = "it:events"


def _events_section(server: RedisServer, **extra: Any) -> dict[str, Any]:
    return {
        "stream": "redis",
        "stream_url": server.url,
        "stream_key": STREAM_KEY,
        "block_ms": 100,
        "claim_idle_ms": 1500,
        **extra,
    }


def test_post_events_appends_to_the_stream_and_not_to_the_log(
    durable_redis: RedisServer,
    fresh_workdir: Workdir,
    write_config: Callable[..., Path],
    tmp_path: Path,
    make_event: EventFactory,
) -> None:
    settings = load_settings(
        write_config(tmp_path / "c.yaml", events=_events_section(durable_redis))
    )
    files_before = EventLog(fresh_workdir.events_dir).files()
    batch = [make_event(user_id="stream-user") for _ in range(3)]
    with TestClient(create_app(settings, fresh_workdir)) as client:
        answer = client.post("/events", json=batch)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "accepted": 3,
            "duplicates": 0,
            "rejected": 0,
            "history_updated": False,
            "errors": [],
        }
        stream = redis.Redis.from_url(durable_redis.url)
        assert stream.xlen(STREAM_KEY) == 1
        assert EventLog(fresh_workdir.events_dir).files() == files_before
        durable_redis.kill()
        down = client.post("/events", json=[make_event()])
        assert down.status_code == 503
        assert down.json()["error"] == "EventStreamError"
        assert "none was acknowledged" in down.json()["message"]


def test_a_stream_server_without_fsync_is_refused_with_the_fix(
    own_redis: RedisServer,
    fresh_workdir: Workdir,
    write_config: Callable[..., Path],
    tmp_path: Path,
    make_event: EventFactory,
) -> None:
    settings = load_settings(write_config(tmp_path / "c.yaml", events=_events_section(own_redis)))
    with TestClient(create_app(settings, fresh_workdir)) as client:
        answer = client.post("/events", json=[make_event()])
    assert answer.status_code == 503
    assert "appendfsync always" in answer.json()["message"]


class Consumer:
    """``feedforge ingest`` in a process of its own."""

    def __init__(self, workdir: Workdir, config: Path, name: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from feedforge.cli import main; main()",
                "ingest",
                "--workdir",
                str(workdir.root),
                "--config",
                str(config),
                "--name",
                name,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        return self.process.communicate(timeout=60)[0]


@pytest.mark.slow
def test_two_hosts_two_consumers_one_killed_mid_batch_every_event_once(
    durable_redis: RedisServer,
    fresh_workdir: Workdir,
    write_config: Callable[..., Path],
    tmp_path: Path,
    make_event: EventFactory,
) -> None:
    config = write_config(tmp_path / "c.yaml", events=_events_section(durable_redis, read_count=20))
    stream = redis.Redis.from_url(durable_redis.url)
    servers = [ServerProcess(fresh_workdir, config).start() for _ in range(2)]
    consumers = [Consumer(fresh_workdir, config, f"c{j}") for j in range(2)]
    acknowledged: list[str] = []
    watched: Counter[str] = Counter()
    lock = threading.Lock()
    stop_sending = threading.Event()

    def send(host: int) -> None:
        with httpx.Client(base_url=servers[host].base, timeout=30) as http:
            n = 0
            while not stop_sending.is_set() or n < 40:
                user = f"stream-{host}-{n % 5}"
                batch = [make_event(user_id=user, item_id=f"i{n:04d}{j}") for j in range(25)]
                answer = http.post("/events", json=batch)
                assert answer.status_code == 200, answer.text
                with lock:
                    acknowledged.extend(e["event_id"] for e in batch)
                    watched[user] += len(batch)
                n += 1

    def consumers_of_group() -> dict[str, int]:
        """Each consumer's unacknowledged entries (empty until a consumer made the group)."""
        try:
            found = stream.xinfo_consumers(STREAM_KEY, "ingest")
        except redis.ResponseError:  # no stream or no group yet
            return {}
        return {c["name"].decode(): int(c["pending"]) for c in found}

    senders = [threading.Thread(target=send, args=(h,)) for h in range(2)]
    try:
        deadline = time.monotonic() + 60
        while len(consumers_of_group()) < 2:  # both consumers read the stream
            assert time.monotonic() < deadline, "the consumers did not start"
            assert all(c.process.poll() is None for c in consumers), consumers[0].stop()
            time.sleep(0.1)
        for thread in senders:
            thread.start()
        # Kill c0 while it holds entries it read and has not acknowledged: mid-batch.
        deadline = time.monotonic() + 60
        while True:
            if consumers_of_group().get("c0", 0) > 0:
                break
            assert time.monotonic() < deadline, "consumer c0 never held a batch"
            time.sleep(0.005)
        consumers[0].process.send_signal(signal.SIGKILL)
        consumers[0].process.communicate(timeout=30)
        time.sleep(1.0)  # keep sending while only c1 consumes
        stop_sending.set()
        for thread in senders:
            thread.join(timeout=120)
        # c1 claims c0's unacknowledged entries (idle > claim_idle_ms) and drains the rest.
        deadline = time.monotonic() + 90
        while True:
            group = stream.xinfo_groups(STREAM_KEY)[0]
            if int(group["pending"]) == 0 and int(group["lag"] or 0) == 0:
                break
            assert time.monotonic() < deadline, f"the stream was not drained: {group}"
            time.sleep(0.2)
        output = consumers[1].stop()
    finally:
        stop_sending.set()
        for server in servers:
            server.stop()
        for consumer in consumers:
            if consumer.process.poll() is None:
                consumer.process.kill()
                consumer.process.communicate()
    claimed = re.search(r"(\d+) entries claimed from stopped consumers", " ".join(output.split()))
    assert claimed is not None, output
    assert int(claimed.group(1)) > 0  # c0's batch was taken over
    rows = Counter(log_event_ids(EventLog(fresh_workdir.events_dir)))
    assert len(acknowledged) >= 2 * 40 * 25
    missing = [e for e in acknowledged if rows[e] == 0]
    repeated = [e for e in acknowledged if rows[e] > 1]
    assert not missing, f"{len(missing)} acknowledged event(s) not in the log"
    assert not repeated, f"{len(repeated)} event(s) stored more than once"
    settings = load_settings(config)
    with open_store(settings.store, fresh_workdir.store_path) as store:
        for user in watched:
            history = store.get_history(user, 1000)
            assert len(history) == min(watched[user], settings.serving.history_length)
            assert len(set(history)) == len(history), f"{user}: an entry applied twice"
