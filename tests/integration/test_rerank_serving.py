"""The served feed goes through the configured ranker and re-ranking stage (embedded store)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.events.catalog import read_catalog
from feedforge.models.train import train_models
from feedforge.publish.publisher import publish
from feedforge.serving.app import create_app
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


def feed(
    settings: Settings, workdir: Workdir, user: str, k: int = 10, request_id: str | None = None
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"user_id": user, "k": k}
    if request_id is not None:
        params["request_id"] = request_id
    with TestClient(create_app(settings, workdir)) as client:
        response = client.get("/recommend", params=params)
    assert response.status_code == 200, response.text
    assert response.json()["strategy"] == "personalized"
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def with_reranking(settings: Settings, **reranking: Any) -> Settings:
    return Settings(**{**settings.model_dump(), "reranking": reranking})


def test_rules_caps_and_exploration_shape_the_served_feed(
    published_workdir: Workdir, small_settings: Settings, known_user: str
) -> None:
    _, items, _ = read_catalog(published_workdir)
    category = dict(
        zip(items.get_column("item_id"), items.get_column("categories").list.first(), strict=True)
    )
    plain = feed(small_settings, published_workdir, known_user)
    assert all(item["propensity"] == 1.0 for item in plain)
    top, second = plain[0]["item_id"], plain[1]["item_id"]

    # Block the top item and pin the tenth one at slot 0.
    tenth = plain[9]["item_id"]
    ruled = with_reranking(
        small_settings,
        rules=[
            {"action": "block", "item_ids": [top]},
            {"action": "pin", "item_ids": [tenth], "position": 0},
        ],
    )
    shown = [item["item_id"] for item in feed(ruled, published_workdir, known_user)]
    assert top not in shown and shown[0] == tenth and shown[1] == second

    # At most two items per primary category.
    capped = feed(with_reranking(small_settings, category_cap=2), published_workdir, known_user)
    counts: dict[str, int] = {}
    for item in capped:
        counts[category[item["item_id"]]] = counts.get(category[item["item_id"]], 0) + 1
    assert max(counts.values()) <= 2 and len(capped) == 10

    # Softmax exploration: propensities below 1; a request's draw comes from its id (and the
    # seed), so a replay of the request id gives the same feed and other ids other feeds.
    explore = with_reranking(
        small_settings, exploration={"type": "softmax", "temperature": 0.05, "seed": 1}
    )
    first = feed(explore, published_workdir, known_user, request_id="replay-1")
    assert [i["item_id"] for i in first] == [
        i["item_id"] for i in feed(explore, published_workdir, known_user, request_id="replay-1")
    ]
    others = {
        tuple(
            i["item_id"] for i in feed(explore, published_workdir, known_user, request_id=f"r{n}")
        )
        for n in range(4)
    }
    assert len(others | {tuple(i["item_id"] for i in first)}) > 1
    assert all(0 < item["propensity"] <= 1 for item in first)
    assert any(item["propensity"] < 1 for item in first)


@pytest.mark.parametrize(
    "ranker",
    [{"type": "tree"}, {"type": "lightgbm"}, {"type": "dcn"}],
    ids=["tree", "lightgbm", "dcn"],
)
def test_the_configured_ranker_is_trained_published_and_served(
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    known_user: str,
    ranker: dict[str, Any],
) -> None:
    settings = Settings(
        **{
            **small_settings.model_dump(),
            "models": {**small_settings.models.model_dump(), "ranker": ranker},
        }
    )
    workdir = workdir_copy(publish=False)
    saved = train_models(workdir, settings)
    assert ranker["type"] in saved
    with open_store(settings.store, workdir.store_path) as store:
        version = publish(workdir, settings, store)
        meta = store.get_meta(version)
    assert meta is not None and meta["ranker"] == ranker["type"]
    items = feed(settings, workdir, known_user)
    assert len(items) == 10
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True) and all(s >= 0 for s in scores)
    if ranker["type"] == "dcn":  # expected watch seconds, p(click) x E[watch | click]
        assert settings.objective == "watch_time" and max(scores) > 1
    else:  # probabilities
        assert all(s <= 1 for s in scores)
