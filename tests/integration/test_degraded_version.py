"""A service started with its store down serves the popular list of the store's last current
version (remembered per store in the work directory), not the newest bundle on disk: not one
that was rolled back, nor one another store published into the shared bundle directory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.publish.publisher import publish
from feedforge.publish.versions import rollback
from feedforge.serving.app import create_app
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

from ..conftest import RedisServer
from .test_degraded import redis_settings

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def test_the_fallback_serves_the_last_current_version_of_its_own_store(
    own_redis: RedisServer,
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    known_user: str,
) -> None:
    settings = redis_settings(small_settings, own_redis.url)
    workdir = workdir_copy(publish=False)
    with open_store(settings.store, workdir.store_path) as store:
        v1 = publish(workdir, settings, store)
        v2 = publish(workdir, settings, store)
        assert rollback(workdir, store) == (v2, v1)
        popular_v1 = store.get_meta(v1)["popular"]  # type: ignore[index]
    # Another deployment (namespace) of the same Redis publishes into the same bundles.
    other = Settings(
        **{
            **settings.model_dump(),
            "store": {**settings.store.model_dump(), "namespace": "other"},
        }
    )
    with open_store(other.store, workdir.store_path) as store:
        v3 = publish(workdir, other, store)
    assert v1 < v2 < v3
    own_redis.stop()
    with TestClient(create_app(settings, workdir)) as client:
        answer = client.get("/recommend", params={"user_id": known_user, "k": 7})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["degraded"] is True
    assert body["version"] == v1
    assert [item["item_id"] for item in body["items"]] == popular_v1[:7]

    # And the other store's service, started with Redis down, serves its own version.
    with TestClient(create_app(other, workdir)) as client:
        assert client.get("/recommend", params={"user_id": known_user}).json()["version"] == v3
