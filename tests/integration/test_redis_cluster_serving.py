"""The service on a Redis Cluster (``store.type: redis-cluster``): feeds and events while the
master holding the version pointer is killed. The replica takes over; feeds stay answered
(degraded at most during the failover), nothing gets a 5xx, and every acknowledged event is
in the event log. The cluster is real (3 masters, 3 replicas; ``tests/conftest.py``)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from redis.cluster import RedisCluster

from feedforge.config import Settings
from feedforge.events.log import EventLog
from feedforge.publish.publisher import publish
from feedforge.serving.app import create_app
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

from ..conftest import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.integration, pytest.mark.slow]


def test_a_master_failover_under_traffic_loses_no_feed_and_no_event(
    tmp_path: Path,
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    known_user: str,
    make_event: Callable[..., dict[str, Any]],
) -> None:
    servers = RedisClusterServers(tmp_path / "cluster")
    servers.start()
    try:
        settings = Settings(
            **{
                **small_settings.model_dump(),
                "store": {"type": "redis-cluster", "redis_url": servers.url,
                          "socket_timeout_s": 0.5, "namespace": f"fo-{uuid.uuid4().hex[:6]}"},
                "serving": {**small_settings.serving.model_dump(), "store_retry_s": 0.2},
            }
        )  # fmt: skip
        workdir = workdir_copy(publish=False)
        with open_store(settings.store, workdir.store_path) as store:
            version = publish(workdir, settings, store)
            client = store.client
            assert isinstance(client, RedisCluster)
            pointer_slot = client.keyslot(store.keys.current())
            master = client.nodes_manager.get_node_from_slot(pointer_slot)

        statuses: Counter[int] = Counter()
        degraded = Counter[bool]()
        acknowledged: list[str] = []
        stop = threading.Event()
        with TestClient(create_app(settings, workdir)) as api:
            first = api.get("/recommend", params={"user_id": known_user}).json()
            assert first["degraded"] is False and first["version"] == version

            def traffic() -> None:
                n = 0
                while not stop.is_set():
                    feed = api.get("/recommend", params={"user_id": known_user})
                    statuses[feed.status_code] += 1
                    if feed.status_code == 200:
                        degraded[feed.json()["degraded"]] += 1
                    event = make_event(
                        user_id=f"fo-user-{n % 7}", event_id=f"fo-{uuid.uuid4().hex}"
                    )
                    posted = api.post("/events", json=event)
                    statuses[posted.status_code] += 1
                    if posted.status_code == 200 and posted.json()["accepted"] == 1:
                        acknowledged.append(event["event_id"])
                    n += 1

            sender = threading.Thread(target=traffic)
            sender.start()
            try:
                time.sleep(0.5)
                servers.kill(int(master.port))
                servers.wait_failover(int(master.port))
                # Feeds come back personalized once the replica is promoted.
                deadline = time.monotonic() + 30
                before = degraded[False]
                while True:
                    time.sleep(0.2)
                    if degraded[True] and degraded[False] > before:
                        break
                    assert time.monotonic() < deadline, f"not answered normally: {degraded}"
            finally:
                stop.set()
                sender.join(timeout=30)
            # The failover over, every feed is personalized again.
            after = [
                api.get("/recommend", params={"user_id": known_user}).json() for _ in range(20)
            ]
        assert all(not a["degraded"] and a["version"] == version for a in after), after
        assert not [code for code in statuses if code >= 500], statuses
        assert degraded[False] > 0 and len(acknowledged) > 10
        logged = (
            EventLog(workdir.events_dir)
            .scan()
            .filter(pl.col("event_id").is_in(acknowledged))
            .group_by("event_id")
            .len()
            .collect()
        )
        assert logged.height == len(acknowledged)  # every acknowledged event, once
        assert logged.get_column("len").max() == 1
    finally:
        servers.stop()
