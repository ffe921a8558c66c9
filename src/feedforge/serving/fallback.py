"""What the service does while the online store is down or slow.

* :class:`StoreGuard` is a circuit breaker: after a store failure, requests skip the store
  for ``serving.store_retry_s`` seconds (so a dead or slow Redis costs one timeout, not one
  per request), then the next request tries it again; the first success closes it. redis-py
  reconnects by itself, so a Redis that comes back is used again without a restart.
* The degraded answer is the popular list of the version last loaded from the store, or,
  when the service started while the store was down, of the store's last current version
  remembered in the work directory (:class:`DiskFallback`, :mod:`feedforge.store.last_current`).
* :class:`~feedforge.serving.held.PendingHistories` keeps the live-history updates of events
  ingested while the store was down, durably (the events themselves are already in the event
  log), and writes them to the store when it answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from feedforge.errors import StoreUnavailableError
from feedforge.store.base import OnlineStore
from feedforge.store.last_current import recall_current

logger = logging.getLogger("feedforge.serving")


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


class DiskFallback:
    """The popular list of the store's last current version, remembered in the work
    directory (:mod:`feedforge.store.last_current`), read once: the answer of a service
    started with the store down. Not the newest bundle on disk, which may be a version that
    was rolled back, or another store's."""

    def __init__(self, current_dir: Path, store: OnlineStore) -> None:
        self.current_dir = current_dir
        self.store = store
        self._found: tuple[str, list[str]] | None = None

    def get(self, store_error: str | None) -> tuple[str, list[str]]:
        """``(version, popular item ids)``.

        Raises:
            StoreUnavailableError: no current version of this store is remembered (nothing
                was published, rolled back or served with it from this work directory).
        """
        if self._found is None:
            self._found = recall_current(self.current_dir, self.store)
        if self._found is None:
            raise StoreUnavailableError(
                # The client reads this message: it names no server path.
                f"the online store is unavailable ({store_error}) and no published version "
                "of it is remembered to fall back to (a publish, a rollback or a service "
                "that loaded a version records it)"
            )
        return self._found
