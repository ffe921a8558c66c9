"""``POST /items`` and ``DELETE /items/{id}``: new items served at once with the version's
content vector, withdrawn ones gone from every feed at once, bad items 422 per field with the
good ones stored, and the next publish folding them in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.events.catalog import read_catalog, read_item_updates
from feedforge.serving.app import create_app
from feedforge.serving.live import entry_frame
from feedforge.serving.pipeline import FeedService
from feedforge.store.bundle import ITEM_IDS_FILE
from feedforge.store.factory import open_store
from feedforge.store.keys import USER_EMB
from feedforge.store.live_items import read_live_items
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


@pytest.fixture
def client(fresh_workdir: Workdir, small_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(small_settings, fresh_workdir)) as test_client:
        yield test_client


def service_of(client: TestClient) -> FeedService:
    service: FeedService = client.app.state.service  # type: ignore[attr-defined]
    return service


def new_item(item_id: str, category: str, **fields: Any) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "title": f"title of {item_id}",
        "categories": [category],
        "duration_seconds": 1800.0,
        "price": 0.0,
        **fields,
    }


def relevant_user(service: FeedService, workdir: Workdir, item: dict[str, Any]) -> str:
    """The known user whose embedding scores the item's content vector highest."""
    state = service.versions.loaded
    assert state is not None and state.content_map is not None
    entry = {**item, "created_at_s": time.time()}
    vector = state.content_map.vectors(entry_frame([(item["item_id"], entry)]), datetime.now(UTC))[
        0
    ]
    users = load_dataset(workdir).users.ids.to_list()
    matrix, found = service.store.get_vectors(state.version, USER_EMB, users)
    scores = np.where(found, matrix @ vector, -np.inf)
    return users[int(np.argmax(scores))]


def feed_ids(client: TestClient, user_id: str, k: int = 10) -> list[str]:
    response = client.get("/recommend", params={"user_id": user_id, "k": k})
    assert response.status_code == 200, response.text
    return [entry["item_id"] for entry in response.json()["items"]]


def test_a_posted_item_is_a_candidate_at_once_without_a_publish(
    client: TestClient, fresh_workdir: Workdir
) -> None:
    service = service_of(client)
    state = service.versions.loaded
    assert state is not None and state.content_map is not None
    category = state.content_map.vocabulary[0]
    item = new_item("posted-1", category)
    user = relevant_user(service, fresh_workdir, item)
    before = service.scored_candidates(user, 10)
    assert before is not None and "posted-1" not in before.item_ids

    response = client.post("/items", json=item)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "rejected": 0, "errors": [], "live_updated": True}

    after = service.scored_candidates(user, 10)
    assert after is not None and "posted-1" in after.item_ids
    served = service.live.apply(state)
    row = served.items.get("posted-1")
    assert row is not None and row >= len(state.items)
    assert served.item_table.categories(np.array([row])) == [category]
    assert float(np.abs(served.item_matrix[row]).sum()) > 0  # a content vector, not zeros
    # A feed long enough to hold every unseen item shows it, with a score.
    assert "posted-1" in feed_ids(client, user, k=400)
    # Another worker on the same store follows within one refresh.
    other = FeedService(service.settings, fresh_workdir, service.store)
    try:
        other.versions.preload()
        other.live.sync(lambda: other.versions.loaded)
        cands = other.scored_candidates(user, 10)
        assert cands is not None and "posted-1" in cands.item_ids
    finally:
        other.close()


def test_a_withdrawn_item_leaves_every_feed_at_once(client: TestClient, known_user: str) -> None:
    top = feed_ids(client, known_user)[0]
    cold_user = "never-seen-user"
    popular_top = feed_ids(client, cold_user)[0]

    for item_id in {top, popular_top}:
        response = client.delete(f"/items/{item_id}")
        assert response.status_code == 200, response.text

    assert top not in feed_ids(client, known_user, k=400)
    assert popular_top not in feed_ids(client, cold_user, k=50)
    missing = client.delete("/items/no-such-item")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["message"]


def test_bad_items_are_422_per_field_and_the_good_ones_are_stored(
    client: TestClient, fresh_workdir: Workdir
) -> None:
    state = service_of(client).versions.loaded
    assert state is not None and state.content_map is not None
    known = state.content_map.vocabulary[1]
    batch = [
        new_item("good-1", known),
        {"title": "no id, no categories, no duration, no price"},
        new_item("bad-numbers", known, duration_seconds=-5, price=-1),
        new_item("bad-category", "no-such-category"),
    ]
    response = client.post("/items", json=batch)
    assert response.status_code == 422
    body = response.json()
    assert body["accepted"] == 1 and body["rejected"] == 3
    fields = {(e["index"], e["field"]) for e in body["errors"]}
    assert {(1, "item_id"), (1, "categories"), (1, "duration_seconds"), (1, "price")} <= fields
    assert {(2, "duration_seconds"), (2, "price"), (3, "categories.0")} <= fields
    assert "no-such-category" in next(e["reason"] for e in body["errors"] if e["index"] == 3)
    # The good item is stored: in the catalog's updates and in the store's live items.
    assert read_item_updates(fresh_workdir).get_column("item_id").to_list() == ["good-1"]
    _, live = read_live_items(service_of(client).store)
    assert set(live) == {"good-1"}


def test_the_next_publish_folds_posted_items_in(
    client: TestClient,
    fresh_workdir: Workdir,
    small_settings: Settings,
    known_user: str,
    publish_into: Any,
) -> None:
    state = service_of(client).versions.loaded
    assert state is not None and state.content_map is not None
    category = state.content_map.vocabulary[2]
    assert client.post("/items", json=new_item("folded-1", category)).status_code == 200
    withdrawn = feed_ids(client, known_user)[0]
    assert client.delete(f"/items/{withdrawn}").status_code == 200

    _, items, _ = read_catalog(fresh_workdir)
    assert "folded-1" in items.get_column("item_id").to_list()
    assert withdrawn not in items.get_column("item_id").to_list()

    version = publish_into(fresh_workdir, small_settings)
    served = pl.read_parquet(fresh_workdir.bundles_dir / version / ITEM_IDS_FILE)
    served_ids = set(served.get_column(served.columns[0]).to_list())
    assert "folded-1" in served_ids and withdrawn not in served_ids
    with open_store(small_settings.store, fresh_workdir.store_path) as store:
        _, live = read_live_items(store)
    # The folded item left the live items; the withdrawal stays (a rollback may need it).
    assert "folded-1" not in live and live[withdrawn]["available"] is False
