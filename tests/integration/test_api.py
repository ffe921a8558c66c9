"""The feed API over a really published work directory (embedded store).

Every client is a ``TestClient`` used as a context manager, so the app's lifespan opens the
store exactly as ``feedforge serve`` does.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings, load_settings
from feedforge.datasets.load import load_dataset
from feedforge.errors import ArtifactError, FeedforgeError
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.models.base import EmbeddingRecommender
from feedforge.models.registry import load_recommender
from feedforge.serving.app import create_app, create_app_from_env
from feedforge.serving.feedlog import read_feed_log
from feedforge.store.embedded import EmbeddedStore
from feedforge.store.keys import ITEM_FEAT, USER_FEAT
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration

Consumed = Callable[[Workdir], dict[str, set[str]]]
EventFactory = Callable[..., dict[str, Any]]


def serve(settings: Settings, workdir: Workdir) -> TestClient:
    return TestClient(create_app(settings, workdir))


def current_version(workdir: Workdir) -> str | None:
    with EmbeddedStore(workdir.store_path) as store:
        return store.current_version()


def get_feed(client: TestClient, user_id: str, k: int = 10) -> dict[str, Any]:
    response = client.get("/recommend", params={"user_id": user_id, "k": k})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def item_ids(feed: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in feed["items"]]


def assert_well_formed(feed: dict[str, Any], k: int, excluded: set[str]) -> None:
    items = item_ids(feed)
    scores = [item["score"] for item in feed["items"]]
    assert len(items) == k
    assert len(set(items)) == k, "duplicate items in the feed"
    assert not set(items) & excluded, f"consumed items recommended: {set(items) & excluded}"
    assert scores == sorted(scores, reverse=True), scores
    assert all(np.isfinite(scores))


def served_items(workdir: Workdir) -> set[str]:
    """Every catalog item: a version serves the retrieval model's items plus, with
    content-mapped vectors, the catalog items it has none for (serving.cold_items)."""
    _, items, _ = read_catalog(workdir)
    return set(items.get_column("item_id").to_list())


def stored_events(workdir: Workdir, event_ids: list[str]) -> pl.DataFrame:
    return EventLog(workdir.events_dir).scan().filter(pl.col("event_id").is_in(event_ids)).collect()


# -- /recommend -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [10, 150, 250])
def test_known_user_gets_k_distinct_unconsumed_items_by_descending_score(
    client: TestClient,
    published_workdir: Workdir,
    small_settings: Settings,
    known_user: str,
    consumed_items: Consumed,
    k: int,
) -> None:
    consumed = consumed_items(published_workdir)[known_user]
    version = current_version(published_workdir)
    assert version is not None
    catalog = served_items(published_workdir)
    assert len(catalog - consumed) >= k > 0
    if k == 250:  # more than the retrieval stage's default candidates
        assert k > small_settings.serving.candidates

    # The published `seen` list is exactly what the raw log says the user consumed.
    with EmbeddedStore(published_workdir.store_path) as store:
        record = store.get_records(version, USER_FEAT, [known_user])[0]
    assert record is not None
    assert set(record["seen"]) == consumed

    feed = get_feed(client, known_user, k)
    assert feed["user_id"] == known_user
    assert feed["strategy"] == "personalized"
    assert feed["version"] == version
    assert_well_formed(feed, k, consumed)
    assert set(item_ids(feed)) <= catalog


def test_k_above_what_is_left_returns_every_unconsumed_item(
    client: TestClient, published_workdir: Workdir, known_user: str, consumed_items: Consumed
) -> None:
    catalog = served_items(published_workdir)
    left = catalog - consumed_items(published_workdir)[known_user]
    assert len(left) < 500
    feed = get_feed(client, known_user, 500)
    assert feed["strategy"] == "personalized"
    assert_well_formed(feed, len(left), catalog - left)
    assert set(item_ids(feed)) == left

    # The popularity feed ranks the items with training interactions.
    trained = set(load_dataset(published_workdir).items.ids.to_list())
    popular = get_feed(client, "it-nobody-at-all", 500)
    assert popular["strategy"] == "popular"
    assert_well_formed(popular, len(trained), set())


def test_excluding_consumed_items_is_not_vacuous(
    published_workdir: Workdir, known_user: str, consumed_items: Consumed
) -> None:
    """Guard for the test above: without the exclusion, consumed items would top the feed."""
    dataset = load_dataset(published_workdir)
    als = load_recommender("als", published_workdir.model_dir("als"))
    assert isinstance(als, EmbeddingRecommender)
    user = dataset.users.get(known_user)
    assert user is not None
    scores = als.item_embeddings() @ als.user_embeddings()[user]
    top10 = set(dataset.items.id_of(np.argsort(-scores)[:10]))
    assert top10 & consumed_items(published_workdir)[known_user]


def test_unknown_user_gets_the_popular_feed(
    client: TestClient, published_workdir: Workdir, new_user_id: str
) -> None:
    version = current_version(published_workdir)
    assert version is not None
    with EmbeddedStore(published_workdir.store_path) as store:
        meta = store.get_meta(version)
    assert meta is not None

    feed = get_feed(client, new_user_id, 10)
    assert feed["strategy"] == "popular"
    assert feed["version"] == version
    assert item_ids(feed) == meta["popular"][:10]
    assert_well_formed(feed, 10, set())


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"user_id": "u000000", "k": 0}, "k"),
        ({"user_id": "u000000", "k": 501}, "k"),
        ({"user_id": "u000000", "k": "ten"}, "k"),
        ({"k": 10}, "user_id"),
        ({"user_id": "", "k": 10}, "user_id"),
    ],
    ids=["k=0", "k=501", "k-not-int", "no-user_id", "empty-user_id"],
)
def test_bad_recommend_parameters_are_422(
    client: TestClient, params: dict[str, Any], bad: str
) -> None:
    response = client.get("/recommend", params=params)
    assert response.status_code == 422, response.text
    # The API's one error shape (issue 14), not FastAPI's {"detail": [{"loc": ...}]}.
    body = response.json()
    assert body["error"] == "ValidationError" and "detail" not in body
    assert [err["field"] for err in body["errors"]] == [bad]


# -- events change feeds ----------------------------------------------------------------------


def test_watching_the_top_item_removes_it_and_changes_the_feed(
    fresh_workdir: Workdir,
    small_settings: Settings,
    known_user: str,
    consumed_items: Consumed,
    make_event: EventFactory,
) -> None:
    consumed = consumed_items(fresh_workdir)[known_user]
    with serve(small_settings, fresh_workdir) as client:
        before = get_feed(client, known_user)
        top = item_ids(before)[0]
        event = make_event(user_id=known_user, item_id=top)
        response = client.post("/events", json=event)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1

        after = get_feed(client, known_user)
    assert after["strategy"] == "personalized"
    assert top not in item_ids(after)
    assert item_ids(after) != item_ids(before)
    assert_well_formed(after, 10, consumed | {top})
    assert stored_events(fresh_workdir, [event["event_id"]]).height == 1


def test_a_new_user_with_events_gets_a_history_based_feed(
    client: TestClient, published_workdir: Workdir, make_event: EventFactory
) -> None:
    items = pl.read_parquet(published_workdir.items_path).with_columns(
        pl.col("categories").list.first().alias("category")
    )
    known_items = set(load_dataset(published_workdir).items.ids.to_list())
    by_category = (
        items.filter(pl.col("item_id").is_in(known_items))
        .group_by("category")
        .agg(pl.col("item_id").sort().head(3))
        .filter(pl.col("item_id").list.len() == 3)
        .sort("category")
    )
    (cat_a, items_a), (cat_b, items_b) = by_category.head(2).iter_rows()
    popular = item_ids(get_feed(client, "it-nobody-at-all"))

    feeds = {}
    for name, watched in (("a", items_a), ("b", items_b)):
        user = f"it-new-{name}-{datetime.now(UTC).timestamp()}"
        assert get_feed(client, user)["strategy"] == "popular"
        events = [
            make_event(user_id=user, item_id=item_id, event_type=kind, watch_seconds=ws)
            for item_id, (kind, ws) in zip(
                watched, [("watch", 300.0), ("click", None), ("like", None)], strict=True
            )
        ]
        response = client.post("/events", json=events)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 3
        feed = get_feed(client, user)
        assert feed["strategy"] == "personalized", (cat_a, cat_b)
        assert_well_formed(feed, 10, set(watched))
        feeds[name] = item_ids(feed)
    # History-based: different histories give different feeds, neither the popular one.
    assert feeds["a"] != feeds["b"]
    assert popular not in (feeds["a"], feeds["b"])


# -- /events ingestion and validation ---------------------------------------------------------


def test_post_a_single_event_object(
    client: TestClient, published_workdir: Workdir, new_user_id: str, make_event: EventFactory
) -> None:
    event = make_event(user_id=new_user_id, item_id="i000003", watch_seconds=42.5)
    response = client.post("/events", json=event)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "errors": [],
        "history_updated": True,
    }
    row = stored_events(published_workdir, [event["event_id"]]).row(0, named=True)
    assert (row["user_id"], row["item_id"], row["event_type"], row["watch_seconds"]) == (
        new_user_id,
        "i000003",
        "watch",
        42.5,
    )


def test_post_a_list_of_events(
    client: TestClient, published_workdir: Workdir, new_user_id: str, make_event: EventFactory
) -> None:
    events = [
        make_event(user_id=new_user_id, item_id="i000004", event_type="impression"),
        make_event(user_id=new_user_id, item_id="i000004", event_type="click"),
        make_event(user_id=new_user_id, item_id="i000004", event_type="purchase", price=1.99),
        make_event(user_id=new_user_id, item_id="i000005", event_type="rating", value=4.5),
    ]
    response = client.post("/events", json=events)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 4
    stored = stored_events(published_workdir, [e["event_id"] for e in events])
    assert sorted(stored.get_column("event_type").to_list()) == sorted(
        ["impression", "click", "purchase", "rating"]
    )


def test_a_batch_of_many_users_updates_every_history_before_the_answer(
    client: TestClient, published_workdir: Workdir, make_event: EventFactory
) -> None:
    # More users than one pending-history flush of the feed path writes (1,000).
    users = [f"many-{uuid.uuid4().hex[:6]}-{k}" for k in range(1_500)]
    events = [make_event(user_id=u, item_id="i000004", event_type="click") for u in users]
    response = client.post("/events", json=events)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1_500 and response.json()["history_updated"] is True
    with EmbeddedStore(published_workdir.store_path) as store:  # as another worker would read
        assert store.get_histories([users[0], users[-1]], 5) == [["i000004"], ["i000004"]]


def test_a_batch_with_bad_events_is_422_and_keeps_the_good_ones(
    client: TestClient, published_workdir: Workdir, new_user_id: str, make_event: EventFactory
) -> None:
    good = [make_event(user_id=new_user_id), make_event(user_id=new_user_id, event_type="click")]
    batch = [
        good[0],
        make_event(user_id=None),
        good[1],
        make_event(user_id=new_user_id, watch_seconds=-1.0),
        make_event(user_id=new_user_id, event_type="teleport"),
    ]
    response = client.post("/events", json=batch)
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 0, 3)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (1, "user_id"),
        (3, "watch_seconds"),
        (4, "event_type"),
    ]
    assert all(e["reason"] for e in body["errors"])
    stored = stored_events(published_workdir, [e["event_id"] for e in batch])
    assert sorted(stored.get_column("event_id").to_list()) == sorted(e["event_id"] for e in good)


def _future() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"item_id": None}, "item_id", "required"),
        ({"event_id": None}, "event_id", "required"),
        ({"user_id": 123}, "user_id", "string"),
        ({"watch_seconds": "long"}, "watch_seconds", "number"),
        ({"timestamp": "yesterday"}, "timestamp", "datetime"),
        ({"event_type": "teleport"}, "event_type", "watch"),
        ({"timestamp": _future}, "timestamp", "future"),
        ({"watch_seconds": -5.0}, "watch_seconds", "greater than or equal to 0"),
        ({"event_type": "purchase", "price": -0.99}, "price", "greater than or equal to 0"),
        ({"timestamp": "2026-01-05T10:00:00"}, "timestamp", "timezone"),
        ({"watch_seconds": None}, "watch_seconds", "required"),
        ({"event_type": "purchase"}, "price", "required"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ],
    ids=[
        "missing-item_id",
        "missing-event_id",
        "user_id-not-string",
        "watch_seconds-not-number",
        "timestamp-not-datetime",
        "unknown-event_type",
        "future-timestamp",
        "negative-watch_seconds",
        "negative-price",
        "naive-timestamp",
        "watch-without-watch_seconds",
        "purchase-without-price",
        "unknown-field",
    ],
)
def test_an_invalid_event_is_rejected_naming_the_field(
    client: TestClient,
    published_workdir: Workdir,
    make_event: EventFactory,
    new_user_id: str,
    fields: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    fields = {k: v() if callable(v) else v for k, v in fields.items()}
    event = make_event(**{"user_id": new_user_id, **fields})
    response = client.post("/events", json=event)
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (0, 1)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(0, field)]
    assert reason.lower() in body["errors"][0]["reason"].lower()
    if "event_id" in event:
        assert stored_events(published_workdir, [event["event_id"]]).is_empty()


def test_a_resent_event_is_stored_once(
    client: TestClient, published_workdir: Workdir, new_user_id: str, make_event: EventFactory
) -> None:
    event = make_event(user_id=new_user_id)
    other = make_event(user_id=new_user_id, event_type="click")

    first = client.post("/events", json=event).json()
    assert (first["accepted"], first["duplicates"]) == (1, 0)
    again = client.post("/events", json=event)
    assert again.status_code == 200, again.text
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 1)
    mixed = client.post("/events", json=[event, other, other]).json()
    assert (mixed["accepted"], mixed["duplicates"]) == (1, 2)

    stored = stored_events(published_workdir, [event["event_id"], other["event_id"]])
    assert sorted(stored.get_column("event_id").to_list()) == sorted(
        [event["event_id"], other["event_id"]]
    )


# -- health and docs --------------------------------------------------------------------------


def test_health_is_200_when_a_version_is_published(
    client: TestClient, published_workdir: Workdir
) -> None:
    for path in ("/health", "/health/ready"):
        response = client.get(path)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ok"
        assert body["version"] == current_version(published_workdir)
        assert body["checks"]["store"] == "ok"


def test_the_current_version_is_loaded_before_the_first_request(
    published_workdir: Workdir, small_settings: Settings
) -> None:
    # feedforge serve opens a worker's socket only after the lifespan start-up: a request
    # must never wait on the version load (seconds at a million items).
    with serve(small_settings, published_workdir) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        loaded = service.versions.loaded
        assert loaded is not None
        assert loaded.version == current_version(published_workdir)
        assert loaded.items._dict is not None, "the id lookups are built at load"
        served = client.get("/metrics").text
        assert f'feedforge_serving_version_info{{version="{loaded.version}"}} 1.0' in served


def test_a_swapped_out_version_is_freed_despite_the_gc_freeze(
    published_workdir: Workdir, small_settings: Settings
) -> None:
    import gc
    import weakref

    from feedforge.serving.pipeline import FeedService

    with EmbeddedStore(published_workdir.store_path) as store:
        service = FeedService(small_settings, published_workdir, store)
        versions = service.versions
        version = versions.preload()
        assert version is not None
        old = weakref.ref(versions._loaded)
        old_index = weakref.ref(versions._loaded.index)  # type: ignore[union-attr]
        # A version reachable only from a reference cycle (a deep ranker's modules, say) that
        # the load froze: freezing alone would keep it for good.
        cycle: list[Any] = [versions._loaded]
        cycle.append(cycle)
        gc.freeze()
        del cycle
        versions._loaded = None  # the next load is a swap
        assert versions.current().version == version
        assert old() is None and old_index() is None
        service.close()
    gc.unfreeze()  # leave the test process as it was


def test_health_is_503_before_anything_is_published(
    tmp_path: Path, small_settings: Settings, make_event: EventFactory
) -> None:
    workdir = Workdir.at(tmp_path / "fresh")
    with serve(small_settings, workdir) as client:
        for path in ("/health", "/health/ready"):
            response = client.get(path)
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["store"] == "ok"
            assert "nothing is published" in body["checks"]["version"]
        assert client.get("/health/live").status_code == 200

        feed = client.get("/recommend", params={"user_id": "u000000"})
        assert feed.status_code == 503, feed.text
        assert feed.json()["error"] == "NotPublishedError"
        assert f"feedforge publish --workdir {workdir.root}" in feed.json()["message"]

        # Ingestion needs no published version: events are logged before the first publish.
        event = make_event(user_id="u000000")
        posted = client.post("/events", json=event)
        assert posted.status_code == 200, posted.text
        assert stored_events(workdir, [event["event_id"]]).height == 1


def test_an_unwritable_event_log_is_a_503_logged_with_its_path(
    tmp_path: Path,
    small_settings: Settings,
    make_event: EventFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # E.g. a container user who may not write the mounted work directory: a clear 503 the
    # client retries, not an internal error; the path goes to the service's log, not the client.
    workdir = Workdir.at(tmp_path / "fresh")
    workdir.events_dir.parent.mkdir(parents=True, exist_ok=True)
    workdir.events_dir.write_text("a file where the log directory should be")
    with caplog.at_level(logging.ERROR), serve(small_settings, workdir) as client:
        posted = client.post("/events", json=make_event(user_id="u000000"))
    assert posted.status_code == 503, posted.text
    body = posted.json()
    assert body["error"] == "EventLogError"
    assert body["stored"] == 0
    assert "re-send the batch" in body["message"]
    assert str(tmp_path) not in posted.text and "path" not in body
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(workdir.events_dir) in r.getMessage() for r in logged), logged


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_health_is_503_when_redis_is_unreachable(
    tmp_path: Path, small_config: Path, make_event: EventFactory
) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    settings = load_settings(
        small_config, store={"type": "redis", "redis_url": url, "socket_timeout_s": 0.2}
    )
    with serve(settings, Workdir.at(tmp_path / "w")) as client:
        health = client.get("/health")
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "unavailable"
        assert health.json()["checks"]["store"] == "unreachable"
        assert client.get("/health/live").status_code == 200

        # Nothing was ever published here: no fallback to answer from.
        feed = client.get("/recommend", params={"user_id": "u000000"})
        assert feed.status_code == 503, feed.text
        assert feed.json()["error"] == "StoreUnavailableError"
        assert "no published version of it is remembered" in feed.json()["message"]
        assert str(tmp_path) not in feed.text  # no server path reaches the client
        # Events are still stored durably; the live histories wait for the store.
        event = make_event()
        posted = client.post("/events", json=event)
        assert posted.status_code == 200, posted.text
        assert posted.json()["accepted"] == 1 and posted.json()["history_updated"] is False
        assert stored_events(Workdir.at(tmp_path / "w"), [event["event_id"]]).height == 1


def test_live_health_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()

    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert "get" in spec["paths"]["/recommend"]
    params = {p["name"] for p in spec["paths"]["/recommend"]["get"]["parameters"]}
    assert {"user_id", "k"} <= params
    body = spec["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    refs = _refs(body["schema"])
    assert "#/components/schemas/Event" in refs
    event = spec["components"]["schemas"]["Event"]
    assert {"event_id", "timestamp", "user_id", "item_id", "event_type"} <= set(event["required"])
    assert {"watch_seconds", "price", "value", "context"} <= set(event["properties"])
    # Every reference in the document resolves (the Event schema's own $defs were moved in).
    for ref in _refs(spec):
        name = ref.removeprefix("#/components/schemas/")
        assert name in spec["components"]["schemas"], ref


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def test_the_app_factory_of_feedforge_serve_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, published_workdir: Workdir, small_config: Path
) -> None:
    monkeypatch.setenv("FEEDFORGE_WORKDIR", str(published_workdir.root))
    monkeypatch.setenv("FEEDFORGE_CONFIG", str(small_config))
    monkeypatch.setenv("FEEDFORGE_SERVING__HISTORY_LENGTH", "7")
    app = create_app_from_env()
    with TestClient(app) as client:
        assert client.get("/health").json()["version"] == current_version(published_workdir)
        service = client.app.state.service  # type: ignore[attr-defined]
        assert service.settings.simulator.n_users == 1000  # from the YAML file
        assert service.settings.serving.history_length == 7  # from the environment

    monkeypatch.delenv("FEEDFORGE_WORKDIR")
    with pytest.raises(FeedforgeError, match="FEEDFORGE_WORKDIR"):
        create_app_from_env()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of a Prometheus exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_candidates_missing_from_the_store_get_defaults_and_are_counted(
    workdir_copy: Callable[..., Workdir], small_settings: Settings, known_user: str
) -> None:
    """Bad input: item feature records gone from the online store -> the feed is still
    served (documented default features), and /metrics counts every defaulted candidate."""
    workdir = workdir_copy()
    with EmbeddedStore(workdir.store_path) as store:
        version = store.current_version()
        assert version is not None
        prefix = store.keys.item_prefix(version, ITEM_FEAT)
    with sqlite3.connect(workdir.store_path) as conn:  # the embedded store's own file
        deleted = conn.execute("DELETE FROM kv WHERE key LIKE ?", (prefix + "%",)).rowcount
    assert deleted > 0
    with serve(small_settings, workdir) as test_client:
        before = test_client.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        assert metric(before.text, "feedforge_missing_features_total", 'kind="item"') == 0
        feed = get_feed(test_client, known_user)
        assert len(feed["items"]) == 10 and feed["strategy"] == "personalized"
        text = test_client.get("/metrics").text
    candidates = small_settings.serving.candidates
    assert metric(text, "feedforge_missing_features_total", 'kind="item"') >= candidates
    assert metric(text, "feedforge_feeds_total", 'strategy="personalized"') == 1
    assert metric(text, "feedforge_requests_total", 'endpoint="/recommend",status="200"') == 1
    for stage in ("read", "retrieve", "features", "score", "rerank"):
        assert metric(text, "feedforge_stage_seconds_count", f'stage="{stage}"') == 1
    assert metric(text, "feedforge_serving_version_info", f'version="{version}"') == 1


def test_write_endpoints_need_the_api_key_when_one_is_set(
    published_workdir: Workdir,
    small_settings: Settings,
    new_user_id: str,
    make_event: EventFactory,
) -> None:
    key = "k" * 32
    settings = Settings(
        **{
            **small_settings.model_dump(),
            "serving": {**small_settings.serving.model_dump(), "api_key": key},
        }
    )
    event = make_event(user_id=new_user_id)
    with serve(settings, published_workdir) as client:
        missing = client.post("/events", json=event)
        assert missing.status_code == 401 and missing.json()["error"] == "AuthError"
        wrong = client.post("/events", json=event, headers={"X-API-Key": "x" * 32})
        assert wrong.status_code == 401 and "wrong API key" in wrong.json()["message"]
        assert stored_events(published_workdir, [event["event_id"]]).height == 0
        ok = client.post("/events", json=event, headers={"X-API-Key": key})
        assert ok.status_code == 200 and ok.json()["accepted"] == 1
        # Reads stay open.
        assert client.get("/recommend", params={"user_id": new_user_id}).status_code == 200
        schema = client.get("/openapi.json").json()
        assert "WriteApiKey" in schema["components"]["securitySchemes"]


def test_production_refuses_to_start_without_an_api_key(
    published_workdir: Workdir, small_settings: Settings
) -> None:
    settings = Settings(
        **{
            **small_settings.model_dump(),
            "serving": {**small_settings.serving.model_dump(), "environment": "production"},
        }
    )
    with pytest.raises(FeedforgeError, match=r"serving\.api_key is required"):
        create_app(settings, published_workdir)


def test_oversized_bodies_get_413_before_being_read(
    published_workdir: Workdir, small_settings: Settings, make_event: EventFactory
) -> None:
    settings = Settings(
        **{
            **small_settings.model_dump(),
            "serving": {**small_settings.serving.model_dump(), "max_request_bytes": 4096},
        }
    )
    events = [make_event(user_id="it-size-limit") for _ in range(100)]  # ~20 KB
    with serve(settings, published_workdir) as client:
        response = client.post("/events", json=events)
        assert response.status_code == 413
        assert response.json()["error"] == "PayloadTooLargeError"
        assert "max_request_bytes = 4096" in response.json()["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            body = json.dumps(events).encode()
            for start in range(0, len(body), 1024):
                yield body[start : start + 1024]

        streamed = client.post(
            "/events", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413, streamed.text
        small = client.post("/events", json=events[:1])
        assert small.status_code == 200
    ids = [e["event_id"] for e in events[1:]]
    assert stored_events(published_workdir, ids).height == 0


def test_every_served_feed_is_logged_with_its_request_id(
    workdir_copy: Callable[..., Workdir], small_settings: Settings, known_user: str
) -> None:
    workdir = workdir_copy()
    with serve(small_settings, workdir) as client:
        mine = client.get(
            "/recommend", params={"user_id": known_user, "k": 5, "request_id": "req-1"}
        ).json()
        theirs = client.get("/recommend", params={"user_id": "nobody-at-all"}).json()
        bad = client.get("/recommend", params={"user_id": known_user, "request_id": "a b"})
        assert bad.status_code == 422
    assert mine["request_id"] == "req-1" and len(theirs["request_id"]) == 32
    log = read_feed_log(workdir.feedlog_dir)
    assert log.get_column("request_id").to_list() == ["req-1", theirs["request_id"]]
    first = log.row(0, named=True)
    assert first["user_id"] == known_user and first["version"] == mine["version"]
    assert first["items"] == [item["item_id"] for item in mine["items"]]
    assert first["scores"] == pytest.approx([item["score"] for item in mine["items"]])
    assert first["propensities"] == [item["propensity"] for item in mine["items"]]
    assert first["strategy"] == "personalized" and first["degraded"] is False
    assert log.row(1, named=True)["strategy"] == "popular"

    broken = next(workdir.feedlog_dir.glob("feeds-*.jsonl"))
    broken.write_text(broken.read_text() + "{not json\n")
    with pytest.raises(FeedforgeError, match=rf"{broken}:3: not a JSON feed record"):
        read_feed_log(workdir.feedlog_dir)


def test_a_failing_feed_log_never_fails_the_request(
    workdir_copy: Callable[..., Workdir], small_settings: Settings, known_user: str
) -> None:
    workdir = workdir_copy()
    workdir.feedlog_dir.write_text("a file where the log directory should be")
    with serve(small_settings, workdir) as client:
        assert client.get("/recommend", params={"user_id": known_user}).status_code == 200
        text = client.get("/metrics").text
    assert metric(text, "feedforge_feed_log_errors_total") == 1


def test_a_server_error_tells_the_client_no_server_path_and_logs_it(
    tmp_path: Path, small_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # One handler answers every FeedforgeError: an artifact fault is the operator's to fix;
    # the client learns what failed and the command, the log says where.
    app = create_app(small_settings, Workdir.at(tmp_path / "w"))
    missing = tmp_path / "w" / "bundles" / "v1" / "item_ids.parquet"

    def broken() -> None:
        raise ArtifactError(missing, "missing serving bundle file", "feedforge publish")

    app.add_api_route("/broken", broken)
    with caplog.at_level(logging.ERROR), TestClient(app) as client:
        answer = client.get("/broken")
    assert answer.status_code == 500, answer.text
    assert answer.json()["error"] == "ArtifactError"
    assert "feedforge publish" in answer.json()["message"]
    assert str(tmp_path) not in answer.text
    assert any(str(missing) in r.getMessage() for r in caplog.records), caplog.records
