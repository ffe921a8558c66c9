"""The contract every online-store backend passes (embedded SQLite and Redis alike).

Each test runs once per backend through the ``backend`` fixture. Tests that inspect what was
really written use ``backend.raw_keys`` (an SQL query on the file / a Redis ``SCAN``), not the
store's own reads.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from feedforge.config import StoreConfig
from feedforge.errors import StoreConflictError, StoreError, StoreUnavailableError, ValidationError
from feedforge.store.base import OnlineStore
from feedforge.store.embedded import EmbeddedStore
from feedforge.store.factory import open_store
from feedforge.store.keys import Keys, glob_pattern
from feedforge.store.redis import RedisStore
from feedforge.store.redis_cluster import RedisClusterStore


@dataclass
class Backend:
    """Opens stores on one backing store (a file or a Redis namespace) and inspects it."""

    name: str
    namespace: str
    opener: Callable[[str], OnlineStore]
    raw_keys: Callable[[str], list[str]]
    opened: list[OnlineStore] = field(default_factory=list)

    def open(self, namespace: str | None = None) -> OnlineStore:
        """A new store object on the same data (like another process would open)."""
        store = self.opener(namespace or self.namespace)
        self.opened.append(store)
        return store


@pytest.fixture(
    params=[
        pytest.param("embedded", id="embedded"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param(
            "redis-cluster", id="redis-cluster", marks=[pytest.mark.redis, pytest.mark.slow]
        ),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        path = tmp_path / "store.sqlite3"

        def raw_sqlite_keys(prefix: str) -> list[str]:
            with sqlite3.connect(path) as conn:
                rows = conn.execute(
                    "SELECT key FROM kv WHERE substr(key, 1, length(?)) = ?", (prefix, prefix)
                ).fetchall()
            return sorted(key for (key,) in rows)

        made = Backend(
            "embedded",
            "test",
            lambda ns: EmbeddedStore(path, namespace=ns, write_chunk=1_000),
            raw_sqlite_keys,
        )
    elif request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster_client = RedisCluster.from_url(cluster.url, decode_responses=False)
        namespace = f"test-{uuid.uuid4().hex}"

        def raw_cluster_keys(prefix: str) -> list[str]:
            keys = cluster_client.scan_iter(match=glob_pattern(prefix))
            return sorted({k.decode() for k in keys})

        made = Backend(
            "redis-cluster",
            namespace,
            lambda ns: RedisClusterStore.from_url(cluster.url, namespace=ns, socket_timeout_s=2.0),
            raw_cluster_keys,
        )
        yield made
        for store in made.opened:
            store.close()
        for key in cluster_client.scan_iter(match=glob_pattern(Keys(namespace).prefix)):
            cluster_client.unlink(key)
        cluster_client.close()
        return
    else:
        url: str = request.getfixturevalue("redis_url")
        client: redis.Redis = request.getfixturevalue("redis_client")
        namespace: str = request.getfixturevalue("redis_namespace")

        def raw_redis_keys(prefix: str) -> list[str]:
            # SCAN may return a key more than once (while Redis rehashes): count each once.
            return sorted({k.decode() for k in client.scan_iter(match=glob_pattern(prefix))})

        made = Backend(
            "redis",
            namespace,
            lambda ns: RedisStore.from_url(url, namespace=ns, socket_timeout_s=2.0),
            raw_redis_keys,
        )
    yield made
    for store in made.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> OnlineStore:
    return backend.open()


def publish(store: OnlineStore, version: str, n: int = 5, dim: int = 4) -> np.ndarray:
    """Write a small complete version (vectors, records, meta); return its item vectors."""
    ids = [f"i{k}" for k in range(n)]
    vectors = np.arange(n * dim, dtype=np.float32).reshape(n, dim) + 0.25
    store.put_vectors(version, "item_emb", ids, vectors)
    store.put_vectors(version, "user_emb", ["u0", "u1"], vectors[:2] * -1)
    store.put_records(version, "item_feat", ids, [{"id": i, "rank": k} for k, i in enumerate(ids)])
    store.put_meta(version, {"version": version, "n_items": n})
    return vectors


# -- vectors and records ----------------------------------------------------------------------
def test_vectors_round_trip_exactly(store: OnlineStore) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 8))  # float64 in, float32 out
    store.put_vectors("v1", "item_emb", ["a", "b", "c"], vectors)

    got, found = store.get_vectors("v1", "item_emb", ["c", "missing", "a"])

    assert got.shape == (3, 8)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(found, [True, False, True])
    np.testing.assert_array_equal(got[0], vectors[2].astype(np.float32))
    np.testing.assert_array_equal(got[1], np.zeros(8, dtype=np.float32))
    np.testing.assert_array_equal(got[2], vectors[0].astype(np.float32))


def test_vectors_are_separated_by_version_and_kind(store: OnlineStore) -> None:
    store.put_vectors("v1", "item_emb", ["x"], np.ones((1, 2)))
    store.put_vectors("v1", "user_emb", ["x"], np.full((1, 2), 2.0))
    store.put_vectors("v2", "item_emb", ["x"], np.full((1, 2), 3.0))

    assert store.get_vectors("v1", "item_emb", ["x"])[0].tolist() == [[1.0, 1.0]]
    assert store.get_vectors("v1", "user_emb", ["x"])[0].tolist() == [[2.0, 2.0]]
    assert store.get_vectors("v2", "item_emb", ["x"])[0].tolist() == [[3.0, 3.0]]


def test_get_vectors_with_nothing_found(store: OnlineStore) -> None:
    got, found = store.get_vectors("v1", "item_emb", ["a", "b"])
    assert got.shape == (2, 0)
    assert got.dtype == np.float32
    assert found.tolist() == [False, False]

    got, found = store.get_vectors("v1", "item_emb", [])
    assert got.shape[0] == 0
    assert found.shape == (0,)


def test_large_batches_cross_every_chunk_size(store: OnlineStore) -> None:
    n = 25_001  # more than one Redis chunk, one SQLite IN-list and one embedded write chunk
    ids = [f"item-{k}" for k in range(n)]
    vectors = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    store.put_vectors("v1", "item_emb", ids, vectors)

    got, found = store.get_vectors("v1", "item_emb", ids[::-1])

    assert found.all()
    np.testing.assert_array_equal(got, vectors[::-1])


@pytest.mark.parametrize(
    ("ids", "vectors"),
    [(["a", "b"], np.ones((3, 2))), (["a"], np.ones(2)), (["a"], np.ones((1, 0)))],
)
def test_put_vectors_rejects_bad_shapes(
    store: OnlineStore, ids: list[str], vectors: np.ndarray
) -> None:
    with pytest.raises(ValidationError):
        store.put_vectors("v1", "item_emb", ids, vectors)


def test_bad_version_or_kind_names_are_rejected(store: OnlineStore) -> None:
    with pytest.raises(ValidationError):
        store.put_vectors("v:1", "item_emb", ["a"], np.ones((1, 2)))
    with pytest.raises(ValidationError):
        store.get_records("v1", "item*", ["a"])


def test_records_round_trip(store: OnlineStore) -> None:
    records = [
        {"title": "Café ☕", "tags": ["a", "b"], "score": 0.5, "nested": {"n": None}},
        {"count": np.int64(3), "emb": np.array([1.5, 2.0])},
    ]
    store.put_records("v1", "item_feat", ["a", "b:with:colons"], records)

    got = store.get_records("v1", "item_feat", ["b:with:colons", "missing", "a"])

    assert got == [{"count": 3, "emb": [1.5, 2.0]}, None, records[0]]
    assert store.get_records("v1", "item_feat", []) == []


def test_put_records_rejects_bad_input(store: OnlineStore) -> None:
    with pytest.raises(ValidationError):
        store.put_records("v1", "item_feat", ["a", "b"], [{"x": 1}])
    with pytest.raises(ValidationError):
        store.put_records("v1", "item_feat", ["a"], [{"x": object()}])


# -- metadata, versions and the current pointer -----------------------------------------------
def test_meta_round_trip(store: OnlineStore) -> None:
    assert store.get_meta("v1") is None
    store.put_meta("v1", {"created": "2026-01-01", "n": 3, "models": {"als": "x"}})
    assert store.get_meta("v1") == {"created": "2026-01-01", "n": 3, "models": {"als": "x"}}


def test_versions_and_current_pointer(store: OnlineStore) -> None:
    assert store.current_version() is None
    assert store.versions() == []

    for version in ["20260102T000000000Z-bbbbbb", "20260101T000000000Z-aaaaaa"]:
        publish(store, version)
    store.put_vectors("20260103T000000000Z-cccccc", "item_emb", ["a"], np.ones((1, 2)))  # no meta

    assert store.versions() == ["20260101T000000000Z-aaaaaa", "20260102T000000000Z-bbbbbb"]
    store.set_current("20260101T000000000Z-aaaaaa")
    assert store.current_version() == "20260101T000000000Z-aaaaaa"
    store.set_current("20260102T000000000Z-bbbbbb")
    assert store.current_version() == "20260102T000000000Z-bbbbbb"


def test_set_current_refuses_a_version_without_meta(store: OnlineStore) -> None:
    publish(store, "v1")
    store.set_current("v1")
    store.put_vectors("v2", "item_emb", ["a"], np.ones((1, 2)))  # written, never put_meta

    for version in ["v2", "never-written"]:
        with pytest.raises(StoreError, match=version):
            store.set_current(version)

    assert store.current_version() == "v1"


# -- deletion ----------------------------------------------------------------------------------
def test_delete_version_removes_every_key(backend: Backend, store: OnlineStore) -> None:
    keys = Keys(backend.namespace)
    for version in ["v1", "v10", "v2"]:  # v10 shares v1's text prefix: it must survive
        publish(store, version, n=1_500)  # more keys than one embedded write chunk
    store.set_current("v2")
    before_v10 = backend.raw_keys(keys.version_prefix("v10"))
    assert len(backend.raw_keys(keys.version_prefix("v1"))) == 1_500 + 2 + 1_500 + 1

    store.delete_version("v1")

    assert backend.raw_keys(keys.version_prefix("v1")) == []
    assert backend.raw_keys(keys.version_prefix("v10")) == before_v10
    assert store.versions() == ["v10", "v2"]
    assert store.get_meta("v1") is None
    assert not store.get_vectors("v1", "item_emb", ["i0"])[1].any()
    with pytest.raises(StoreError):
        store.set_current("v1")
    store.delete_version("v1")  # deleting again is a no-op


def test_delete_version_refuses_the_current_version(backend: Backend, store: OnlineStore) -> None:
    vectors = publish(store, "v1")
    store.set_current("v1")
    n_keys = len(backend.raw_keys(Keys(backend.namespace).version_prefix("v1")))

    with pytest.raises(StoreError, match="current"):
        store.delete_version("v1")

    assert store.current_version() == "v1"
    assert store.versions() == ["v1"]
    assert len(backend.raw_keys(Keys(backend.namespace).version_prefix("v1"))) == n_keys
    np.testing.assert_array_equal(store.get_vectors("v1", "item_emb", ["i0"])[0], vectors[:1])


# -- live history ------------------------------------------------------------------------------
def test_history_append_trim_and_newest_first(store: OnlineStore) -> None:
    store.append_history("u1", ["a", "b", "c"], max_len=5)
    store.append_history("u1", ["d", "e", "f"], max_len=5)
    store.append_history("u1", [], max_len=5)
    store.append_history("u:2", ["x"], max_len=5)

    assert store.get_history("u1", 100) == ["f", "e", "d", "c", "b"]
    assert store.get_history("u1", 2) == ["f", "e"]
    assert store.get_history("u1", 0) == []
    assert store.get_histories(["u:2", "nobody", "u1"], 3) == [["x"], [], ["f", "e", "d"]]
    assert store.get_histories([], 3) == []

    store.append_history("u1", ["g"], max_len=2)
    assert store.get_history("u1", 100) == ["g", "f"]
    with pytest.raises(ValidationError):
        store.append_history("u1", ["h"], max_len=0)


def test_append_histories_writes_many_users_in_one_call(store: OnlineStore) -> None:
    store.append_history("u1", ["a"], max_len=3)
    many = {f"user{k}": [f"i{k}", f"j{k}"] for k in range(2_500)}  # several server-side chunks
    long = [f"x{k}" for k in range(2_400)]  # more items for one user than one RPUSH carries

    store.append_histories({"u1": ["b", "c", "d"], "empty": [], **many, "long": long}, max_len=3)

    assert store.get_history("u1", 10) == ["d", "c", "b"]
    assert store.get_history("empty", 10) == []
    assert store.get_histories(["user0", "user2499"], 10) == [["j0", "i0"], ["j2499", "i2499"]]
    assert store.get_history("long", 10) == ["x2399", "x2398", "x2397"]
    store.append_histories({}, max_len=3)
    with pytest.raises(ValidationError):
        store.append_histories({"u1": ["e"]}, max_len=0)


def test_a_tokened_history_write_is_applied_once(store: OnlineStore) -> None:
    """The replay of held updates may repeat a write that reached the store: with the same
    token it writes nothing, in every server-side chunk of a large call too."""
    many = {f"tok{k}": [f"i{k}", f"j{k}"] for k in range(4_000)}  # several chunks
    for _ in range(2):
        store.append_histories({"t1": ["a", "b"], **many}, max_len=10, token="j1:1-3")
    assert store.get_history("t1", 10) == ["b", "a"]
    assert store.get_histories(["tok0", "tok3999"], 10) == [["j0", "i0"], ["j3999", "i3999"]]
    store.append_histories({"t1": ["c"]}, max_len=10, token="j1:4-4")
    store.append_histories({"t1": ["d"]}, max_len=10)  # no token: always written
    store.append_histories({"t1": ["d"]}, max_len=10)
    assert store.get_history("t1", 10) == ["d", "d", "c", "b", "a"]


def test_read_user_returns_the_pointer_with_the_users_data(store: OnlineStore) -> None:
    vectors = publish(store, "v1")
    store.put_records("v1", "user_feat", ["u1"], [{"clicks": 3}])
    store.put_records("v1", "feed", ["u1"], [{"items": ["i1"]}])
    store.append_history("u1", ["i3", "i4"], max_len=5)
    kinds = {"vector_kind": "user_emb", "record_kind": "user_feat"}

    before = store.read_user("v1", "u1", 5, **kinds)
    assert before.current is None  # nothing is current yet: the caller must not serve it
    store.set_current("v1")
    got = store.read_user("v1", "u1", 5, **kinds, extra_kind="feed")
    nobody = store.read_user("v1", "nobody", 5, **kinds)
    no_history = store.read_user("v1", "u1", 0, **kinds)

    assert got.current == "v1"
    assert got.vector is not None
    np.testing.assert_array_equal(got.vector, vectors[1] * -1)
    assert got.record == {"clicks": 3}
    assert got.history == ["i4", "i3"]
    assert got.extra == {"items": ["i1"]}
    assert (nobody.vector, nobody.record, nobody.history, nobody.extra) == (None, None, [], None)
    assert no_history.history == [] and no_history.record == {"clicks": 3}


def test_clear_histories_keeps_published_data(store: OnlineStore) -> None:
    publish(store, "v1")
    store.set_current("v1")
    store.append_history("u1", ["a"], max_len=5)
    store.append_history("u2", ["b"], max_len=5)

    store.clear_histories()

    assert store.get_histories(["u1", "u2"], 5) == [[], []]
    assert store.current_version() == "v1"
    assert store.get_meta("v1") is not None
    store.append_history("u1", ["c"], max_len=5)
    assert store.get_history("u1", 5) == ["c"]


def test_namespaces_are_isolated(backend: Backend, store: OnlineStore) -> None:
    other = backend.open(backend.namespace + "-other")
    try:
        publish(store, "v1")
        store.set_current("v1")
        store.append_history("u1", ["a"], max_len=5)
        other.append_history("u1", ["z"], max_len=5)

        assert other.current_version() is None
        assert other.versions() == []
        other.clear_histories()
        assert store.get_history("u1", 5) == ["a"]
    finally:
        other.clear_histories()


# -- sharing and concurrency -------------------------------------------------------------------
def test_a_second_store_object_sees_the_first_ones_publish(backend: Backend) -> None:
    writer, reader = backend.open(), backend.open()
    assert reader.current_version() is None

    vectors = publish(writer, "v1")
    writer.set_current("v1")
    writer.append_history("u1", ["a", "b"], max_len=5)

    assert reader.current_version() == "v1"
    np.testing.assert_array_equal(
        reader.get_vectors("v1", "item_emb", ["i0", "i1"])[0], vectors[:2]
    )
    assert reader.get_history("u1", 5) == ["b", "a"]


def test_embedded_store_is_shared_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with EmbeddedStore(path) as store:
        vectors = publish(store, "v1")
        store.set_current("v1")
    script = (
        "import sys\n"
        "from feedforge.store.embedded import EmbeddedStore\n"
        "with EmbeddedStore(sys.argv[1]) as store:\n"
        "    version = store.current_version()\n"
        "    got, found = store.get_vectors(version, 'item_emb', ['i0', 'i4'])\n"
        "    print(version, found.tolist(), got.tolist())\n"
        "    store.append_history('u1', ['from-child'], max_len=5)\n"
    )

    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    ).stdout

    assert out.strip() == f"v1 [True, True] {vectors[[0, 4]].tolist()}"
    with EmbeddedStore(path) as store:
        assert store.get_history("u1", 5) == ["from-child"]


def test_reader_never_sees_a_half_written_version(backend: Backend) -> None:
    writer, reader = backend.open(), backend.open()
    ids = [f"i{k}" for k in range(400)]
    n_versions = 20
    done, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def publish_repeatedly() -> None:
        try:
            for i in range(1, n_versions + 1):
                if stop.is_set():
                    return
                version = f"v{i:04d}"
                # Two writes per kind, as a chunked publish does: half a version exists on the
                # store for a while, but is not current until set_current.
                for part in (ids[:200], ids[200:]):
                    time.sleep(0.003)  # widen the window a broken store would expose
                    writer.put_vectors(version, "item_emb", part, np.full((len(part), 8), i))
                    writer.put_records(version, "item_feat", part, [{"i": i}] * len(part))
                writer.put_meta(version, {"i": i})
                writer.set_current(version)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=publish_repeatedly)
    thread.start()
    reads, seen = 0, set()
    deadline = time.monotonic() + 60
    try:
        while (not done.is_set() or reads == 0) and time.monotonic() < deadline:
            version = reader.current_version()
            if version is None:
                continue
            meta = reader.get_meta(version)
            vectors, found = reader.get_vectors(version, "item_emb", ids)
            records = reader.get_records(version, "item_feat", ids)
            assert meta is not None
            assert found.all(), f"{version}: {int((~found).sum())} vectors missing"
            assert (vectors == meta["i"]).all()
            assert records == [{"i": meta["i"]}] * len(ids)
            reads += 1
            seen.add(version)
    finally:  # never let the writer outlive the test (it would write after the cleanup)
        stop.set()
        thread.join()

    assert not errors, errors
    assert len(seen) >= 2, "the reader never overlapped the writer: the test proved nothing"
    assert reader.current_version() == f"v{n_versions:04d}"


def test_concurrent_history_writers_from_many_threads(store: OnlineStore) -> None:
    errors: list[BaseException] = []

    def append(user: str) -> None:
        try:
            for k in range(50):
                store.append_history(user, [f"{user}-{k}"], max_len=20)
                store.get_histories([user, "u0"], 5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(f"u{t}",)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors
    for t in range(8):
        assert store.get_history(f"u{t}", 100) == [f"u{t}-{k}" for k in range(49, 29, -1)]


# -- lifecycle and failures --------------------------------------------------------------------
def test_ping(store: OnlineStore) -> None:
    assert store.ping() is True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


REDIS_OPERATIONS: dict[str, Callable[[OnlineStore], object]] = {
    "put_vectors": lambda s: s.put_vectors("v1", "item_emb", ["a"], np.ones((1, 2))),
    "get_vectors": lambda s: s.get_vectors("v1", "item_emb", ["a"]),
    "get_vectors_many": lambda s: s.get_vectors("v1", "item_emb", [str(k) for k in range(20_001)]),
    "put_records": lambda s: s.put_records("v1", "item_feat", ["a"], [{"x": 1}]),
    "get_records": lambda s: s.get_records("v1", "item_feat", ["a"]),
    "put_meta": lambda s: s.put_meta("v1", {}),
    "get_meta": lambda s: s.get_meta("v1"),
    "set_current": lambda s: s.set_current("v1"),
    "current_version": lambda s: s.current_version(),
    "versions": lambda s: s.versions(),
    "delete_version": lambda s: s.delete_version("v1"),
    "append_history": lambda s: s.append_history("u1", ["a"], 5),
    "get_histories": lambda s: s.get_histories(["u1"], 5),
    "clear_histories": lambda s: s.clear_histories(),
}


@pytest.mark.parametrize("operation", sorted(REDIS_OPERATIONS))
def test_redis_down_raises_store_unavailable(operation: str) -> None:
    url = f"redis://:s3cret@127.0.0.1:{_free_port()}/0"
    store = RedisStore.from_url(url, namespace="test", socket_timeout_s=0.2)
    started = time.monotonic()

    with pytest.raises(StoreUnavailableError) as info:
        REDIS_OPERATIONS[operation](store)

    assert time.monotonic() - started < 3
    assert "127.0.0.1" in info.value.message
    assert "s3cret" not in str(info.value)
    assert isinstance(info.value.__cause__, redis.RedisError)
    assert store.ping() is False
    store.close()


def test_embedded_store_that_cannot_open_names_its_path(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()

    with pytest.raises(StoreUnavailableError, match="a-folder"):
        EmbeddedStore(folder)


def test_embedded_store_refuses_an_unknown_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")

    with pytest.raises(StoreError, match="schema version 99"):
        EmbeddedStore(path)


def test_embedded_store_opens_while_another_connection_write_locks_a_new_file(
    tmp_path: Path,
) -> None:
    # Switching a file to WAL needs an exclusive lock and fails at once, without waiting on
    # the busy timeout, while another connection holds a write lock on it in the rollback
    # journal mode (a second worker creating the same file): the store must wait, not fail
    # with "database is locked".
    path = tmp_path / "store.sqlite3"
    holder = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    holder.execute("CREATE TABLE other (a)")
    holder.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    releaser.start()
    try:
        store = EmbeddedStore(path, busy_timeout_s=10.0)
        store.put_document("d", {"n": 1}, 0)
        assert store.get_document("d") == (1, {"n": 1})
        store.close()
    finally:
        releaser.join()
        holder.close()


def test_closed_embedded_store_raises_store_error(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store.sqlite3")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.current_version()
    assert store.ping() is False


def test_open_store_picks_the_configured_backend(tmp_path: Path) -> None:
    default = tmp_path / "default.sqlite3"
    with open_store(StoreConfig(), default) as store:
        assert isinstance(store, EmbeddedStore)
        assert store.path == default
    custom = tmp_path / "custom" / "store.sqlite3"
    with open_store(StoreConfig(path=custom, namespace="ns"), default) as store:
        assert isinstance(store, EmbeddedStore)
        assert (store.path, store.keys.namespace) == (custom, "ns")
    redis_config = StoreConfig(type="redis", redis_url="redis://example.invalid:1/0")
    with open_store(redis_config, default) as store:  # connects lazily: nothing is reached
        assert isinstance(store, RedisStore)
        assert store.keys.namespace == "feedforge"
        assert store.history_ttl_s == 90 * 86_400  # the default store.history_ttl_days


@pytest.mark.redis
def test_redis_histories_expire_after_the_last_event(
    redis_url: str, redis_namespace: str, redis_client: redis.Redis
) -> None:
    store = RedisStore.from_url(redis_url, namespace=redis_namespace, history_ttl_s=3600)
    store.append_history("u1", ["a", "b"], max_len=10)
    key = store.keys.history("u1")
    assert 3590 <= redis_client.ttl(key) <= 3600
    redis_client.expire(key, 5)
    store.append_history("u1", ["c"], max_len=10)  # a new event pushes the expiry back
    assert redis_client.ttl(key) > 3000
    forever = RedisStore.from_url(redis_url, namespace=redis_namespace, history_ttl_s=None)
    forever.append_history("u2", ["a"], max_len=10)
    assert redis_client.ttl(forever.keys.history("u2")) == -1  # no expiry
    store.close()
    forever.close()


# -- documents --------------------------------------------------------------------------------
def test_a_document_is_read_by_another_client_with_its_revision(backend: Backend) -> None:
    writer, reader = backend.open(), backend.open()
    assert reader.get_document("experiments") == (0, None)
    assert writer.put_document("experiments", {"items": [{"id": "e1"}]}, 0) == 1
    assert writer.put_document("experiments", {"items": []}, 1) == 2
    assert reader.get_document("experiments") == (2, {"items": []})
    assert backend.raw_keys(Keys(backend.namespace).document("experiments")) == [
        Keys(backend.namespace).document("experiments")
    ]


def test_a_stale_document_write_is_refused_and_changes_nothing(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    first.put_document("experiments", {"n": 1}, 0)
    with pytest.raises(StoreConflictError, match="changed since revision 0"):
        second.put_document("experiments", {"n": 2}, 0)
    assert first.get_document("experiments") == (1, {"n": 1})


def test_concurrent_document_updates_are_each_applied_once(backend: Backend) -> None:
    # 4 threads x 10 read-modify-write increments with retry on conflict: 40 in the end.
    def bump() -> None:
        store = backend.open()
        for _ in range(10):
            while True:
                rev, doc = store.get_document("counter")
                try:
                    store.put_document("counter", {"n": (doc or {"n": 0})["n"] + 1}, rev)
                    break
                except StoreConflictError:
                    continue

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend.open().get_document("counter") == (40, {"n": 40})


# -- counters ---------------------------------------------------------------------------------
def test_counts_add_up_exactly_across_concurrent_writers(backend: Backend) -> None:
    # 4 clients x 50 adds of {a: 1, b: 2} (and one field only some write): no add is lost.
    backend.open().put_meta("v1", {"version": "v1"})

    def add(worker: int) -> None:
        store = backend.open()
        for _ in range(50):
            store.add_counts("v1", "profile.control", {"a": 1, "b": 2, f"w{worker % 2}": 1})

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = backend.open().get_counts("v1", "profile.control")
    assert counts == {"a": 200, "b": 400, "w0": 100, "w1": 100}
    assert backend.open().get_counts("v1", "other") == {}
    assert backend.open().get_counts("v2", "profile.control") == {}
    assert backend.open().counts_names("v1") == ["profile.control"]
    assert backend.open().counts_names("v2") == []


def test_counts_are_deleted_with_their_version(backend: Backend) -> None:
    store = backend.open()
    for version in ("v1", "v2"):
        store.put_meta(version, {"version": version})
        store.add_counts(version, "profile", {"x": 3})
    store.set_current("v2")
    store.delete_version("v1")
    assert store.get_counts("v1", "profile") == {}
    assert store.get_counts("v2", "profile") == {"x": 3}
    # A late writer (a worker flushing after the delete) leaves nothing behind.
    assert store.add_counts("v1", "profile", {"x": 1}) is False
    assert backend.raw_keys(store.keys.version_prefix("v1")) == []
    assert store.add_counts("never-published", "profile", {"x": 1}) is False
    assert store.add_counts("v2", "profile", {}) is True
