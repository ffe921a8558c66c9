"""The Redis Cluster store beyond the shared contract (``test_store_contract.py`` runs that
suite against the same real cluster): where its keys land, and a master's failover.

The cluster is real: 3 masters and 3 replicas, each a ``redis-server --cluster-enabled yes``
on free ports, joined by ``redis-cli --cluster create`` (``tests/conftest.py``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from feedforge.config import StoreConfig
from feedforge.errors import StoreUnavailableError
from feedforge.store.factory import open_store
from feedforge.store.keys import USER_EMB, USER_FEAT, Keys
from feedforge.store.redis_cluster import RedisClusterStore

from ...conftest import RedisClusterServers

pytestmark = [pytest.mark.redis, pytest.mark.slow]
T = TypeVar("T")


@pytest.fixture
def store(redis_cluster: RedisClusterServers) -> Iterator[RedisClusterStore]:
    config = StoreConfig(
        type="redis-cluster", redis_url=redis_cluster.url, namespace=f"t-{uuid.uuid4().hex[:8]}"
    )
    opened = open_store(config, Path("unused"))
    assert isinstance(opened, RedisClusterStore)
    yield opened
    opened.close()


def _publish(store: RedisClusterStore, version: str, n_items: int = 300) -> None:
    ids = [f"i{k}" for k in range(n_items)]
    store.put_vectors(version, "item_emb", ids, np.ones((n_items, 4), dtype=np.float32))
    store.put_vectors(version, USER_EMB, ["u1", "u2"], np.ones((2, 4), dtype=np.float32))
    store.put_records(version, USER_FEAT, ["u1", "u2"], [{"n": 1}, {"n": 2}])
    store.put_meta(version, {"version": version})
    store.set_current(version)


def test_a_feed_read_touches_two_nodes_and_items_spread_over_every_master(
    store: RedisClusterStore,
) -> None:
    _publish(store, "v1")
    store.append_history("u1", ["i1", "i2"], max_len=10)
    client = store.client
    assert isinstance(client, RedisCluster)
    keys = store.keys

    def node(key: str) -> str:
        return str(client.nodes_manager.get_node_from_slot(client.keyslot(key)).name)

    control = {node(keys.current()), node(keys.versions()), node(keys.meta("v1"))}
    control |= {node(keys.counts("v1", "profile"))}
    assert len(control) == 1  # the flip, unpublish and counter scripts act on one slot
    user = {node(keys.item("v1", USER_EMB, "u1")), node(keys.item("v1", USER_FEAT, "u1"))}
    user |= {node(keys.history("u1"))}
    assert len(user) == 1  # the user's embedding, record and history: one node
    # So a feed request's read goes to at most 2 nodes, one pipelined round trip each.
    assert len(control | user) <= 2
    items = {node(k) for k in keys.items("v1", "item_emb", [f"i{k}" for k in range(300)])}
    masters = {n.name for n in client.get_primaries()}
    assert items == masters and len(masters) == 3
    read = store.read_user("v1", "u1", 5, vector_kind=USER_EMB, record_kind=USER_FEAT)
    assert read.current == "v1" and read.record == {"n": 1} and read.history == ["i2", "i1"]


def test_keys_are_the_single_redis_names_with_hash_tags() -> None:
    plain, tagged = Keys("ns"), Keys("ns", cluster=True)
    assert tagged.current() == "ff:ns:current:{ns}"
    assert tagged.meta("v1") == "ff:ns:v:v1:meta:{ns}"
    assert tagged.counts("v1", "p") == "ff:ns:v:v1:counts:{ns}:p"
    assert tagged.item("v1", USER_EMB, "u1") == "ff:ns:v:v1:user_emb:{u1}"
    assert tagged.item("v1", "item_emb", "i1") == plain.item("v1", "item_emb", "i1")
    assert tagged.history("u1") == "ff:ns:hist:{u1}"
    # Every key of a version still starts with its prefix (a version is deleted by prefix).
    for key in (tagged.meta("v1"), tagged.counts("v1", "p"), tagged.item("v1", USER_EMB, "u")):
        assert key.startswith(tagged.version_prefix("v1"))


def test_opening_a_cluster_that_does_not_answer_names_it() -> None:
    config = StoreConfig(type="redis-cluster", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(
        StoreUnavailableError, match=re.escape("Redis Cluster at redis://127.0.0.1:1/0")
    ):
        open_store(config, Path("unused"))


def _eventually(call: Callable[[], T], timeout_s: float = 30.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_masters_failover_keeps_the_store_answering(tmp_path: Path) -> None:
    servers = RedisClusterServers(tmp_path)
    servers.start()
    try:
        config = StoreConfig(type="redis-cluster", redis_url=servers.url, socket_timeout_s=1.0)
        store = open_store(config, Path("unused"))
        assert isinstance(store, RedisClusterStore)
        _publish(store, "v1")
        store.append_history("u1", ["i1"], max_len=10)
        client = store.client
        assert isinstance(client, RedisCluster)
        slot = client.keyslot(store.keys.current())
        master = client.nodes_manager.get_node_from_slot(slot)
        servers.kill(int(master.port))
        # The replica is promoted after the node timeout (1 s); until then calls fail
        # (a feed is then answered degraded), and afterwards they answer, with the master's
        # data. Feed reads have a client of their own (no retry): it follows too.
        assert _eventually(store.current_version) == "v1"
        read = _eventually(
            lambda: store.read_user("v1", "u1", 5, vector_kind=USER_EMB, record_kind=USER_FEAT)
        )
        assert read.current == "v1" and read.history == ["i1"]
        store.append_history("u1", ["i2"], max_len=10)
        assert store.get_history("u1", 5) == ["i2", "i1"]
        promoted = client.nodes_manager.get_node_from_slot(slot)
        assert promoted.port != master.port
        store.close()
    finally:
        servers.stop()


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ClusterDownError("The cluster is down"),
        redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
        redis.exceptions.MasterDownError("Link with MASTER is down"),
        redis.exceptions.SlotNotCoveredError("Slot 42 is not covered by the cluster"),
    ],
    ids=["clusterdown", "tryagain", "masterdown", "slot-not-covered"],
)
def test_a_cluster_in_failover_is_unavailable_not_an_error(
    store: RedisClusterStore, error: Exception
) -> None:
    """What a cluster answers while a master fails over is an outage the service degrades
    through (StoreUnavailableError, like a refused connection), not a failed command
    (StoreError, which the API answers 503)."""
    with pytest.raises(StoreUnavailableError, match="unavailable"), store._errors("get_document"):
        raise error
