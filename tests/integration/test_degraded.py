"""Redis stopped mid-traffic: degraded answers, never a 5xx; Redis back: normal answers again,
with the live-history updates ingested meanwhile written to it. Runs against a redis-server
of the test's own (:class:`conftest.RedisServer`), since it has to stop it."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.publish.publisher import publish
from feedforge.serving.app import create_app
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

from ..conftest import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def redis_settings(small_settings: Settings, url: str) -> Settings:
    return Settings(
        **{
            **small_settings.model_dump(),
            "store": {"type": "redis", "redis_url": url, "socket_timeout_s": 0.2},
            "serving": {**small_settings.serving.model_dump(), "store_retry_s": 0.2},
        }
    )


def test_redis_stopped_mid_traffic_degrades_then_recovers(
    own_redis: RedisServer,
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    known_user: str,
    make_event: Callable[..., dict[str, Any]],
) -> None:
    settings = redis_settings(small_settings, own_redis.url)
    workdir = workdir_copy(publish=False)
    with open_store(settings.store, workdir.store_path) as store:
        version = publish(workdir, settings, store)

    statuses: Counter[int] = Counter()
    degraded_seen = threading.Event()
    stop = threading.Event()

    with TestClient(create_app(settings, workdir)) as client:
        normal = client.get("/recommend", params={"user_id": known_user}).json()
        assert normal["degraded"] is False and normal["strategy"] == "personalized"
        assert normal["version"] == version
        assert all(item["explanation"] for item in normal["items"])

        def traffic() -> None:  # a client sending requests all along
            while not stop.is_set():
                response = client.get("/recommend", params={"user_id": known_user})
                statuses[response.status_code] += 1
                if response.status_code == 200 and response.json()["degraded"]:
                    degraded_seen.set()

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            time.sleep(0.3)
            own_redis.stop()
            assert degraded_seen.wait(10), "no degraded answer after Redis stopped"
            down = client.get("/recommend", params={"user_id": known_user, "k": 5})
            assert down.status_code == 200
            body = down.json()
            assert body["degraded"] is True and body["strategy"] == "popular"
            assert body["version"] == version and len(body["items"]) == 5
            assert "temporarily unavailable" in body["items"][0]["explanation"]
            assert client.get("/health/ready").status_code == 503
            assert client.get("/health/live").status_code == 200
            # Events are still acknowledged (durable in the log); histories wait for Redis.
            watched = normal["items"][0]["item_id"]
            event = make_event(user_id=known_user, item_id=watched)
            ingested = client.post("/events", json=event)
            assert ingested.status_code == 200, ingested.text
            assert ingested.json()["accepted"] == 1
            assert ingested.json()["history_updated"] is False

            own_redis.start()
            deadline = time.monotonic() + 10
            while True:
                again = client.get("/recommend", params={"user_id": known_user}).json()
                if not again["degraded"]:
                    break
                assert time.monotonic() < deadline, "still degraded 10 s after Redis came back"
                time.sleep(0.05)
        finally:
            stop.set()
            sender.join(timeout=30)
        assert again["strategy"] == "personalized" and again["version"] == version
        # The held history update reached Redis: the watched item is now excluded.
        assert watched not in [item["item_id"] for item in again["items"]]
        assert client.get("/health/ready").status_code == 200
        metrics = client.get("/metrics").text
    assert not [code for code in statuses if code >= 500], statuses
    assert statuses[200] > 0
    assert "feedforge_degraded_feeds_total" in metrics


def test_a_slow_redis_degrades_within_its_timeout(
    own_redis: RedisServer,
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    known_user: str,
) -> None:
    """A Redis that stops answering (SIGSTOP: connections open, no replies) costs one socket
    timeout, then the breaker answers from memory until it replies again."""
    settings = redis_settings(small_settings, own_redis.url)
    workdir = workdir_copy(publish=False)
    with open_store(settings.store, workdir.store_path) as store:
        publish(workdir, settings, store)
    assert own_redis.process is not None
    with TestClient(create_app(settings, workdir)) as client:
        assert client.get("/recommend", params={"user_id": known_user}).json()["degraded"] is False
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            started = time.perf_counter()
            first = client.get("/recommend", params={"user_id": known_user})
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            second = client.get("/recommend", params={"user_id": known_user})
            second_s = time.perf_counter() - started
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        assert first.status_code == second.status_code == 200
        assert first.json()["degraded"] and second.json()["degraded"]
        # The feed read's deadline (store.read_timeout_ms, 25 ms, no retry), not the 0.2 s
        # socket timeout of the other calls.
        assert first_s < 0.5
        assert second_s < 0.1  # the breaker is open: no store call at all
        time.sleep(settings.serving.store_retry_s)
        assert client.get("/recommend", params={"user_id": known_user}).json()["degraded"] is False


def test_a_hung_redis_never_blocks_the_event_loop(
    own_redis: RedisServer,
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    known_user: str,
) -> None:
    """While Redis hangs (SIGSTOP) under steady feed traffic, the liveness probe keeps
    answering at once and every feed comes back within the store's read deadline: the read
    runs off the event loop, on a connection whose timeout is ``store.read_timeout_ms``
    with no retry. (Before: each store probe froze the loop for a socket timeout and a
    retry, ~2 x 0.5 s, and ``/health/live`` took as long.)"""
    settings = Settings(
        **{
            **small_settings.model_dump(),
            "store": {"type": "redis", "redis_url": own_redis.url, "socket_timeout_s": 0.5},
            "serving": {**small_settings.serving.model_dump(), "store_retry_s": 0.1},
        }
    )
    workdir = workdir_copy(publish=False)
    with open_store(settings.store, workdir.store_path) as store:
        publish(workdir, settings, store)
    assert own_redis.process is not None
    feed_s: list[float] = []
    statuses: Counter[int] = Counter()
    stop = threading.Event()
    with TestClient(create_app(settings, workdir)) as client:
        assert client.get("/recommend", params={"user_id": known_user}).json()["degraded"] is False

        def traffic() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                response = client.get("/recommend", params={"user_id": known_user})
                feed_s.append(time.perf_counter() - started)
                statuses[response.status_code] += 1

        senders = [threading.Thread(target=traffic) for _ in range(2)]
        for sender in senders:
            sender.start()
        live_s: list[float] = []
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            hung_until = time.monotonic() + 3.0
            while time.monotonic() < hung_until:
                started = time.perf_counter()
                assert client.get("/health/live").status_code == 200
                live_s.append(time.perf_counter() - started)
                time.sleep(0.02)
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
            stop.set()
            for sender in senders:
                sender.join(timeout=30)
    assert not [code for code in statuses if code != 200], statuses
    # Every store probe of the breaker (one per store_retry_s) hit the hung server.
    assert len(live_s) > 50 and max(live_s) < 0.25, max(live_s)
    assert len(feed_s) > 20 and max(feed_s) < 0.3, sorted(feed_s)[-5:]
