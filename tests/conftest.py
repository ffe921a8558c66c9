"""Fixtures shared by every test package.

Redis: tests that need a real server use :func:`redis_url` (or :func:`redis_namespace`) and
carry ``@pytest.mark.redis``. The server is ``$FEEDFORGE_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). When it is unreachable those tests are skipped locally and
fail when ``CI=true``, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from feedforge.store.keys import Keys, glob_pattern

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


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


def _test_redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


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


class RedisServer:
    """A redis-server of a test's own, on a free port, that the test may stop and restart.

    Data survive a :meth:`stop` / :meth:`start` cycle (``SHUTDOWN SAVE`` to an RDB file in
    ``directory``), like a production Redis with persistence coming back.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed; .ci/run installs it"
            unavailable(message)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = _test_redis_client(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from exc
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        """Save the data and stop the server (clients then get connection errors)."""
        if self.process is None:
            return
        client = _test_redis_client(self.url)
        with contextlib.suppress(redis.ConnectionError):  # it closes the connection as it exits
            client.shutdown(save=True)
        client.close()
        self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` of the test's own, stopped afterwards."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait(timeout=10)
