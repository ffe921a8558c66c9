"""`feedforge batch-score`: top-N of every user into Parquet and, optionally, into the store as
precomputed feeds that the service answers from while they are fresh."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.errors import StoreError
from feedforge.events.log import EventLog
from feedforge.publish.batch import batch_score
from feedforge.serving.app import create_app
from feedforge.store.embedded import EmbeddedStore
from feedforge.store.keys import FEED
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


def with_serving(settings: Settings, **serving: object) -> Settings:
    return Settings(
        **{**settings.model_dump(), "serving": {**settings.serving.model_dump(), **serving}}
    )


def test_batch_score_writes_every_users_top_n_in_chunks(
    workdir_copy: Callable[..., Workdir], small_config: Path, small_settings: Settings
) -> None:
    workdir = workdir_copy()
    out = workdir.root / "out" / "top.parquet"
    result = CliRunner().invoke(
        app,
        [
            "batch-score", "--workdir", str(workdir.root), "--config", str(small_config),
            "--top-n", "7", "--out", str(out), "--chunk-users", "300",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    dataset = load_dataset(workdir)
    assert frame.get_column("user_id").n_unique() == len(dataset.users)
    per_user = frame.group_by("user_id").agg(pl.len(), pl.col("rank"), pl.col("score"))
    assert per_user.get_column("len").max() == 7
    for ranks, scores in zip(per_user["rank"].to_list(), per_user["score"].to_list(), strict=True):
        assert ranks == list(range(1, len(ranks) + 1))
        assert scores == sorted(scores, reverse=True)  # best first
    # Nothing a user already consumed is recommended again.
    consumed = (
        EventLog(workdir.events_dir)
        .scan()
        .filter(pl.col("event_type").is_in(["click", "watch", "like", "purchase", "rating"]))
        .select("user_id", "item_id")
        .unique()
        .collect()
    )
    assert frame.join(consumed, on=["user_id", "item_id"], how="inner").height == 0
    assert set(frame.get_column("item_id")) <= set(dataset.items.ids.to_list())
    assert frame.get_column("version").null_count() == frame.height  # not stored


def test_precomputed_feeds_are_served_while_fresh(
    workdir_copy: Callable[..., Workdir], small_settings: Settings, known_user: str
) -> None:
    workdir = workdir_copy()
    settings = with_serving(small_settings, precomputed=True, precomputed_max_age_s=3600)
    with EmbeddedStore(workdir.store_path) as store:
        result = batch_score(workdir, settings, 20, None, store, chunk_users=500)
        version = store.current_version()
        assert result.version == version and result.rows > 0
        stored = store.get_records(version or "", FEED, [known_user])[0]
    assert stored is not None and len(stored["items"]) == 20

    with TestClient(create_app(settings, workdir)) as client:
        feed = client.get("/recommend", params={"user_id": known_user, "k": 10}).json()
        assert feed["strategy"] == "precomputed" and feed["version"] == version
        assert [i["item_id"] for i in feed["items"]] == stored["items"][:10]
        assert all(i["explanation"] for i in feed["items"])
        # A consumed item leaves the precomputed feed at once.
        top = stored["items"][0]
        event = {
            "event_id": f"batch-{time.time_ns()}", "timestamp": datetime.now(UTC).isoformat(),
            "user_id": known_user, "item_id": top, "event_type": "click",
        }  # fmt: skip
        assert client.post("/events", json=event).status_code == 200
        after = client.get("/recommend", params={"user_id": known_user, "k": 10}).json()
        assert after["strategy"] == "precomputed"
        assert [i["item_id"] for i in after["items"]] == stored["items"][1:11]
        # Asking for more than is stored falls back to the online pipeline.
        more = client.get("/recommend", params={"user_id": known_user, "k": 30}).json()
        assert more["strategy"] == "personalized"

    stale = with_serving(settings, precomputed_max_age_s=1e-6)
    with TestClient(create_app(stale, workdir)) as client:
        feed = client.get("/recommend", params={"user_id": known_user, "k": 10}).json()
        assert feed["strategy"] == "personalized"  # too old: the online pipeline answers


def test_precomputed_feeds_need_the_served_versions_dataset(
    workdir_copy: Callable[..., Workdir], small_settings: Settings
) -> None:
    workdir = workdir_copy()
    with EmbeddedStore(workdir.store_path) as store:
        version = store.current_version()
        assert version is not None
        meta = store.get_meta(version) or {}
        store.put_meta(version, {**meta, "dataset_version": "another-dataset"})
        with pytest.raises(StoreError, match="publish these models first"):
            batch_score(workdir, small_settings, 5, None, store)


def test_precomputed_feeds_go_through_the_business_rules(
    workdir_copy: Callable[..., Workdir], small_settings: Settings, known_user: str
) -> None:
    workdir = workdir_copy()
    settings = with_serving(small_settings, precomputed=True)
    with EmbeddedStore(workdir.store_path) as store:
        batch_score(workdir, settings, 30, None, store)
        stored = store.get_records(store.current_version() or "", FEED, [known_user])[0]
    assert stored is not None
    blocked, pinned = stored["items"][0], stored["items"][-1]
    rules = [
        {"action": "block", "item_ids": [blocked]},
        {"action": "pin", "item_ids": [pinned], "position": 0},
    ]
    ruled = Settings(**{**settings.model_dump(), "reranking": {"rules": rules}})
    with TestClient(create_app(ruled, workdir)) as client:
        feed = client.get("/recommend", params={"user_id": known_user, "k": 10}).json()
    shown = [i["item_id"] for i in feed["items"]]
    assert feed["strategy"] == "precomputed"
    assert blocked not in shown and shown[0] == pinned and len(shown) == 10
