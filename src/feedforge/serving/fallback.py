"""What the service does while the online store is down or slow.

* :class:`StoreGuard` is a circuit breaker: after a store failure, requests skip the store
  for ``serving.store_retry_s`` seconds (so a dead or slow Redis costs one timeout, not one
  per request), then the next request tries it again; the first success closes it. redis-py
  reconnects by itself, so a Redis that comes back is used again without a restart.
* :func:`fallback_popular` is the in-process answer: the popular items of the version last
  loaded from the store, or, when the service started while the store was down, of the newest
  published bundle on disk (``bundles/<version>/manifest.json`` records the list).
* :class:`PendingHistories` keeps the live-history updates of events ingested while the store
  was down (the events themselves are already durable in the event log) and writes them to
  the store when it answers again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path

from feedforge.artifacts import read_manifest
from feedforge.errors import ArtifactError, StoreUnavailableError
from feedforge.store.base import OnlineStore
from feedforge.store.bundle import BUNDLE_ARTIFACT, BUNDLE_SCHEMA_VERSION

logger = logging.getLogger("feedforge.serving")

MAX_PENDING_ITEMS = 100_000
"""Most history entries held for the store while it is down (the oldest users' go first)."""


class StoreGuard:
    """A circuit breaker around the online store (see the module docs)."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self._open_until = 0.0
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def available(self) -> bool:
        """Whether a request should try the store now."""
        return time.monotonic() >= self._open_until

    def failed(self, error: Exception) -> None:
        """The store failed: skip it for ``retry_after_s``."""
        with self._lock:
            if self.last_error is None:
                logger.warning("online store unavailable, serving degraded feeds: %s", error)
            self._open_until = time.monotonic() + self.retry_after_s
            self.last_error = str(error)

    def succeeded(self) -> None:
        """The store answered: close the breaker."""
        if self.last_error is None:
            return
        with self._lock:
            if self.last_error is not None:
                logger.warning("online store available again; degraded mode over")
            self._open_until = 0.0
            self.last_error = None


def newest_bundle_popular(bundles_dir: Path) -> tuple[str, list[str]] | None:
    """``(version, popular item ids)`` of the newest readable bundle on disk, or None."""
    if not bundles_dir.is_dir():
        return None
    for bundle in sorted((p for p in bundles_dir.iterdir() if p.is_dir()), reverse=True):
        try:
            manifest = read_manifest(
                bundle, BUNDLE_ARTIFACT, (BUNDLE_SCHEMA_VERSION,), "feedforge publish"
            )
        except ArtifactError:
            continue
        popular = manifest.extra.get("popular")
        if isinstance(popular, list) and popular:
            return manifest.version, [str(item) for item in popular]
    return None


class DiskFallback:
    """The newest bundle's popular list, read once (for a service started with the store
    down)."""

    def __init__(self, bundles_dir: Path) -> None:
        self.bundles_dir = bundles_dir
        self._found: tuple[str, list[str]] | None = None

    def get(self, store_error: str | None) -> tuple[str, list[str]]:
        """``(version, popular item ids)``.

        Raises:
            StoreUnavailableError: no bundle on disk has a popular list.
        """
        if self._found is None:
            self._found = newest_bundle_popular(self.bundles_dir)
        if self._found is None:
            raise StoreUnavailableError(
                f"the online store is unavailable ({store_error}) and no published bundle is "
                "on disk to fall back to"
            )
        return self._found


class PendingHistories:
    """Live-history updates waiting for the store (see the module docs)."""

    def __init__(self) -> None:
        self._items: dict[str, list[str]] = {}
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def add(self, per_user: dict[str, list[str]]) -> None:
        """Hold ``user -> items (oldest first)`` for a later :meth:`flush`."""
        with self._lock:
            for user_id, items in per_user.items():
                self._items.setdefault(user_id, []).extend(items)
                self._count += len(items)
            while self._count > MAX_PENDING_ITEMS and self._items:
                dropped = self._items.pop(next(iter(self._items)))
                self._count -= len(dropped)
                logger.warning(
                    "pending history buffer full: dropped %d entries (the events are in the "
                    "log; republish to rebuild the histories)",
                    len(dropped),
                )

    def flush(self, store: OnlineStore, max_len: int, max_users: int | None = 1_000) -> bool:
        """Write held updates to ``store`` in one batched write, oldest users first, at most
        ``max_users`` users per call (None: all; the feed path passes a bound so the first
        request after an outage does not carry the whole backlog).

        Returns:
            Whether nothing is held any more.

        Raises:
            feedforge.errors.StoreError: the store failed; everything stays held (a batch the
                store half-applied is written again, so a history may repeat an item).
        """
        if not self._count:
            return True
        with self._lock:
            users = list(itertools.islice(self._items, max_users))
            store.append_histories({user_id: self._items[user_id] for user_id in users}, max_len)
            for user_id in users:
                self._count -= len(self._items.pop(user_id))
            return not self._count
