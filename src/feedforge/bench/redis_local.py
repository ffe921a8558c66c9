"""Redis servers of a benchmark's (or a test's) own on this host: one server, optionally
durable, and a Redis Cluster of masters with replicas, each a real ``redis-server`` on free
ports (the cluster joined by ``redis-cli --cluster create``)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from feedforge.errors import FeedforgeError


def quick_client(url: str) -> redis.Redis:
    """A client that fails fast (2 s, no retry): for probing servers that may be down."""
    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise FeedforgeError(f"{name} is not installed (Debian package redis-server)")
    return found


def _wait(ready: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise FeedforgeError(f"{what} did not become ready in {timeout_s:g} s")
        time.sleep(0.05)


class LocalRedis:
    """A ``redis-server`` on a free port of 127.0.0.1, data in ``directory``.

    Data survive :meth:`stop` / :meth:`start` (``SHUTDOWN SAVE`` to an RDB file). With
    ``durable`` the server writes its append-only file with ``appendfsync always`` (what the
    event stream needs), so its data survive :meth:`kill` too.
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
        """Start the server and wait until it answers.

        Raises:
            FeedforgeError: redis-server is missing or did not start.
        """
        persistence = ("--appendonly", "yes", "--appendfsync", "always") if self.durable else (
            "--appendonly", "no"
        )  # fmt: skip
        self.process = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--dbfilename", "dump.rdb", "--save", "",
             *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = quick_client(self.url)
        process = self.process
        try:
            _wait(
                lambda: process.poll() is None and client.ping(),
                f"redis-server on port {self.port}",
                10,
            )
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server: no save (only what it fsynced survives)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        """Save the data and stop the server."""
        if self.process is None:
            return
        client = quick_client(self.url)
        with contextlib.suppress(redis.ConnectionError):  # it closes the connection as it exits
            client.shutdown(save=True)
        client.close()
        self.process.wait(timeout=10)
        self.process = None


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
    raise FeedforgeError("no free port pair for a Redis Cluster node")


def _in_cluster(client: redis.Redis) -> bool:
    """The node sees the cluster ok and, a replica, is in sync with its master (one that
    never synced cannot take over)."""
    if client.cluster("info")["cluster_state"] != "ok":
        return False
    info = client.info("replication")
    return bool(info.get("role") == "master" or info.get("master_link_status") == "up")


class LocalRedisCluster:
    """A Redis Cluster on this host: ``masters`` masters with one replica each, every node a
    ``redis-server --cluster-enabled yes`` on free ports, joined by ``redis-cli --cluster
    create``. :meth:`kill` stops one node hard (a failover)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.ports = [_free_cluster_port() for _ in range(masters * 2)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        """Start every node, create the cluster, wait until it is ok and replicas synced.

        Raises:
            FeedforgeError: redis-server or redis-cli is missing, or the cluster did not form.
        """
        binary, cli = _binary("redis-server"), _binary("redis-cli")
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
            node = quick_client(f"redis://127.0.0.1:{port}/0")
            try:
                _wait(node.ping, f"node {port}")
            finally:
                node.close()
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise FeedforgeError(
                f"redis-cli --cluster create failed: {created.stdout}{created.stderr}"
            )
        for port in self.ports:
            client = quick_client(f"redis://127.0.0.1:{port}/0")
            try:
                _wait(partial(_in_cluster, client), f"node {port} of the cluster")
            finally:
                client.close()

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def replica_of(self, port: int) -> int | None:
        """The port of the master the node on ``port`` replicates (None: a master)."""
        client = quick_client(f"redis://127.0.0.1:{port}/0")
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
                client = quick_client(f"redis://127.0.0.1:{port}/0")
                try:
                    nodes = client.execute_command("CLUSTER", "NODES").decode()
                    ok = client.cluster("info")["cluster_state"] == "ok"
                finally:
                    client.close()
                dead = [line for line in nodes.splitlines() if f":{killed}@" in line]
                if not ok or not dead or "fail" not in dead[0].split()[2]:
                    return False
            return True

        _wait(converged, "the failover", timeout_s)

    def stop(self) -> None:
        """Kill every node (the data are a benchmark's or a test's: nothing to keep)."""
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()
