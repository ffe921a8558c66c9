"""Items posted or withdrawn since the last publish, served at once
(:mod:`feedforge.store.live_items`).

Each worker reads the ``live-items`` document every ``serving.live_items_refresh_s`` (and at
once after its own ``POST /items``). :meth:`LiveItems.apply` turns a loaded version into the
version plus the live items, cached per version and document revision, built off the
request path by the refresh thread for the current version (a pinned experiment version is
built by the first request that needs it):

* an available item the version does not serve gets the version's content vector
  (:class:`~feedforge.features.content.ContentMap`, its age taken on the version's
  scoring clock), is appended to the version's ids, item matrix and item feature table
  (zero counters, its category, duration, price and creation time) and joins retrieval
  through an :class:`~feedforge.index.extended.ExtendedIndex`; the ranker scores it like any
  cold item;
* a withdrawn item (``available: false``) is put in the version's ``blocked`` set, which the
  pipeline adds to every user's excluded items, the popular fallback and precomputed feeds
  included.

Changes to an item the version already serves (its category, price) take effect at the next
publish; its withdrawal takes effect at once. A version published without a content map
(no ranker-free fit was possible) cannot place new items: they wait for the next publish.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from feedforge.datasets.idmap import IdMap
from feedforge.errors import FeedforgeError, StoreError
from feedforge.events.catalog import append_item_updates
from feedforge.events.item_updates import ItemUpdate, item_update_frame
from feedforge.features.online import ITEM_RECORD_COUNTERS
from feedforge.index.ann import AnnIndex
from feedforge.index.extended import ExtendedIndex
from feedforge.serving.version import LoadedVersion
from feedforge.store.base import OnlineStore
from feedforge.store.live_items import Entries, read_live_items, upsert_live_items
from feedforge.workdir import Workdir

logger = logging.getLogger(__name__)


def entry_frame(entries: list[tuple[str, dict[str, Any]]]) -> pl.DataFrame:
    """Catalog rows (``item_id``, ``categories``, ``created_at``, ``duration_seconds``,
    ``price``) of live entries."""
    return pl.DataFrame(
        {
            "item_id": [item_id for item_id, _ in entries],
            "categories": [list(e.get("categories") or []) for _, e in entries],
            "created_at": [
                datetime.fromtimestamp(float(e["created_at_s"]), UTC) for _, e in entries
            ],
            "duration_seconds": [float(e.get("duration_seconds") or 0.0) for _, e in entries],
            "price": [float(e.get("price") or 0.0) for _, e in entries],
        },
        schema={
            "item_id": pl.String,
            "categories": pl.List(pl.String),
            "created_at": pl.Datetime("us", "UTC"),
            "duration_seconds": pl.Float64,
            "price": pl.Float64,
        },
    )


def extend_version(state: LoadedVersion, entries: Entries) -> LoadedVersion:
    """``state`` plus the live ``entries`` (see the module docs)."""
    blocked = frozenset(i for i, e in entries.items() if not e.get("available", True))
    new = [
        (item_id, e)
        for item_id, e in sorted(entries.items())
        if e.get("available", True) and state.items.get(item_id) is None
    ]
    mapping = state.content_map
    if new and mapping is None:
        logger.warning(
            "version %s has no content map: %d posted item(s) wait for the next publish",
            state.version,
            len(new),
        )
        new = []
    if not new or mapping is None:
        return replace(state, blocked=blocked) if blocked else state
    vectors = mapping.vectors(entry_frame(new), datetime.fromtimestamp(state.now(), UTC))
    records = [
        {
            **{c: 0 for c in ITEM_RECORD_COUNTERS},
            "category": (e.get("categories") or [""])[0],
            "created_at_s": float(e["created_at_s"]),
            "duration_seconds": float(e.get("duration_seconds") or 0.0),
            "price": float(e.get("price") or 0.0),
        }
        for _, e in new
    ]
    base: AnnIndex = state.index.base if isinstance(state.index, ExtendedIndex) else state.index
    ids = [*state.items.ids.to_list(), *(item_id for item_id, _ in new)]
    return replace(
        state,
        items=IdMap(ids).build_lookups(),
        item_matrix=np.vstack([state.item_matrix, vectors]),
        item_table=state.item_table.extended(records),
        index=ExtendedIndex(base, vectors),
        blocked=blocked,
    )


class LiveItems:
    """Follows the ``live-items`` document and extends loaded versions with it."""

    def __init__(self, store: OnlineStore, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._revision = 0
        self._entries: Entries = {}
        # version -> (revision, the loaded version it extends, the extended version)
        self._cache: dict[str, tuple[int, LoadedVersion, LoadedVersion]] = {}
        self._lock = threading.Lock()
        self._unreadable = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def posted(self) -> set[str]:
        """The available items of the document (posted since the last publish)."""
        return {i for i, e in self._entries.items() if e.get("available", True)}

    def blocked(self) -> set[str]:
        """The withdrawn items (for feeds answered without a loaded version)."""
        return {i for i, e in self._entries.items() if not e.get("available", True)}

    def refresh(self) -> bool:
        """Read the document; True when it changed. A failed read keeps what is in memory."""
        try:
            revision, entries = read_live_items(self.store)
        except FeedforgeError as exc:
            if not self._unreadable:
                logger.warning("could not read the live items (%s); keeping the last ones", exc)
            self._unreadable = True
            return False
        self._unreadable = False
        if revision == self._revision:
            return False
        with self._lock:
            self._revision, self._entries = revision, entries
        return True

    def apply(self, state: LoadedVersion) -> LoadedVersion:
        """``state`` extended with the live items (cached per version and revision)."""
        revision, entries = self._revision, self._entries
        if not entries:
            return state
        cached = self._cache.get(state.version)
        if cached is not None and cached[0] == revision and cached[1] is state:
            return cached[2]
        extended = extend_version(state, entries)
        with self._lock:
            self._cache = {
                **{v: c for v, c in self._cache.items() if v != state.version},
                state.version: (revision, state, extended),
            }
        return extended

    def start(self, current: Callable[[], LoadedVersion | None]) -> None:
        """Read now, then every ``refresh_s``; ``current()`` is the worker's loaded version,
        extended right after a change so requests find it built."""
        self.sync(current)
        self._thread = threading.Thread(
            target=self._loop, args=(current,), name="feedforge-live-items", daemon=True
        )
        self._thread.start()

    def sync(self, current: Callable[[], LoadedVersion | None]) -> None:
        """Read the document now and extend the current version if it changed."""
        self.refresh()
        state = current()
        if state is not None:
            self.apply(state)

    def _loop(self, current: Callable[[], LoadedVersion | None]) -> None:
        while not self._stopping.wait(self.refresh_s):
            try:
                self.sync(current)
            except Exception:  # the thread must outlive any one failed refresh
                logger.exception("refreshing the live items failed")

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()


def known_categories(state: LoadedVersion | None) -> set[str] | None:
    """The categories a posted item may have: those the version's content map was fitted
    with (else its items' primary categories; None before any version is loaded)."""
    if state is None:
        return None
    if state.content_map is not None:
        return set(state.content_map.vocabulary)
    return {c for c in state.item_table.vocabulary if c}


def store_items(
    workdir: Workdir,
    store: OnlineStore,
    live: LiveItems,
    current: Callable[[], LoadedVersion | None],
    items: Sequence[ItemUpdate],
    withdrawn: Sequence[str] = (),
) -> bool:
    """Store posted items and withdrawals: durably in the catalog's item updates first (the
    next publish folds them in), then in the store's live items, then this worker follows.

    Returns:
        Whether the live items were updated (False while the store is unavailable: the
        items are durable in the catalog and served from the next publish).

    Raises:
        OSError: the catalog's update file could not be written (nothing was stored).
    """
    now = datetime.now(UTC)
    frame = item_update_frame(items, now)
    if withdrawn:
        frame = pl.concat(
            [
                frame,
                pl.DataFrame(
                    {
                        "item_id": list(withdrawn),
                        "available": [False] * len(withdrawn),
                        "updated_at": [now] * len(withdrawn),
                    },
                    schema={
                        "item_id": pl.String,
                        "available": pl.Boolean,
                        "updated_at": pl.Datetime("us", "UTC"),
                    },
                ),
            ],
            how="diagonal_relaxed",
        )
    if not frame.height:
        return True
    append_item_updates(workdir, frame)
    stamp = now.timestamp()
    entries: dict[str, dict[str, Any]] = {
        i.item_id: {
            "categories": list(i.categories),
            "duration_seconds": i.duration_seconds,
            "price": i.price,
            "created_at_s": (i.created_at or now).timestamp(),
            "available": i.available,
            "updated_at_s": stamp,
        }
        for i in items
    }
    entries.update({item_id: {"available": False, "updated_at_s": stamp} for item_id in withdrawn})
    try:
        upsert_live_items(store, entries)
    except StoreError as exc:
        logger.warning("live items not updated (%s): served from the next publish", exc)
        return False
    live.sync(current)
    return True
