"""The last current version of each store, remembered in the work directory.

A service that starts while its store is down serves a degraded feed from the popular list of
the version the store last had current (:class:`feedforge.serving.fallback.DiskFallback`).
The newest bundle on disk is not that version: a rollback makes an older one current, and
several stores (namespaces, SQLite files) may publish into one shared bundle directory. So
whoever sees or moves a store's ``current`` pointer writes down the version and its popular
list: ``feedforge publish`` and ``feedforge rollback`` when they flip it, a service when it
loads a version. One small JSON file per store, named by a hash of
:meth:`~feedforge.store.base.OnlineStore.identity`::

    WORKDIR/serving/current/<sha256(identity)[:24]>.json
        {"identity": ..., "version": ..., "popular": [...], "written_at": ...}

Written atomically (temporary file, fsync, rename), so a reader sees the old record or the
new one. Several processes may write at once; the last rename wins, and each writes what it
has just read or set, so a stale one is replaced by the next load, publish or rollback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from feedforge.artifacts import write_json_atomic
from feedforge.store.base import OnlineStore

logger = logging.getLogger("feedforge.store")


def _path(directory: Path, store: OnlineStore) -> Path:
    digest = hashlib.sha256(store.identity().encode("utf-8")).hexdigest()[:24]
    return directory / f"{digest}.json"


def remember_current(
    directory: Path, store: OnlineStore, version: str, popular: Sequence[str]
) -> None:
    """Record ``version`` (and its popular list) as ``store``'s current one.

    Best effort: a failure is logged, never raised (the pointer flip or load it follows has
    happened; only the fallback of a later start with the store down is affected).
    """
    if not popular:
        return  # nothing to fall back to
    path = _path(directory, store)
    if _read(path) == (version, list(popular)):
        return  # the common case on a service load: nothing changed, no write
    record = {
        "identity": store.identity(),
        "version": version,
        "popular": [str(item) for item in popular],
        "written_at": time.time(),
    }
    try:
        write_json_atomic(path, record)
    except OSError as exc:
        logger.warning("could not remember the current version in %s: %s", path, exc)


def recall_current(directory: Path, store: OnlineStore) -> tuple[str, list[str]] | None:
    """``(version, popular item ids)`` last remembered for ``store``, or None."""
    return _read(_path(directory, store))


def _read(path: Path) -> tuple[str, list[str]] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        version, popular = record["version"], record["popular"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(version, str) or not isinstance(popular, list) or not popular:
        return None
    return version, [str(item) for item in popular]
