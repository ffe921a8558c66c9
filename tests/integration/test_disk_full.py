"""The event log's file system fills up: ``POST /events`` answers 503 with a clear message (no
server path: the service logs it), every acknowledged event stays readable exactly once, the
refused batch leaves nothing the log cannot read, and ingestion resumes by itself (no restart)
once space returns; compaction and ``feedforge build`` read the log afterwards.

The small disk is a tmpfs mounted over the work directory's ``raw/events``, which needs root
(or CAP_SYS_ADMIN): without it the test is skipped locally and fails when ``CI=true``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.datasets.build import build_dataset
from feedforge.errors import EventLogError
from feedforge.events.log import EventLog
from feedforge.serving.app import create_app
from feedforge.workdir import Workdir

from ..conftest import unavailable

pytestmark = pytest.mark.integration

DISK_SIZE = "2m"
HEADROOM = 160 * 1024
"""Bytes left free once the filler is written: room for about twenty batches (8 KiB files on
tmpfs), so the log is written to a few times before it fills up."""
BATCH = 100


def _mount_tmpfs(directory: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` over ``directory`` (skip, or fail under ``CI=true``, if
    mounting is not permitted)."""
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        done = subprocess.CompletedProcess(exc.filename, 127, "", str(exc))
    if done.returncode != 0:
        message = f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}"
        unavailable(message)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[Path, str], None]]:
    """``small_disk(directory, size)``: a tmpfs of ``size`` over ``directory`` (its files
    copied in), unmounted after the test."""
    mounted: list[Path] = []

    def mount(directory: Path, size: str) -> None:
        saved = tmp_path / f"before-mount-{len(mounted)}"
        shutil.copytree(directory, saved)
        _mount_tmpfs(directory, size)
        mounted.append(directory)
        shutil.copytree(saved, directory, dirs_exist_ok=True)
        shutil.rmtree(saved)

    yield mount
    for directory in reversed(mounted):  # busy (a file left open): detach it all the same
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(directory)], check=True)


def fill(directory: Path, leave: int) -> Path:
    """Write a filler file in ``directory`` so that about ``leave`` bytes stay free."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    filler = directory / "filler.bin"
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))
    return filler


def batch(user: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "event_id": f"full-{uuid.uuid4().hex}",
            "timestamp": now,
            "user_id": user,
            "item_id": f"i{j % 300:06d}",
            "event_type": "click",
        }
        for j in range(BATCH)
    ]


def raw_ids(log: EventLog) -> pl.Series:
    """Every posted event id in the log's files, read file by file and without the reads'
    de-duplication (so an event stored twice shows twice, and a broken file raises)."""
    frames = [pl.read_parquet(f, columns=["event_id"]) for f in log.files()]
    ids = pl.concat(frames).get_column("event_id")
    return ids.filter(ids.str.starts_with("full-"))


def assert_stored_once(log: EventLog, expected: set[str]) -> None:
    ids = raw_ids(log)
    assert ids.len() == ids.n_unique(), "an event is stored twice"
    assert set(ids.to_list()) == expected
    with log.reading():
        scanned = log.scan().filter(pl.col("event_id").str.starts_with("full-")).collect()
    assert set(scanned.get_column("event_id").to_list()) == expected


def stray_files(log: EventLog) -> list[Path]:
    """Files of the log that are neither committed Parquet files nor its lock files."""
    committed = set(log.files())
    return [
        f
        for f in log.root.rglob("*")
        if f.is_file() and f not in committed and not f.name.endswith(".lock")
    ]


def test_a_full_disk_is_a_clear_503_loses_nothing_and_ingestion_resumes_when_space_returns(
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    small_disk: Callable[[Path, str], None],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    workdir = workdir_copy()
    small_disk(workdir.events_dir, DISK_SIZE)
    filler = fill(workdir.events_dir, HEADROOM)
    log = EventLog(workdir.events_dir)
    acknowledged: set[str] = set()
    with (
        caplog.at_level(logging.ERROR),
        TestClient(create_app(small_settings, workdir)) as client,
    ):
        for _ in range(200):
            sent = batch("u000001")
            posted = client.post("/events", json=sent)
            if posted.status_code != 200:
                break
            assert posted.json()["accepted"] == BATCH, posted.text
            acknowledged.update(e["event_id"] for e in sent)
        else:
            pytest.fail(f"the log never filled up ({len(acknowledged)} events stored)")
        assert acknowledged, "the first batch already failed: leave more headroom"

        # A clear 503, no server path, the path in the service's log.
        assert posted.status_code == 503, posted.text
        body = posted.json()
        assert body["error"] == "EventLogError"
        assert "No space left on device" in body["message"]
        assert "re-send the batch" in body["message"]
        assert str(tmp_path) not in posted.text and "path" not in body
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(str(workdir.events_dir) in m for m in logged), logged

        # Every acknowledged event is stored once; the refused batch (one day: all or
        # nothing) left no half-written file and nothing the log reads.
        assert body["stored"] == 0
        assert_stored_once(log, acknowledged)
        assert stray_files(log) == [filler]

        # Compaction finds no room either: a clear error, and the log reads as before.
        with pytest.raises(EventLogError, match="No space left on device"):
            log.compact()
        assert_stored_once(log, acknowledged)
        assert stray_files(log) == [filler]

        # Space returns: the same service takes the refused batch and new ones.
        filler.unlink()
        again = client.post("/events", json=sent)
        assert again.status_code == 200, again.text
        assert again.json()["accepted"] == BATCH
        acknowledged.update(e["event_id"] for e in sent)
        after = batch("u000002")
        posted = client.post("/events", json=after)
        assert posted.status_code == 200, posted.text
        acknowledged.update(e["event_id"] for e in after)

    assert_stored_once(log, acknowledged)
    assert stray_files(log) == []
    compacted = log.compact()
    assert compacted.partitions >= 1
    assert_stored_once(log, acknowledged)
    manifest = build_dataset(workdir, small_settings)  # `feedforge build`
    assert manifest.inputs["events"] == f"{len(log.files())} files"
