"""The degraded-mode helpers: the circuit breaker and the held history updates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from feedforge.errors import StoreUnavailableError
from feedforge.serving.fallback import DiskFallback, PendingHistories, StoreGuard
from feedforge.store.embedded import EmbeddedStore


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
        assert len(pending) == 1  # u3 waits for the next call
        assert store.get_history("u1", 10) == ["c", "b", "a"]  # newest first
        assert store.get_history("u3", 10) == []
        pending.flush(store, max_len=10)
        assert len(pending) == 0 and store.get_history("u3", 10) == ["y"]


def test_no_bundle_on_disk_means_no_fallback(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="no published bundle"):
        DiskFallback(tmp_path / "bundles").get("connection refused")
