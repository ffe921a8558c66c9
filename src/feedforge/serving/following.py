"""Following the store's current version: which published version a worker serves, and when.

A worker keeps one version in memory (:class:`~feedforge.serving.version.LoadedVersion`: item
ids, the item embedding matrix, the ranker, the ANN index). Every request hands the store's
``current`` pointer, read in the same round trip as its user, to :meth:`VersionFollower.follow`:

* the first version loads on the calling request (or at start-up, :meth:`~VersionFollower.preload`);
* a later one (a publish or a rollback moved the pointer) loads in a background thread while
  requests keep being answered from the version already in memory; the swap happens when the
  new one is ready;
* a version that fails to load is retried after ``serving.load_retry_s``, doubling (at most
  10 minutes), while the previous one keeps serving.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

from feedforge.config import ServingConfig
from feedforge.errors import FeedforgeError, NotPublishedError
from feedforge.monitoring.metrics import ServiceMetrics
from feedforge.serving.version import LoadedVersion, load_version
from feedforge.store.base import OnlineStore
from feedforge.store.last_current import remember_current
from feedforge.workdir import Workdir

# The pipeline's logger: the lines ("serving version ...", "could not load version ...") are
# the service's, whichever module writes them.
logger = logging.getLogger("feedforge.serving")

MAX_RETRY_DELAY_S = 600.0
"""The longest wait before a failed version is tried again."""


class VersionFollower:
    """The version a worker serves, following the store's ``current`` pointer.

    Args:
        store: The online store the versions are published to.
        serving: The serving settings (``load_retry_s``, and what a version load needs).
        workdir: The work directory (its bundles, and the publish command in error messages).
        metrics: The service's metrics; the serving version is reported on each load.
        clock: The retry backoff's clock (monotonic seconds); tests replace it.
    """

    def __init__(
        self,
        store: OnlineStore,
        serving: ServingConfig,
        workdir: Workdir,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.serving = serving
        self.workdir = workdir
        self.metrics = metrics
        self.clock = clock
        self._loaded: LoadedVersion | None = None
        self._lock = threading.Lock()  # guards _loading and _failed_loads
        self._load_lock = threading.Lock()  # one version load at a time
        self._loading: str | None = None  # the version a background thread is loading
        # version -> (failed loads, clock time before which it is not tried again)
        self._failed_loads: dict[str, tuple[int, float]] = {}

    @property
    def loaded(self) -> LoadedVersion | None:
        """The version in memory (None before the first load)."""
        return self._loaded

    def current(self) -> LoadedVersion:
        """The loaded current version, following the store's pointer.

        The first version loads on the calling request. A later one loads in a background
        thread while requests keep being answered from the version already in memory, whose
        keys the store keeps for ``store.retire_grace_s``; the swap happens when the new one
        is ready. So a publish never stalls requests for the seconds a large catalog takes
        to load.

        Raises:
            NotPublishedError: nothing was published yet.
            feedforge.errors.StoreUnavailableError: the store cannot be reached.
        """
        return self.follow(self.store.current_version())

    def preload(self) -> str | None:
        """Load the current version now, before the first request (a worker's start-up).

        A 1M-item version takes seconds to load; on the first request it would stall every
        request queued behind it on that worker. Best effort: while nothing is published, the
        store cannot be reached or the version does not load, the first request tries again
        (and answers degraded or with the error, as without a preload).

        Returns:
            The loaded version, or None when there was nothing to load.
        """
        try:
            return self.current().version
        except FeedforgeError as exc:
            logger.warning("no version loaded at start-up (%s); the first request loads it", exc)
            return None

    def follow(self, version: str | None) -> LoadedVersion:
        """:meth:`current` for the pointer value ``version`` the caller has just read.

        Args:
            version: The store's ``current`` pointer (None: nothing is published).

        Returns:
            The version to answer with: ``version`` when it is in memory (or was the first
            one, loaded now), else the one in memory while ``version`` loads in the background.

        Raises:
            NotPublishedError: ``version`` is None, or has no metadata in the store.
        """
        if version is None:
            raise NotPublishedError(
                f"nothing is published yet; run `{self.workdir.command('publish')}`"
            )
        loaded = self._loaded
        if loaded is not None and loaded.version == version:
            return loaded
        if loaded is None:
            return self._load(version)
        with self._lock:
            retry_at = self._failed_loads.get(version, (0, 0.0))[1]
            if self._loading != version and self.clock() >= retry_at:
                self._loading = version
                threading.Thread(
                    target=self._load_in_background, args=(version,), daemon=True
                ).start()
        return loaded

    def _load(self, version: str) -> LoadedVersion:
        with self._load_lock:
            loaded = self._loaded
            if loaded is not None and loaded.version == version:
                return loaded
            meta = self.store.get_meta(version)
            if meta is None:
                raise NotPublishedError(f"version {version} has no metadata in the store")
            state = load_version(self.store, version, meta, self.serving, self.workdir.bundles_dir)
            self._loaded = state
            # What a later start with the store down falls back to (serving.fallback).
            remember_current(
                self.workdir.current_dir, self.store, version, meta.get("popular") or []
            )
            # A full pass of the cyclic collector over a loaded service takes ~150 ms (a tail
            # latency spike) and finds nothing of the version to free: freeze what is live.
            # Unfreeze and collect first, so cycles the previous version left are freed, not
            # kept forever: one such pass per load, i.e. a pause of that worker's requests of
            # about that long once per publish (it holds the GIL, even in the background).
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.metrics.serving(version)
            logger.info("serving version %s", version)
            return state

    def _load_in_background(self, version: str) -> None:
        try:
            self._load(version)
        except Exception:
            # The old version keeps serving; the failed one is tried again after a backoff
            # (serving.load_retry_s, doubling), not on the very next request.
            with self._lock:
                failures = self._failed_loads.get(version, (0, 0.0))[0] + 1
                delay = min(self.serving.load_retry_s * 2 ** (failures - 1), MAX_RETRY_DELAY_S)
                self._failed_loads[version] = (failures, self.clock() + delay)
            logger.exception(
                "could not load version %s (failure %d); still serving the previous one, "
                "next try in %.0f s",
                version,
                failures,
                delay,
            )
        else:
            with self._lock:
                self._failed_loads.pop(version, None)
        finally:
            with self._lock:
                if self._loading == version:
                    self._loading = None
