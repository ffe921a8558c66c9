"""Fixtures of the integration suite: one small pipeline run, shared by every test.

The pipeline (simulate -> build -> train -> evaluate) runs **once per session** into a temporary
work directory, from a YAML config loaded with :func:`feedforge.config.load_settings`, exactly
as the CLI would. Tests never publish into, or post events to, that directory: they get a copy
(:func:`published_workdir` for read-only tests, :func:`fresh_workdir` or :func:`workdir_copy`
for tests that change state) and publish into the copy, because the embedded store lives at
``WORKDIR/store.sqlite3`` and published metadata holds absolute bundle paths, so a copied store
would point back into the original directory.

The small size (1,000 users, 300 items, 12 days) runs the whole pipeline in about a second
and still separates the learned models from the popularity baseline on NDCG@10 by a wide
margin for every simulator seed tried (1-10).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import yaml
from fastapi.testclient import TestClient

from feedforge.config import Settings, load_settings
from feedforge.datasets.build import build_dataset
from feedforge.datasets.load import load_dataset
from feedforge.evaluation.evaluate import evaluate
from feedforge.events.log import EventLog
from feedforge.events.simulator import simulate
from feedforge.models.train import train_models
from feedforge.publish.publisher import publish
from feedforge.serving.app import create_app
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

from ..conftest import unavailable

SMALL_CONFIG: dict[str, Any] = {
    "simulator": {"seed": 7, "n_users": 1000, "n_items": 300, "n_days": 12},
    "dataset": {"validation_days": 2, "test_days": 2},
    "models": {"als": {"factors": 16, "iterations": 5}},
}
"""Settings of every integration run (a tiny world; the rest are the defaults)."""

CONSUMED_EVENT_TYPES = ("click", "watch", "like", "purchase", "rating")
"""Event types after which an item counts as consumed (never recommended again)."""


@pytest.fixture(scope="session", autouse=True)
def _no_feedforge_env() -> Iterator[None]:
    """Settings from the developer's ``FEEDFORGE_*`` variables must not leak into the suite."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("FEEDFORGE_"):
                mp.delenv(name)
        yield


def _write_config(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump({**SMALL_CONFIG, **sections}), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def write_config() -> Callable[..., Path]:
    """``write_config(path, **sections)``: :data:`SMALL_CONFIG` as YAML, sections replaced."""
    return _write_config


@pytest.fixture(scope="session")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The YAML file of the small pipeline (also passed to the CLI with ``--config``)."""
    return _write_config(tmp_path_factory.mktemp("config") / "small.yaml")


@pytest.fixture(scope="session")
def small_settings(small_config: Path) -> Settings:
    return load_settings(small_config)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory: pytest.TempPathFactory, small_settings: Settings) -> Workdir:
    """A work directory with catalog, events, dataset, models and report (not published).

    Treat it as read-only: take a copy (:func:`workdir_copy`) before changing anything.
    """
    workdir = Workdir.at(tmp_path_factory.mktemp("trained"))
    simulate(small_settings.simulator, workdir)
    build_dataset(workdir, small_settings)
    train_models(workdir, small_settings)
    evaluate(workdir, small_settings)
    return workdir


def _copy(source: Workdir, target: Path) -> Workdir:
    # Without the published state: bundles, the embedded store and its WAL files.
    shutil.copytree(
        source.root,
        target,
        ignore=shutil.ignore_patterns("bundles", "store.sqlite3*", ".append.lock"),
    )
    return Workdir.at(target)


def _publish(workdir: Workdir, settings: Settings) -> str:
    with open_store(settings.store, workdir.store_path) as store:
        return publish(workdir, settings, store)


@pytest.fixture(scope="session")
def publish_into() -> Callable[[Workdir, Settings], str]:
    """``publish_into(workdir, settings)``: publish into the store ``settings`` names."""
    return _publish


@pytest.fixture
def workdir_copy(
    trained_workdir: Workdir, small_settings: Settings, tmp_path: Path
) -> Callable[..., Workdir]:
    """``workdir_copy(settings=None, publish=True)``: a private copy of the trained work
    directory, published once with ``settings`` (default: the small settings) unless
    ``publish`` is false."""
    made = 0

    def factory(settings: Settings | None = None, publish: bool = True) -> Workdir:
        nonlocal made
        made += 1
        workdir = _copy(trained_workdir, tmp_path / f"workdir-{made}")
        if publish:
            _publish(workdir, settings or small_settings)
        return workdir

    return factory


@pytest.fixture(scope="session")
def published_workdir(
    trained_workdir: Workdir, small_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Workdir:
    """A published copy of the trained work directory, shared by read-only tests.

    Tests using it may post events only for users of their own (see :func:`new_user_id`).
    """
    workdir = _copy(trained_workdir, tmp_path_factory.mktemp("published") / "w")
    _publish(workdir, small_settings)
    return workdir


@pytest.fixture
def fresh_workdir(workdir_copy: Callable[..., Workdir]) -> Workdir:
    """A published copy of the trained work directory, private to one test."""
    return workdir_copy()


def _consumed_items(workdir: Workdir) -> dict[str, set[str]]:
    frame = (
        EventLog(workdir.events_dir)
        .scan()
        .filter(pl.col("event_type").is_in(CONSUMED_EVENT_TYPES))
        .select("user_id", "item_id")
        .collect()
    )
    out: dict[str, set[str]] = {}
    for user_id, item_id in frame.iter_rows():
        out.setdefault(user_id, set()).add(item_id)
    return out


@pytest.fixture(scope="session")
def consumed_items() -> Callable[[Workdir], dict[str, set[str]]]:
    """``consumed_items(workdir)``: user -> items consumed, read from the raw event log (not
    from the store), so it checks what publishing derived."""
    return _consumed_items


@pytest.fixture(scope="session")
def known_user(trained_workdir: Workdir) -> str:
    """The user with a trained embedding who consumed the most items."""
    consumed = _consumed_items(trained_workdir)
    known = set(load_dataset(trained_workdir).users.ids.to_list())
    return max(sorted(known & consumed.keys()), key=lambda u: len(consumed[u]))


@pytest.fixture
def new_user_id() -> str:
    """A user id no other test (and no simulated event) uses."""
    return f"it-user-{uuid.uuid4().hex[:12]}"


EventFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def make_event() -> EventFactory:
    """Build a valid JSON event (a watch now, by default); keyword arguments override fields."""

    def factory(**fields: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event_id": f"it-{uuid.uuid4().hex}",
            "timestamp": datetime.now(UTC).isoformat(),
            "user_id": "it-user",
            "item_id": "i000001",
            "event_type": "watch",
            "watch_seconds": 120.0,
        }
        event.update(fields)
        return {k: v for k, v in event.items() if v is not None}

    return factory


class ServerProcess:
    """``feedforge serve`` in a process of its own (uvicorn, the app factory, a real socket).

    ``start()`` waits until ``/health/live`` answers; ``kill()`` sends SIGKILL (no shutdown
    hooks run); ``stop()`` terminates it and returns everything it printed.
    """

    def __init__(self, workdir: Workdir, config: Path, env: dict[str, str] | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-c", "from feedforge.cli import main; main()", "serve",
            "--workdir", str(workdir.root), "--config", str(config), "--port", str(self.port),
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 60) -> ServerProcess:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, self.process.communicate()[0]
            try:
                if httpx.get(f"{self.base}/health/live", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not start in {timeout_s} s"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)
        self.process = None

    def stop(self) -> str:
        if self.process is None:
            return ""
        self.process.terminate()
        try:
            output = self.process.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            self.process.kill()
            output = self.process.communicate()[0]
        self.process = None
        return output


@pytest.fixture(scope="module")
def client(published_workdir: Workdir, small_settings: Settings) -> Iterator[TestClient]:
    """A client on the shared published work directory, one per test module (post events
    for new users only: the work directory is shared by the whole session)."""
    with TestClient(create_app(small_settings, published_workdir)) as test_client:
        yield test_client


# -- a real browser ---------------------------------------------------------------------------
CHROMIUM = os.environ.get("FEEDFORGE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FEEDFORGE_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = Path(
    os.environ.get("FEEDFORGE_SCREENSHOTS")
    or Path(__file__).resolve().parents[2] / "build" / "screenshots"
)
"""Where the browser tests save their screenshots (``FEEDFORGE_SCREENSHOTS=docs/screenshots``
refreshes the README's)."""
LOCAL_SCHEMES = ("data:", "blob:", "about:", "file://", "chrome-extension:")


class Browser:
    """Headless Debian Chromium driven through its chromedriver (Selenium), recording every
    request the page sends (Chrome's performance log) and its console."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--no-first-run",
            "--disable-background-networking",  # Chrome's own update/safe-browsing traffic
            "--disable-component-update",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_script_timeout(60)

    def open(self, url: str) -> None:
        self.drain()
        self.driver.get(url)

    def drain(self) -> None:
        """Forget the logs so far."""
        self.driver.get_log("browser")
        self.driver.get_log("performance")

    def logs(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The console entries and the URLs of the requests sent since :meth:`open`."""
        import json

        console = self.driver.get_log("browser")
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return console, urls

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait_for(self, script: str, timeout_s: float = 30.0, *args: Any) -> Any:
        """Poll ``script`` until it returns something truthy."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.js(script, *args)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for: {script}"
            time.sleep(0.2)

    def screenshot(self, name: str, full_page: bool = False) -> Path:
        """Save a PNG of the window (or the whole page) under :data:`SCREENSHOTS`."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        if full_page:
            height = int(self.js("return document.documentElement.scrollHeight"))
            self.driver.set_window_size(1280, min(height, 12_000))
        self.driver.save_screenshot(str(path))
        if full_page:
            self.driver.set_window_size(1280, 900)
        return path

    @staticmethod
    def outside(urls: list[str], port: int | None = None) -> list[str]:
        """The requests that left the machine: anything but 127.0.0.1 (on ``port``) and
        local schemes."""
        local = f"http://127.0.0.1:{port}/" if port else "http://127.0.0.1:"
        return [u for u in urls if not u.startswith((local, *LOCAL_SCHEMES))]

    @staticmethod
    def errors(console: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The console entries that are errors."""
        return [e for e in console if e.get("level") == "SEVERE"]

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """A headless Chromium (Debian's ``chromium`` and ``chromium-driver``). Missing, it skips
    the test, or fails it under ``CI=true`` (``.ci/run`` installs both)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        message = (
            f"the browser tests need {', '.join(missing)} "
            "(apt-get install chromium chromium-driver)"
        )
        unavailable(message)
    session = Browser()
    try:
        yield session
    finally:
        session.close()
