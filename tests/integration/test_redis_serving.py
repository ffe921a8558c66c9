"""Publishing into and serving from a real Redis server, in a namespace of this test's own.

The ``redis_namespace`` fixture (tests/conftest.py) deletes every ``ff:{ns}:*`` key afterwards;
without a server the test is skipped locally and fails under ``CI=true``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from feedforge.config import Settings, load_settings
from feedforge.serving.app import create_app
from feedforge.store.keys import Keys, glob_pattern
from feedforge.store.redis import RedisStore
from feedforge.workdir import Workdir

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def feed(client: TestClient, user_id: str) -> dict[str, Any]:
    response = client.get("/recommend", params={"user_id": user_id, "k": 10})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def feed_of_version(client: TestClient, user_id: str, version: str) -> dict[str, Any]:
    """The first feed served from ``version`` (a running app loads a new version in the
    background and switches when it is ready)."""
    deadline = time.monotonic() + 30
    while (body := feed(client, user_id))["version"] != version:
        assert time.monotonic() < deadline, f"still serving {body['version']}, not {version}"
        time.sleep(0.02)
    return body


def items(body: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def keys_of(client: redis.Redis, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(match=glob_pattern(prefix), count=10_000))


def test_publish_and_serve_through_redis_with_hot_swap_and_pruning(
    small_config: Path,
    redis_url: str,
    redis_namespace: str,
    redis_client: redis.Redis,
    workdir_copy: Callable[..., Workdir],
    publish_into: Callable[[Workdir, Settings], str],
    consumed_items: Callable[[Workdir], dict[str, set[str]]],
    known_user: str,
    make_event: Callable[..., dict[str, Any]],
) -> None:
    settings = load_settings(
        small_config,
        store={
            "type": "redis",
            "redis_url": redis_url,
            "namespace": redis_namespace,
            "keep_versions": 2,
            "retire_grace_s": 0,
        },
    )
    keys = Keys(redis_namespace)
    workdir = workdir_copy(publish=False)
    v1 = publish_into(workdir, settings)
    assert not workdir.store_path.exists(), "a Redis publish must not touch the embedded store"
    assert redis_client.get(keys.current()) == v1.encode()
    consumed = consumed_items(workdir)[known_user]

    with TestClient(create_app(settings, workdir)) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["version"] == v1

        before = feed(client, known_user)
        assert (before["version"], before["strategy"]) == (v1, "personalized")
        assert len(set(items(before))) == 10
        assert not set(items(before)) & consumed

        # An event changes the feed; the live history lives in Redis.
        top = items(before)[0]
        posted = client.post("/events", json=make_event(user_id=known_user, item_id=top))
        assert posted.status_code == 200, posted.text
        assert redis_client.lrange(keys.history(known_user), 0, -1) == [top.encode()]
        after = feed(client, known_user)
        assert top not in items(after)
        assert items(after) != items(before)

        # Hot swap: a publish by another store client is served without restarting the app.
        v2 = publish_into(workdir, settings)
        assert v2 > v1
        swapped = feed_of_version(client, known_user, v2)
        assert top not in items(swapped), "the live history must survive a publish"
        assert client.get("/health").json()["version"] == v2

        # A third publish prunes the oldest version (keep_versions=2): keys and bundle.
        v3 = publish_into(workdir, settings)
        feed_of_version(client, known_user, v3)

    with RedisStore.from_url(redis_url, namespace=redis_namespace) as store:
        assert store.versions() == [v2, v3]
        assert store.current_version() == v3
        assert store.get_meta(v1) is None
    assert keys_of(redis_client, keys.version_prefix(v1)) == 0
    for kept in (v2, v3):
        assert keys_of(redis_client, keys.version_prefix(kept)) > 1_000
    assert sorted(p.name for p in workdir.bundles_dir.iterdir()) == [v2, v3]


def test_hot_swap_under_load_fails_no_request(
    small_config: Path,
    redis_url: str,
    redis_namespace: str,
    workdir_copy: Callable[..., Workdir],
    publish_into: Callable[[Workdir, Settings], str],
    known_user: str,
) -> None:
    """A publish while a client sends requests continuously: every request answers 200, not
    one is degraded, and the answers switch from the old version to the new one."""
    settings = load_settings(
        small_config,
        store={"type": "redis", "redis_url": redis_url, "namespace": redis_namespace},
    )
    workdir = workdir_copy(publish=False)
    v1 = publish_into(workdir, settings)
    answers: list[tuple[int, str | None, bool]] = []
    stop = threading.Event()
    with TestClient(create_app(settings, workdir)) as client:

        def traffic() -> None:
            while not stop.is_set():
                response = client.get("/recommend", params={"user_id": known_user})
                body = response.json() if response.status_code == 200 else {}
                answers.append((response.status_code, body.get("version"), body.get("degraded")))

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            while len(answers) < 20:
                time.sleep(0.01)
            v2 = publish_into(workdir, settings)  # another client of the same Redis
            deadline = time.monotonic() + 30
            while not any(version == v2 for _, version, _ in answers[-5:]):
                assert time.monotonic() < deadline, "the service never switched version"
                time.sleep(0.01)
            time.sleep(0.1)
        finally:
            stop.set()
            sender.join(timeout=30)
    statuses = {status for status, _, _ in answers}
    assert statuses == {200}, statuses
    assert not any(degraded for _, _, degraded in answers)
    versions = [version for _, version, _ in answers]
    assert versions[0] == v1 and versions[-1] == v2
    switch = versions.index(v2)
    assert set(versions[:switch]) == {v1} and set(versions[switch:]) == {v2}  # one clean flip
