"""The ingesting process killed with SIGKILL right after acknowledging events: every
acknowledged event is in the log after a restart, and re-sent events are stored once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from feedforge.events.log import EventLog
from feedforge.workdir import Workdir

from .conftest import ServerProcess

pytestmark = pytest.mark.integration


def batch(n: int, user: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "event_id": f"dur-{uuid.uuid4().hex}",
            "timestamp": now,
            "user_id": user,
            "item_id": f"i{j % 300:06d}",
            "event_type": "click",
        }
        for j in range(n)
    ]


def stored_ids(workdir: Workdir) -> pl.Series:
    return (
        EventLog(workdir.events_dir)
        .scan()
        .filter(pl.col("event_id").str.starts_with("dur-"))
        .select("event_id")
        .collect()
        .get_column("event_id")
    )


def test_acknowledged_events_survive_sigkill_and_resends_are_stored_once(
    workdir_copy: Callable[..., Workdir], small_config: Path
) -> None:
    workdir = workdir_copy()
    server = ServerProcess(workdir, small_config).start()
    acknowledged: list[str] = []
    sent: list[list[dict[str, Any]]] = []
    stop = threading.Event()

    def ingest() -> None:  # batches of 200 events, as fast as the server takes them
        with httpx.Client(base_url=server.base, timeout=10) as client:
            while not stop.is_set():
                events = batch(200, "dur-user")
                sent.append(events)
                try:
                    response = client.post("/events", json=events)
                except httpx.TransportError:
                    return  # the server died under this request: not acknowledged
                if response.status_code == 200:
                    acknowledged.extend(e["event_id"] for e in events)

    sender = threading.Thread(target=ingest)
    try:
        sender.start()
        while len(acknowledged) < 2_000:
            assert sender.is_alive(), "the ingesting client stopped early"
            time.sleep(0.01)
        server.kill()  # SIGKILL mid-traffic: no shutdown hook runs
        stop.set()
        sender.join(timeout=30)
    finally:
        stop.set()
        server.stop()
    assert len(acknowledged) >= 2_000

    restarted = ServerProcess(workdir, small_config).start()
    try:
        ids = stored_ids(workdir)
        missing = set(acknowledged) - set(ids.to_list())
        assert not missing, f"{len(missing)} acknowledged events lost"
        # Re-send everything (acknowledged or not): each event is stored exactly once.
        with httpx.Client(base_url=restarted.base, timeout=30) as client:
            duplicates = 0
            for events in sent:
                response = client.post("/events", json=events)
                assert response.status_code == 200, response.text
                duplicates += response.json()["duplicates"]
        assert duplicates >= len(acknowledged)
    finally:
        restarted.stop()
    ids = stored_ids(workdir)
    assert ids.n_unique() == ids.len() == sum(len(events) for events in sent)
