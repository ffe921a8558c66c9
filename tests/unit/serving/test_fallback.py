"""The degraded-mode helpers: the circuit breaker and the held history updates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from feedforge.errors import StoreUnavailableError
from feedforge.serving.fallback import DiskFallback, StoreGuard
from feedforge.serving.held import PendingHistories
from feedforge.store.embedded import EmbeddedStore
from feedforge.store.last_current import recall_current, remember_current


def test_the_breaker_opens_for_the_retry_time_and_closes_on_success() -> None:
    guard = StoreGuard(retry_after_s=0.05)
    assert guard.available() and guard.last_error is None
    guard.failed(StoreUnavailableError("down"))
    assert not guard.available() and guard.last_error == "down"
    time.sleep(0.06)
    assert guard.available() and guard.last_error == "down"  # may try again; not recovered
    guard.succeeded()
    assert guard.available() and guard.last_error is None


def test_held_histories_are_written_in_order_in_bounded_batches(tmp_path: Path) -> None:
    pending = PendingHistories()
    pending.add({"u1": ["a", "b"], "u2": ["x"]})
    pending.add({"u1": ["c"], "u3": ["y"]})
    assert len(pending) == 5
    with EmbeddedStore(tmp_path / "store.sqlite3") as store:
        pending.flush(store, max_len=10, max_users=2)
        assert len(pending) == 2  # the second batch (a third user) waits for the next call
        assert store.get_history("u1", 10) == ["b", "a"]  # newest first
        assert store.get_history("u3", 10) == []
        pending.flush(store, max_len=10)
        assert len(pending) == 0 and store.get_history("u3", 10) == ["y"]
        assert store.get_history("u1", 10) == ["c", "b", "a"]


def test_the_feed_path_never_waits_for_a_flush_in_progress(tmp_path: Path) -> None:
    # The feed path runs on the event loop: while an ingest thread writes a backlog (holding
    # the lock), a feed's flush returns at once and leaves the updates to that thread.
    pending = PendingHistories()
    pending.add({"u1": ["a"]})
    with EmbeddedStore(tmp_path / "store.sqlite3") as store:
        pending._lock.acquire()  # another thread is flushing
        try:
            started = time.perf_counter()
            assert pending.flush(store, max_len=10, wait=False) is False
            assert time.perf_counter() - started < 0.1
            assert len(pending) == 1 and store.get_history("u1", 10) == []
        finally:
            pending._lock.release()
        assert pending.flush(store, max_len=10, wait=False) is True
        assert store.get_history("u1", 10) == ["a"]


def test_no_remembered_version_means_no_fallback(tmp_path: Path) -> None:
    with (
        EmbeddedStore(tmp_path / "store.sqlite3") as store,
        pytest.raises(StoreUnavailableError, match="no published version of it"),
    ):
        DiskFallback(tmp_path / "current", store).get("connection refused")


def test_the_fallback_is_the_remembered_version_of_its_own_store(tmp_path: Path) -> None:
    with (
        EmbeddedStore(tmp_path / "a.sqlite3") as a,
        EmbeddedStore(tmp_path / "a.sqlite3", namespace="other") as other,
        EmbeddedStore(tmp_path / "b.sqlite3") as b,
    ):
        remember_current(tmp_path, a, "v1", ["i1", "i2"])
        remember_current(tmp_path, other, "v3", ["o1"])
        remember_current(tmp_path, b, "v4", ["b1"])
        remember_current(tmp_path, a, "v2", ["i3"])
        remember_current(tmp_path, a, "v1", ["i1", "i2"])  # a rollback
        assert DiskFallback(tmp_path, a).get(None) == ("v1", ["i1", "i2"])
        assert recall_current(tmp_path, other) == ("v3", ["o1"])
        assert recall_current(tmp_path, b) == ("v4", ["b1"])


class _AppliesThenFails(EmbeddedStore):
    """A store whose write lands but whose answer is lost (a crash or timeout right after)."""

    def append_histories(self, items, max_len, token=None):  # type: ignore[no-untyped-def]
        super().append_histories(items, max_len, token)
        raise StoreUnavailableError("connection reset after the write")


def test_held_updates_are_journalled_and_replayed_exactly_once(tmp_path: Path) -> None:
    journals = tmp_path / "held"
    first = PendingHistories(journals)
    first.add({"u1": ["a", "b"], "u2": ["x"]})
    first.persist()  # the store did not take them: durable before the answer
    first.add({"u1": ["c"]})
    first.persist()
    with (
        _AppliesThenFails(tmp_path / "store.sqlite3") as flaky,
        pytest.raises(StoreUnavailableError),
    ):
        first.flush(flaky, max_len=10, max_users=None)
    # The worker dies: its lock goes with it, nothing else of it runs.
    first._own.close(remove=False)  # type: ignore[union-attr]

    with EmbeddedStore(tmp_path / "store.sqlite3") as store:
        assert store.get_history("u1", 10) == ["c", "b", "a"]  # the lost answer's write
        for _ in range(2):  # two restarts: the second finds nothing left
            again = PendingHistories(journals)
            again.adopt_orphans()
            again.flush(store, max_len=10, max_users=None)
            again.close(store, max_len=10)
        assert store.get_history("u1", 10) == ["c", "b", "a"]
        assert store.get_history("u2", 10) == ["x"]
    assert list(journals.glob("*.jsonl")) == []


def test_a_live_workers_journal_is_not_adopted(tmp_path: Path) -> None:
    owner = PendingHistories(tmp_path)
    owner.add({"u1": ["a"]})
    owner.persist()
    other = PendingHistories(tmp_path)
    assert other.adopt_orphans() == 0 and len(other) == 0
    with EmbeddedStore(tmp_path / "store.sqlite3") as store:
        owner.close(None, max_len=10)  # stopped with the store down: the journal stays
        assert other.adopt_orphans() == 1
        other.close(store, max_len=10)
        assert store.get_history("u1", 10) == ["a"]
