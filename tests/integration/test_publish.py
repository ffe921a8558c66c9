"""Versioned publishing into the embedded store: retention, atomic switch, other processes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.config import Settings, load_settings
from feedforge.datasets.load import load_dataset
from feedforge.errors import ArtifactError, StoreError
from feedforge.publish.publisher import publish
from feedforge.publish.versions import prune_versions, rollback
from feedforge.serving.app import create_app
from feedforge.serving.version import load_version
from feedforge.store.embedded import EmbeddedStore
from feedforge.store.keys import ITEM_EMB
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration

PublishInto = Callable[[Workdir, Settings], str]


def wait_for_version(client: TestClient, expected: str, timeout_s: float = 30.0) -> None:
    """A running app loads a new version in the background and then switches: poll."""
    deadline = time.monotonic() + timeout_s
    while (got := version_of(client)) != expected:
        assert time.monotonic() < deadline, f"still serving {got}, not {expected}"
        time.sleep(0.02)


def version_of(client: TestClient) -> str:
    response = client.get("/recommend", params={"user_id": "u000000", "k": 5})
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 5
    version: str = response.json()["version"]
    return version


@pytest.mark.parametrize("keep", [1, 2])
def test_publishing_keeps_the_newest_versions_and_their_bundles(
    small_config: Path,
    workdir_copy: Callable[..., Workdir],
    publish_into: PublishInto,
    keep: int,
) -> None:
    settings = load_settings(small_config, store={"keep_versions": keep, "retire_grace_s": 0})
    workdir = workdir_copy(publish=False)
    versions = [publish_into(workdir, settings) for _ in range(keep + 2)]
    assert versions == sorted(versions), "version ids must sort in publish order"
    kept, dropped = versions[-keep:], versions[:-keep]

    item = load_dataset(workdir).items.ids[0]
    with EmbeddedStore(workdir.store_path) as store:
        assert store.versions() == kept
        assert store.current_version() == versions[-1]
        for version in kept:
            assert store.get_meta(version) is not None
            assert store.get_vectors(version, ITEM_EMB, [item])[1].tolist() == [True]
        for version in dropped:
            assert store.get_meta(version) is None
            assert store.get_vectors(version, ITEM_EMB, [item])[1].tolist() == [False]
    assert sorted(p.name for p in workdir.bundles_dir.iterdir()) == kept
    for version in kept:
        assert (workdir.bundles_dir / version / "manifest.json").is_file()


class GatedStore(EmbeddedStore):
    """The real embedded store, whose pointer flip waits until the test opens the gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reached = threading.Event()
        self.gate = threading.Event()

    def set_current(self, version: str) -> None:
        self.reached.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        super().set_current(version)


def test_readers_keep_the_old_version_until_the_pointer_flips(
    fresh_workdir: Workdir, small_settings: Settings
) -> None:
    with TestClient(create_app(small_settings, fresh_workdir)) as client:
        old = version_of(client)
        store = GatedStore(fresh_workdir.store_path)
        new: list[str] = []
        publisher = threading.Thread(
            target=lambda: new.append(publish(fresh_workdir, small_settings, store))
        )
        publisher.start()
        try:
            assert store.reached.wait(timeout=30), "publish never reached the pointer flip"
            # Every key, the metadata and the bundle of the new version are written...
            with EmbeddedStore(fresh_workdir.store_path) as reader:
                pending = [v for v in reader.versions() if v != old]
                assert len(pending) == 1
                assert reader.current_version() == old
            assert (fresh_workdir.bundles_dir / pending[0] / "manifest.json").is_file()
            # ...yet the running app keeps serving the old version, request after request.
            assert {version_of(client) for _ in range(3)} == {old}
            assert client.get("/health").json()["version"] == old
        finally:
            store.gate.set()
            publisher.join(timeout=30)
            store.close()
        assert new == pending
        wait_for_version(client, new[0])
        assert client.get("/health").json()["version"] == new[0]


def test_a_publish_from_another_process_is_seen_by_apps(
    tmp_path: Path,
    small_config: Path,
    small_settings: Settings,
    workdir_copy: Callable[..., Workdir],
) -> None:
    workdir = workdir_copy()
    with TestClient(create_app(small_settings, workdir)) as running:
        old = version_of(running)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "from feedforge.cli import main; main()",
                "publish",
                "--workdir",
                str(workdir.root),
                "--config",
                str(small_config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "500"},
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        match = re.search(r"published version (\S+)", done.stdout)
        assert match, done.stdout
        new = match.group(1)
        assert new != old
        # The app that was already running follows the other process's publish...
        wait_for_version(running, new)

    # ...and so does an app created afterwards.
    with TestClient(create_app(small_settings, workdir)) as later:
        assert later.get("/health").json() == {
            "status": "ok",
            "version": new,
            "checks": {"store": "ok", "version": new},
        }
        assert version_of(later) == new


def test_a_version_published_with_other_features_is_refused_at_load(
    fresh_workdir: Workdir,
) -> None:
    """A version from an older feature set must not be scored with today's columns."""
    with EmbeddedStore(fresh_workdir.store_path) as store:
        version = store.current_version()
        assert version is not None
        meta = store.get_meta(version)
        assert meta is not None and meta["ranker"]
        store.put_meta(version, {**meta, "features": [*meta["features"][:-1], "old_feature"]})
        with pytest.raises(ArtifactError) as info:
            load_version(store, version, store.get_meta(version) or {})
    message = str(info.value)
    assert "another feature list" in message and "old_feature" in message
    assert "feedforge publish" in message


def test_publish_refuses_when_the_configured_ranker_was_not_trained(
    fresh_workdir: Workdir, small_settings: Settings
) -> None:
    other = Settings(**{**small_settings.model_dump(), "models": {"ranker": {"type": "tree"}}})
    with EmbeddedStore(fresh_workdir.store_path) as store, pytest.raises(ArtifactError) as info:
        publish(fresh_workdir, other, store)
    assert "models.ranker.type='tree'" in str(info.value)
    assert "feedforge train" in str(info.value)


def test_old_versions_wait_out_the_grace_period_before_deletion(
    small_config: Path, workdir_copy: Callable[..., Workdir], publish_into: PublishInto
) -> None:
    settings = load_settings(small_config, store={"keep_versions": 1, "retire_grace_s": 600})
    workdir = workdir_copy(publish=False)
    v1, v2, v3 = (publish_into(workdir, settings) for _ in range(3))
    with EmbeddedStore(workdir.store_path) as store:
        # Beyond keep_versions, but replaced only seconds ago: still there.
        assert store.versions() == [v1, v2, v3]
        retired = {v: (store.get_meta(v) or {}).get("retired_at") for v in (v1, v2, v3)}
        assert retired[v1] and retired[v2] and retired[v3] is None
        assert prune_versions(workdir, store, keep=1, grace_s=600) == []
        later = datetime.now(UTC) + timedelta(seconds=601)
        assert prune_versions(workdir, store, keep=1, grace_s=600, now=later) == [v1, v2]
        assert store.versions() == [v3] and store.current_version() == v3
    assert sorted(p.name for p in workdir.bundles_dir.iterdir()) == [v3]


def test_rollback_flips_back_and_the_service_follows(
    small_config: Path, workdir_copy: Callable[..., Workdir], publish_into: PublishInto
) -> None:
    settings = load_settings(small_config, store={"keep_versions": 3})
    workdir = workdir_copy(publish=False)
    v1 = publish_into(workdir, settings)
    with EmbeddedStore(workdir.store_path) as store, pytest.raises(StoreError, match="no version"):
        rollback(workdir, store)
    v2 = publish_into(workdir, settings)
    with TestClient(create_app(settings, workdir)) as client:
        assert version_of(client) == v2
        result = CliRunner().invoke(
            app, ["rollback", "--workdir", str(workdir.root), "--config", str(small_config)]
        )
        assert result.exit_code == 0, result.output
        assert f"current version {v1} (was {v2})" in " ".join(result.output.split())
        wait_for_version(client, v1)  # no restart
        with EmbeddedStore(workdir.store_path) as store:
            assert "retired_at" not in (store.get_meta(v1) or {})
            assert (store.get_meta(v2) or {}).get("retired_at")
            assert rollback(workdir, store, to=v2) == (v1, v2)
            with pytest.raises(StoreError, match="already current"):
                rollback(workdir, store, to=v2)
            with pytest.raises(StoreError, match="not in the store"):
                rollback(workdir, store, to="nope")
        wait_for_version(client, v2)
    missing = CliRunner().invoke(app, ["rollback", "--workdir", str(workdir.root), "--to", "nope"])
    assert missing.exit_code != 0 and "not in the store" in missing.output


def test_a_moved_work_directory_is_served_from_its_own_bundles(
    small_settings: Settings, workdir_copy: Callable[..., Workdir], tmp_path: Path
) -> None:
    """A shared volume mounted at another path (a container) still finds the bundles."""
    workdir = workdir_copy()
    version = current_version_of(workdir)
    moved = Workdir.at(tmp_path / "mounted-elsewhere")
    shutil.move(workdir.root, moved.root)
    assert not workdir.root.exists()
    with TestClient(create_app(small_settings, moved)) as client:
        assert version_of(client) == version


def current_version_of(workdir: Workdir) -> str:
    with EmbeddedStore(workdir.store_path) as store:
        version = store.current_version()
    assert version is not None
    return version


def test_requests_are_answered_from_the_old_version_while_the_new_one_loads(
    small_settings: Settings,
    workdir_copy: Callable[..., Workdir],
    publish_into: PublishInto,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large version takes seconds to load: it loads in the background, never on a request."""
    import feedforge.serving.following as following

    workdir = workdir_copy()
    gate, started = threading.Event(), threading.Event()
    real_load = following.load_version

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert gate.wait(30), "the test never let the load finish"
        return real_load(*args, **kwargs)

    with TestClient(create_app(small_settings, workdir)) as client:
        old = version_of(client)
        monkeypatch.setattr(following, "load_version", slow_load)
        new = publish_into(workdir, small_settings)
        assert version_of(client) == old  # the pointer moved; the load has begun...
        assert started.wait(10)
        t0 = time.perf_counter()
        assert {version_of(client) for _ in range(5)} == {old}  # ...and nothing waits for it
        assert time.perf_counter() - t0 < 5
        gate.set()
        wait_for_version(client, new)


def test_a_version_that_fails_to_load_is_retried_after_a_backoff(
    small_settings: Settings,
    workdir_copy: Callable[..., Workdir],
    publish_into: PublishInto,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A corrupt new version must not be reloaded on every request (a load of a large
    catalog costs seconds of CPU): the old version serves, the new one is tried again after
    serving.load_retry_s, and served once it loads."""
    import feedforge.serving.following as following

    workdir = workdir_copy()
    real_load = following.load_version
    attempts: list[float] = []
    clock = [1_000.0]

    def failing_load(*args: Any, **kwargs: Any) -> Any:
        attempts.append(clock[0])
        raise ArtifactError(workdir.root, "corrupt bundle (test)", "feedforge publish")

    with TestClient(create_app(small_settings, workdir)) as client:
        client.app.state.service.versions.clock = lambda: clock[0]  # type: ignore[attr-defined]
        old = version_of(client)
        monkeypatch.setattr(following, "load_version", failing_load)
        new = publish_into(workdir, small_settings)
        deadline = time.perf_counter() + 10
        while not attempts and time.perf_counter() < deadline:
            assert version_of(client) == old
        for _ in range(20):
            assert version_of(client) == old
        time.sleep(0.2)  # any further load would have started by now
        assert len(attempts) == 1

        clock[0] += small_settings.serving.load_retry_s + 1  # the backoff has passed
        monkeypatch.setattr(following, "load_version", real_load)
        wait_for_version(client, new)
        assert len(attempts) == 1
