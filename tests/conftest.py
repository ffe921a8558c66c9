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
from collections.abc import Callable, Iterator
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
    ``directory``), like a production Redis with persistence coming back. With ``durable``
    the server writes its append-only file with ``appendfsync always`` (the event stream's
    setting), so its data survive a :meth:`kill` too.
    """

    def __init__(self, directory: Path, durable: bool = False) -> None:
        self.directory = directory
        self.durable = durable
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
             "--dbfilename", "dump.rdb", "--save", "",
             *(("--appendonly", "yes", "--appendfsync", "always") if self.durable
               else ("--appendonly", "no"))],
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

    def kill(self) -> None:
        """SIGKILL the server: no save, no goodbye (only what it fsynced survives)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

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
    server.kill()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Like :func:`own_redis`, with ``appendonly yes`` and ``appendfsync always``."""
    server = RedisServer(tmp_path, durable=True)
    server.start()
    yield server
    server.kill()


def _free_cluster_port() -> int:
    """A port free on 127.0.0.1 whose cluster-bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _replica_ready(info: dict[str, object]) -> bool:
    return info.get("role") == "master" or info.get("master_link_status") == "up"


class RedisClusterServers:
    """A real Redis Cluster of the tests' own: ``masters`` masters with one replica each,
    every node a ``redis-server --cluster-enabled yes`` on free ports, joined by
    ``redis-cli --cluster create``. :meth:`kill` stops one node hard (a failover test)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.ports = [_free_cluster_port() for _ in range(masters * 2)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            unavailable("redis-server and redis-cli are not installed; .ci/run installs them")
        for port in self.ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            self.processes[port] = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no",
                 "--repl-diskless-sync-delay", "0", "--logfile", str(node_dir / "redis.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        for port in self.ports:
            self._wait(lambda p=port: _test_redis_client(f"redis://127.0.0.1:{p}/0").ping())
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed: {created.stdout}{created.stderr}"
            )
        for port in self.ports:
            client = _test_redis_client(f"redis://127.0.0.1:{port}/0")
            self._wait(lambda c=client: c.cluster("info")["cluster_state"] == "ok")
            # Every replica in sync with its master (a replica that never synced cannot
            # take over).
            self._wait(lambda c=client: _replica_ready(c.info("replication")))
            client.close()

    @staticmethod
    def _wait(ready: Callable[[], object], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ready")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def replica_of(self, port: int) -> int | None:
        """The port of the master the node on ``port`` replicates (None: a master)."""
        client = _test_redis_client(f"redis://127.0.0.1:{port}/0")
        try:
            info = client.info("replication")
        finally:
            client.close()
        return int(info["master_port"]) if info.get("role") == "slave" else None

    def wait_failover(self, killed: int, timeout_s: float = 30.0) -> None:
        """Wait until every live node sees ``killed`` failed, a replica promoted in its
        place and the cluster ok (the failover has converged)."""

        def converged() -> bool:
            for port in self.processes:
                client = _test_redis_client(f"redis://127.0.0.1:{port}/0")
                try:
                    nodes = client.execute_command("CLUSTER", "NODES").decode()
                    ok = client.cluster("info")["cluster_state"] == "ok"
                finally:
                    client.close()
                dead = [line for line in nodes.splitlines() if f":{killed}@" in line]
                if not ok or not dead or "fail" not in dead[0].split()[2]:
                    return False
            return True

        self._wait(converged, timeout_s)

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()


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
