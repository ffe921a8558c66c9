"""A real service for the benchmarks: ``feedforge serve`` in a process of its own, the API
keys it is given, and the Redis namespace a run drops at its end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import yaml

from feedforge.config import Settings
from feedforge.datasets.build import build_dataset
from feedforge.errors import FeedforgeError
from feedforge.events.simulator import simulate
from feedforge.models.train import train_models
from feedforge.publish.publisher import publish
from feedforge.serving.security import API_KEY_HEADER
from feedforge.store.factory import open_store
from feedforge.store.keys import Keys, glob_pattern
from feedforge.workdir import Workdir

Progress = Callable[[str], None]
"""Where a benchmark reports its steps (one line each)."""


def bench_settings(
    base: Settings,
    *,
    items: int,
    users: int,
    days: int,
    redis_url: str,
    namespace: str,
    serving: dict[str, Any],
    dataset: dict[str, Any] | None = None,
    store_type: str = "redis",
) -> Settings:
    """``base`` with a simulated world of ``items`` x ``users`` over ``days``, published to
    Redis (``store_type`` ``redis`` or ``redis-cluster``) at ``redis_url`` under
    ``namespace``, and the ``serving`` (and ``dataset``)
    fields replaced. The API keys are ``base``'s unless ``serving`` names others (a dump of
    the settings masks them, so they are carried over as they are)."""
    data = base.model_dump(mode="json")
    data["simulator"] = {**data["simulator"], "n_items": items, "n_users": users, "n_days": days}
    data["dataset"] = {**data["dataset"], **(dataset or {})}
    data["store"] = {**data["store"], "type": store_type, "redis_url": redis_url}
    data["store"]["namespace"] = namespace
    keys = {"api_key": base.serving.api_key, "read_api_key": base.serving.read_api_key}
    data["serving"] = {**data["serving"], "log_format": "text", **keys, **serving}
    return Settings(**data)


def write_service_config(settings: Settings, path: Path) -> None:
    """The settings file of the benchmark's service, without its API keys: those go to the
    service in its environment (:func:`key_env`)."""
    dumped = settings.model_dump(mode="json")
    dumped["serving"].update(api_key=None, read_api_key=None)
    path.write_text(yaml.safe_dump(dumped), encoding="utf-8")


def set_up_world(workdir: Workdir, settings: Settings, say: Progress) -> dict[str, float]:
    """Simulate, build, train and publish into ``workdir`` and the settings' store.

    Returns:
        The seconds of each step, rounded to 0.1.
    """

    def publish_to_store() -> None:
        with open_store(settings.store, workdir.store_path) as store:
            publish(workdir, settings, store)

    seconds: dict[str, float] = {}
    for name, step in (
        ("simulate", lambda: simulate(settings.simulator, workdir)),
        ("build", lambda: build_dataset(workdir, settings)),
        ("train", lambda: train_models(workdir, settings)),
        ("publish", publish_to_store),
    ):
        say(f"setup: {name}")
        t0 = time.perf_counter()
        step()
        seconds[name] = round(time.perf_counter() - t0, 1)
    return seconds


def key_env(settings: Settings) -> dict[str, str]:
    """The service's API keys as the environment variables that set them (a config file
    dumped from the settings holds them masked: ``**********``)."""
    keys = {"api_key": settings.serving.api_key, "read_api_key": settings.serving.read_api_key}
    return {
        f"FEEDFORGE_SERVING__{name.upper()}": key.get_secret_value()
        for name, key in keys.items()
        if key is not None
    }


def key_header(key: pydantic.SecretStr | None) -> dict[str, str] | None:
    """The ``X-API-Key`` header of ``key`` (None: no header)."""
    return None if key is None else {API_KEY_HEADER: key.get_secret_value()}


def start_service(
    workdir: Workdir,
    config: Path,
    workers: int,
    env: dict[str, str],
    log_path: Path | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Start ``feedforge serve --workers W`` on a free port and wait until it answers.

    Args:
        workdir: The service's work directory.
        config: Its settings file.
        workers: Worker processes.
        env: Added to the service's environment (e.g. :func:`key_env`).
        log_path: Where the service's output goes (None: discarded).

    Returns:
        The process (terminate it when done) and the service's base URL.

    Raises:
        FeedforgeError: the service exited, or did not answer within 120 s.
    """
    import httpx  # the bench extra (serve_load.require_client_libraries)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-c", "from feedforge.cli import main; main()", "serve",
        "--workdir", str(workdir.root), "--config", str(config), "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    log = subprocess.DEVNULL if log_path is None else log_path.open("w", encoding="utf-8")
    try:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
        )
    finally:
        if log_path is not None and not isinstance(log, int):
            log.close()  # the child holds its own descriptor
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FeedforgeError("feedforge serve exited during start-up")
        try:
            if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise FeedforgeError("feedforge serve did not start in 120 s")


def drop_namespace(settings: Settings) -> None:
    """Delete every key of the settings' store namespace from its Redis."""
    import redis

    client = redis.Redis.from_url(settings.store.redis_url)
    pattern = glob_pattern(Keys(settings.store.namespace).prefix)
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)
    client.close()
