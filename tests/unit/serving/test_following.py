"""Following the store's current version: the first load, background swaps, retry backoff."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import feedforge.serving.following as following
from feedforge.config import ServingConfig
from feedforge.errors import ArtifactError, NotPublishedError
from feedforge.monitoring.metrics import ServiceMetrics
from feedforge.serving.following import VersionFollower
from feedforge.workdir import Workdir


class PointerStore:
    """Only what the follower reads of a store: the pointer and each version's metadata."""

    def __init__(self, current: str | None, versions: tuple[str, ...] = ("v1", "v2")) -> None:
        self.current = current
        self.versions = versions

    def current_version(self) -> str | None:
        return self.current

    def get_meta(self, version: str) -> dict[str, Any] | None:
        return {"version": version} if version in self.versions else None


class Loads:
    """A stand-in for ``load_version``: records each call; fails while ``failing`` holds the
    version; a background load waits for ``gate``."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failing: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.done = threading.Event()

    def __call__(self, _store: Any, version: str, *_args: Any) -> Any:
        self.calls.append(version)
        try:
            assert self.gate.wait(10), "the test never let the load finish"
            if version in self.failing:
                raise ArtifactError("bundle", "corrupt bundle (test)", "feedforge publish")
            return SimpleNamespace(version=version)
        finally:
            self.done.set()

    def wait(self) -> None:
        """Wait for the background load that was started, then reset."""
        assert self.done.wait(10), "no load happened"
        self.done.clear()


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Loads]:
    fake = Loads()
    monkeypatch.setattr(following, "load_version", fake)
    yield fake
    gc.unfreeze()  # each load freezes the collector's view; leave the process as it was


def follower(store: PointerStore, tmp_path: Path, clock: list[float]) -> VersionFollower:
    return VersionFollower(
        store,  # type: ignore[arg-type]
        ServingConfig(load_retry_s=10.0),
        Workdir.at(tmp_path),
        ServiceMetrics(),
        clock=lambda: clock[0],
    )


def wait_idle(versions: VersionFollower) -> None:
    """Wait until no background load runs (it clears ``_loading`` last)."""
    for _ in range(1000):
        with versions._lock:
            if versions._loading is None:
                return
        threading.Event().wait(0.01)
    raise AssertionError("the background load never finished")


def test_the_first_version_loads_on_the_caller_and_is_reported(
    tmp_path: Path, loads: Loads
) -> None:
    versions = follower(PointerStore("v1"), tmp_path, [0.0])
    assert versions.loaded is None
    assert versions.preload() == "v1"
    assert versions.loaded is not None and versions.loaded.version == "v1"
    assert versions.current().version == "v1" and loads.calls == ["v1"]  # loaded once
    text = versions.metrics.render()[0].decode()
    assert 'feedforge_serving_version_info{version="v1"} 1.0' in text


def test_nothing_published_is_an_error_but_not_at_preload(
    tmp_path: Path, loads: Loads, caplog: pytest.LogCaptureFixture
) -> None:
    versions = follower(PointerStore(None), tmp_path, [0.0])
    with pytest.raises(NotPublishedError, match="feedforge publish --workdir"):
        versions.current()
    assert versions.preload() is None
    assert "no version loaded at start-up" in caplog.text
    with pytest.raises(NotPublishedError, match="no metadata"):
        versions.follow("v9")
    assert loads.calls == []


def test_a_new_version_loads_in_the_background_while_the_old_one_answers(
    tmp_path: Path, loads: Loads
) -> None:
    store = PointerStore("v1")
    versions = follower(store, tmp_path, [0.0])
    versions.preload()
    loads.done.clear()
    loads.gate.clear()
    store.current = "v2"
    assert versions.current().version == "v1"  # the load has begun...
    assert versions.current().version == "v1"  # ...once: no second thread for it
    loads.gate.set()
    loads.wait()
    wait_idle(versions)
    assert versions.current().version == "v2"
    assert loads.calls == ["v1", "v2"]


def test_a_failed_version_is_retried_after_a_doubling_backoff(
    tmp_path: Path, loads: Loads, caplog: pytest.LogCaptureFixture
) -> None:
    store, clock = PointerStore("v1"), [1_000.0]
    versions = follower(store, tmp_path, clock)
    versions.preload()
    loads.done.clear()
    loads.failing.add("v2")
    store.current = "v2"
    for failure, delay in ((1, 10.0), (2, 20.0)):
        assert versions.current().version == "v1"
        loads.wait()
        wait_idle(versions)
        assert versions._failed_loads["v2"] == (failure, clock[0] + delay)
        assert f"could not load version v2 (failure {failure})" in caplog.text
        assert f"next try in {delay:.0f} s" in caplog.text
        assert versions.current().version == "v1"  # within the backoff: not tried again
        assert loads.calls.count("v2") == failure
        clock[0] += delay  # the backoff has passed
    loads.failing.clear()
    assert versions.current().version == "v1"
    loads.wait()
    wait_idle(versions)
    assert versions.current().version == "v2" and "v2" not in versions._failed_loads
    assert loads.calls.count("v2") == 3
