"""A real Prometheus scraping a real ``feedforge serve`` with the shipped alert rules.

Prometheus (``/usr/bin/prometheus``, Debian's ``prometheus`` package, which ``.ci/run``
installs) runs on a free port of its own, never 9090 (the package may start a system one
there), scraping every second and evaluating ``deploy/prometheus/alerts.yml`` every second,
with every ``for:`` set to 0s so an alert fires on its first evaluation. Without the binary
the tests are skipped locally and fail when ``CI=true``.

Checked: the scrape succeeds, every rule evaluates without error on the service's real
series, and injected faults fire their alerts: a stopped Redis (degraded feeds) fires
``FeedforgeHighDegradedRatio``, a tiny ``monitoring.max_version_age_s`` fires
``FeedforgeStaleVersion``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from feedforge.config import Settings, load_settings
from feedforge.workdir import Workdir

from ..conftest import RedisServer, unavailable
from .conftest import ServerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = "/usr/bin/prometheus"
TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A Prometheus server of the test's own, scraping ``target`` (``host:port``) as job
    ``feedforge`` every second, with the shipped rules (every ``for:`` set to 0s)."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "0s"
        (directory / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {"job_name": "feedforge", "static_configs": [{"targets": [target]}]}
            ],
        }
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for(lambda: httpx.get(f"{self.base}/-/ready", timeout=1).status_code == 200)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base}/api/v1/{path}", params=params, timeout=5)
        response.raise_for_status()
        return response.json()["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [
            alert
            for alert in self.api("alerts")["alerts"]
            if alert["labels"]["alertname"] == alertname and alert["state"] == "firing"
        ]

    def wait_for(self, check: Callable[[], object], timeout_s: float = TIMEOUT_S) -> Any:
        """Poll ``check`` until it returns something truthy (connection errors: not yet)."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process is not None and self.process.poll() is None, self.output()
            try:
                value = check()
            except httpx.TransportError:
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"not within {timeout_s} s:\n{self.output()}"
            time.sleep(0.25)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    if not os.access(PROMETHEUS, os.X_OK):
        message = f"{PROMETHEUS} is not installed (Debian package prometheus; .ci/run installs it)"
        unavailable(message)
    return PROMETHEUS


@pytest.fixture
def serve() -> Iterator[Callable[[ServerProcess], ServerProcess]]:
    """``serve(server)``: start a :class:`ServerProcess`, stopped after the test."""
    started: list[ServerProcess] = []

    def start(server: ServerProcess) -> ServerProcess:
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def prometheus(
    prometheus_binary: str, tmp_path: Path
) -> Iterator[Callable[[ServerProcess], Prometheus]]:
    """``prometheus(server)``: a started :class:`Prometheus` scraping ``server``."""
    started: list[Prometheus] = []

    def start(server: ServerProcess) -> Prometheus:
        directory = tmp_path / f"prometheus-{len(started)}"
        directory.mkdir()
        instance = Prometheus(prometheus_binary, directory, f"127.0.0.1:{server.port}")
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


def _recommend(server: ServerProcess, user_id: str, n: int = 1) -> None:
    for _ in range(n):
        response = httpx.get(f"{server.base}/recommend", params={"user_id": user_id}, timeout=30)
        assert response.status_code == 200, response.text


def test_prometheus_scrapes_the_service_and_evaluates_every_rule(
    prometheus: Callable[[ServerProcess], Prometheus],
    serve: Callable[[ServerProcess], ServerProcess],
    published_workdir: Workdir,
    small_config: Path,
    known_user: str,
) -> None:
    server = serve(ServerProcess(published_workdir, small_config))
    _recommend(server, known_user, n=3)
    prom = prometheus(server)

    targets = prom.wait_for(
        lambda: [t for t in prom.api("targets")["activeTargets"] if t["health"] == "up"]
    )
    assert targets[0]["labels"]["job"] == "feedforge"
    recommend = prom.wait_for(
        lambda: prom.query('feedforge_requests_total{job="feedforge",endpoint="/recommend"}')
    )
    assert sum(float(sample["value"][1]) for sample in recommend) >= 3
    slo = prom.wait_for(lambda: prom.query('feedforge_threshold{name="latency_slo"}'))
    assert float(slo[0]["value"][1]) == pytest.approx(0.99)

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
        return rules if all(rule["health"] != "unknown" for rule in rules) else None

    rules = prom.wait_for(evaluated)
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken
    assert not prom.firing("FeedforgeDown")
    assert not prom.firing("FeedforgeThresholdsMissing")
    output = server.stop()
    assert "Traceback" not in output, output


@pytest.mark.redis
def test_injected_faults_fire_their_alerts(
    prometheus: Callable[[ServerProcess], Prometheus],
    serve: Callable[[ServerProcess], ServerProcess],
    own_redis: RedisServer,
    workdir_copy: Callable[..., Workdir],
    write_config: Callable[..., Path],
    publish_into: Callable[[Workdir, Settings], str],
    known_user: str,
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "redis.yaml",
        store={"type": "redis", "redis_url": own_redis.url, "socket_timeout_s": 0.2},
        serving={"store_retry_s": 0.2},
        monitoring={"max_version_age_s": 1.0},  # the version is stale a second after publish
    )
    workdir = workdir_copy(publish=False)
    publish_into(workdir, load_settings(config))
    server = serve(ServerProcess(workdir, config))
    _recommend(server, known_user, n=3)
    prom = prometheus(server)

    stale = prom.wait_for(lambda: prom.firing("FeedforgeStaleVersion"))
    assert stale[0]["labels"]["instance"] == f"127.0.0.1:{server.port}"
    assert stale[0]["labels"]["severity"] == "ticket"
    assert not prom.firing("FeedforgeHighDegradedRatio")

    own_redis.stop()

    def degraded_alert() -> list[dict[str, Any]]:
        _recommend(server, known_user, n=5)  # answered from the fallback: degraded
        return prom.firing("FeedforgeHighDegradedRatio")

    degraded = prom.wait_for(degraded_alert)
    assert degraded[0]["labels"]["severity"] == "page"
    assert float(degraded[0]["value"]) > 0.05
