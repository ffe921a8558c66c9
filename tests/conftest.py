"""Fixtures shared by every test package.

Redis: tests that need a real server use :func:`redis_url` (or :func:`redis_namespace`) and
carry ``@pytest.mark.redis``. The server is ``$FEEDFORGE_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). When it is unreachable those tests are skipped locally and
fail when ``CI=true``, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import polars as pl
import pytest
import redis

from feedforge.bench.redis_local import LocalRedis, LocalRedisCluster, quick_client
from feedforge.events.log import EventLog
from feedforge.store.keys import Keys, glob_pattern

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def log_event_ids(log: EventLog) -> list[str]:
    """Every stored row's ``event_id``, duplicates included: the log's files themselves, not
    its de-duplicated :meth:`~feedforge.events.log.EventLog.scan`."""
    files = log.files()
    if not files:
        return []
    return pl.read_parquet(files, columns=["event_id"]).get_column("event_id").to_list()


def unavailable(message: str) -> NoReturn:
    """A real component a test needs is missing: fail under ``CI=true`` (``.ci/run``
    installs every one), else skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' ``promtool`` (Debian package ``prometheus``)."""
    binary = shutil.which("promtool")
    if binary is None:
        unavailable("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return binary


_test_redis_client = quick_client


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a reachable Redis server (skip, or fail under ``CI=true``, if there is none)."""
    url = os.environ.get("FEEDFORGE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    client = _test_redis_client(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"Redis is not reachable at {url}: {exc}"
        unavailable(message)
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A raw client on the test server, for inspecting what a store wrote."""
    client = _test_redis_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def redis_namespace(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh store namespace; every key under it is deleted after the test."""
    namespace = f"test-{uuid.uuid4().hex}"
    yield namespace
    pattern = glob_pattern(Keys(namespace).prefix)
    keys = list(redis_client.scan_iter(match=pattern, count=10_000))
    for start in range(0, len(keys), 10_000):
        redis_client.unlink(*keys[start : start + 10_000])


class RedisServer(LocalRedis):
    """A redis-server of a test's own (:class:`~feedforge.bench.redis_local.LocalRedis`):
    skipped, or failed under ``CI=true``, when redis-server is not installed."""

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not installed; .ci/run installs it")
        super().start()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` of the test's own, stopped afterwards."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Like :func:`own_redis`, with ``appendonly yes`` and ``appendfsync always``."""
    server = RedisServer(tmp_path, durable=True)
    server.start()
    yield server
    server.kill()


class RedisClusterServers(LocalRedisCluster):
    """A Redis Cluster of the tests' own (3 masters, 3 replicas;
    :class:`~feedforge.bench.redis_local.LocalRedisCluster`): skipped, or failed under
    ``CI=true``, when redis-server or redis-cli is not installed."""

    def start(self) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            unavailable("redis-server and redis-cli are not installed; .ci/run installs them")
        super().start()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master, 3-replica Redis Cluster shared by the session (namespaces keep tests apart;
    tests that kill a node start a cluster of their own)."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
