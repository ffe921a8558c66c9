"""The ANN index end to end: published in the bundle, used by the service, exact as fallback."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings, load_settings
from feedforge.datasets.load import load_dataset
from feedforge.index.ann import INDEX_FILE
from feedforge.models.base import EmbeddingRecommender
from feedforge.models.registry import load_recommender
from feedforge.serving.app import create_app
from feedforge.serving.pipeline import FeedService
from feedforge.store.embedded import EmbeddedStore
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration

Consumed = Callable[[Workdir], dict[str, set[str]]]


def published_meta(workdir: Workdir) -> dict[str, Any]:
    with EmbeddedStore(workdir.store_path) as store:
        version = store.current_version()
        assert version is not None
        meta = store.get_meta(version)
    assert meta is not None
    return meta


def service_of(client: TestClient) -> FeedService:
    service: FeedService = client.app.state.service  # type: ignore[attr-defined]
    return service


def assert_contract(client: TestClient, user_id: str, k: int, excluded: set[str]) -> list[str]:
    """The feed API's promise: k distinct items never consumed, by descending score."""
    response = client.get("/recommend", params={"user_id": user_id, "k": k})
    assert response.status_code == 200, response.text
    items = [item["item_id"] for item in response.json()["items"]]
    scores = [item["score"] for item in response.json()["items"]]
    assert response.json()["strategy"] == "personalized"
    assert len(items) == len(set(items)) == k
    assert not set(items) & excluded
    assert scores == sorted(scores, reverse=True)
    return items


def test_a_published_bundle_holds_the_hnsw_index(
    published_workdir: Workdir, small_settings: Settings
) -> None:
    meta = published_meta(published_workdir)
    bundle = Path(meta["bundle"])
    cfg = small_settings.serving
    assert meta["ann"]["kind"] == "hnsw"
    assert (meta["ann"]["m"], meta["ann"]["ef_construction"]) == (
        cfg.ann_m,
        cfg.ann_ef_construction,
    )
    assert (bundle / meta["ann"]["dir"] / INDEX_FILE).is_file()
    ann_manifest = json.loads((bundle / "ann" / "manifest.json").read_text())
    assert ann_manifest["artifact"] == "ann-index"
    assert ann_manifest["counts"]["items"] == meta["n_items"]
    bundle_manifest = json.loads((bundle / "manifest.json").read_text())
    assert bundle_manifest["extra"]["ann"]["kind"] == "hnsw"


def test_the_service_retrieves_through_the_index(
    small_config: Path,
    published_workdir: Workdir,
    consumed_items: Consumed,
) -> None:
    # 300 items: with the default 200 candidates most over-fetches would cover the catalog
    # (an exact search); 30 candidates keep the requests on the HNSW path.
    settings = load_settings(small_config, serving={"candidates": 30})
    consumed = consumed_items(published_workdir)
    # Users with a non-zero embedding: for a zero vector every item ties, and the two searches
    # may break the ties differently.
    user_ids = load_dataset(published_workdir).users.ids.to_list()
    model = load_recommender(
        settings.models.retrieval, published_workdir.model_dir(settings.models.retrieval)
    )
    assert isinstance(model, EmbeddingRecommender)
    norms = np.linalg.norm(model.user_embeddings(), axis=1)
    users = sorted(u for u, n in zip(user_ids, norms, strict=True) if n > 0 and u in consumed)
    users = users[:20]
    assert len(users) == 20
    with TestClient(create_app(settings, published_workdir)) as client:
        service = service_of(client)
        for user in users:
            assert_contract(client, user, 10, consumed[user])
        assert service.versions.current().index.kind == "hnsw"
        methods = [service.recommend(user, 10).retrieval for user in users]
    assert methods.count("hnsw") == len(users), methods

    # On a catalog this small HNSW finds the exact candidates: the same feeds as exact search.
    exact = load_settings(small_config, serving={"candidates": 30, "ann": "exact"})
    with (
        TestClient(create_app(exact, published_workdir)) as exact_client,
        TestClient(create_app(settings, published_workdir)) as hnsw_client,
    ):
        exact_service, hnsw_service = service_of(exact_client), service_of(hnsw_client)
        assert exact_service.versions.current().index.kind == "exact"
        same = 0
        for user in users:
            by_exact = exact_service.recommend(user, 10)
            assert by_exact.retrieval == "exact"
            same += by_exact.item_ids == hnsw_service.recommend(user, 10).item_ids
    assert same >= 0.9 * len(users), same


@pytest.mark.parametrize("k", [10, 250, 500])
def test_feeds_keep_the_contract_when_serving_with_hnsw(
    small_config: Path,
    published_workdir: Workdir,
    known_user: str,
    consumed_items: Consumed,
    k: int,
) -> None:
    """Default settings (200 candidates): for the heaviest user the over-fetch covers this
    small catalog, so the exact search answers; the contract holds either way."""
    settings = load_settings(small_config)
    consumed = consumed_items(published_workdir)[known_user]
    with TestClient(create_app(settings, published_workdir)) as client:
        # The served items: the model's plus content-mapped catalog items (cold_items).
        left = set(service_of(client).versions.current().items.ids.to_list()) - consumed
        items = assert_contract(client, known_user, min(k, len(left)), consumed)
        method = service_of(client).recommend(known_user, k).retrieval
    if k >= len(left):
        assert set(items) == left
    assert method in ("hnsw", "exact-fallback")


def test_a_deleted_index_file_falls_back_to_exact_search(
    small_config: Path,
    fresh_workdir: Workdir,
    known_user: str,
    consumed_items: Consumed,
    caplog: pytest.LogCaptureFixture,
) -> None:
    meta = published_meta(fresh_workdir)
    index_file = Path(meta["bundle"]) / meta["ann"]["dir"] / INDEX_FILE
    index_file.unlink()
    settings = load_settings(small_config, serving={"candidates": 30})
    consumed = consumed_items(fresh_workdir)[known_user]
    with (
        caplog.at_level(logging.WARNING, logger="feedforge.index.ann"),
        TestClient(create_app(settings, fresh_workdir)) as client,
    ):
        for k in (10, 100):
            assert_contract(client, known_user, k, consumed)
        service = service_of(client)
        assert service.versions.current().index.kind == "exact"
        assert service.recommend(known_user, 10).retrieval == "exact"
        health = client.get("/health")
    assert health.status_code == 200, health.text
    assert "ANN index unusable" in caplog.text
    assert str(index_file) in caplog.text


def test_publishing_with_ann_exact_writes_no_graph(
    small_config: Path,
    workdir_copy: Callable[..., Workdir],
    known_user: str,
    consumed_items: Consumed,
) -> None:
    settings = load_settings(small_config, serving={"ann": "exact"})
    workdir = workdir_copy(settings)
    meta = published_meta(workdir)
    assert meta["ann"]["kind"] == "exact"
    assert not (Path(meta["bundle"]) / "ann" / INDEX_FILE).exists()
    # A service configured for HNSW serves such a version with exact search.
    hnsw = load_settings(small_config)
    with TestClient(create_app(hnsw, workdir)) as client:
        assert_contract(client, known_user, 10, consumed_items(workdir)[known_user])
        assert service_of(client).recommend(known_user, 10).retrieval == "exact"
    assert np.isfinite(meta["ann"]["max_norm"])
