"""The live history agrees with the event log: only events the log newly stored reach it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient

from feedforge.events.log import EventLog
from feedforge.store.embedded import EmbeddedStore
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration

EventFactory = Callable[..., dict[str, Any]]


def history(workdir: Workdir, user_id: str) -> list[str]:
    with EmbeddedStore(workdir.store_path) as store:  # as another worker would read it
        return store.get_history(user_id, 50)


def logged_items(workdir: Workdir, user_id: str) -> list[str]:
    with EventLog(workdir.events_dir).reading():
        rows = EventLog(workdir.events_dir).scan().filter(pl.col("user_id") == user_id).collect()
    return sorted(rows.get_column("item_id").to_list())


def test_a_resent_event_enters_the_history_once(
    client: TestClient, published_workdir: Workdir, new_user_id: str, make_event: EventFactory
) -> None:
    event = make_event(user_id=new_user_id, item_id="i000010", event_type="click")
    for attempt in range(5):
        answer = client.post("/events", json=event)
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == (1 if attempt == 0 else 0)
    assert history(published_workdir, new_user_id) == ["i000010"]
    assert logged_items(published_workdir, new_user_id) == ["i000010"]


def test_a_reused_event_id_with_another_item_keeps_the_logged_item(
    client: TestClient, published_workdir: Workdir, new_user_id: str, make_event: EventFactory
) -> None:
    first = make_event(user_id=new_user_id, item_id="i000011", event_type="click")
    other_item = {**first, "item_id": "i000012"}
    assert client.post("/events", json=first).json()["accepted"] == 1
    answer = client.post("/events", json=other_item).json()
    assert (answer["accepted"], answer["duplicates"]) == (0, 1)
    # Twice in one batch: the log keeps the first, and so must the history.
    twin = make_event(user_id=new_user_id, item_id="i000013", event_type="like")
    answer = client.post("/events", json=[twin, {**twin, "item_id": "i000014"}]).json()
    assert (answer["accepted"], answer["duplicates"]) == (1, 1)

    assert history(published_workdir, new_user_id) == ["i000013", "i000011"]  # newest first
    assert logged_items(published_workdir, new_user_id) == ["i000011", "i000013"]
