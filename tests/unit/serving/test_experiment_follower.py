"""A worker's experiment follower keeps serving its last definitions while the store is down,
says so once per outage, and picks up changes when the store is back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from feedforge.config import Settings
from feedforge.experiments.registry import ExperimentRegistry
from feedforge.serving.experiments import ExperimentFollower
from feedforge.store.redis import RedisStore
from feedforge.workdir import Workdir

from ...conftest import RedisServer

pytestmark = pytest.mark.redis

AB = {
    "id": "ab",
    "variants": [
        {"name": "a", "weight": 0.5},
        {"name": "b", "weight": 0.5, "overrides": {"candidates": 50}},
    ],
}


def test_the_last_definitions_survive_a_store_outage(
    own_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_redis.url
    store = RedisStore.from_url(url, namespace="follow", socket_timeout_s=0.2)
    registry = ExperimentRegistry(store)
    registry.create(AB)
    registry.start("ab")
    follower = ExperimentFollower(store, Settings(), Workdir.at(tmp_path), lambda: None)
    follower.refresh()
    before = [follower.assign(f"u{n}").assignments[0].variant.name for n in range(50)]

    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="feedforge.serving"):
        for _ in range(3):
            follower.refresh()
    warnings = [r for r in caplog.records if "could not read the experiments" in r.message]
    assert len(warnings) == 1
    during = [follower.assign(f"u{n}").assignments[0].variant.name for n in range(50)]
    assert during == before

    own_redis.start()
    ExperimentRegistry(store).stop("ab")
    follower.refresh()
    assert follower.assign("u1").assignments == []
    store.close()
