"""Catalog items changed since the last publish, as one revisioned store document.

``POST /items`` and ``DELETE /items/{id}`` write the change durably to the catalog's item
updates (:func:`~feedforge.events.catalog.append_item_updates`, what the next publish folds
in) and then here, ``live-items``: ``{"items": {item_id: {"categories", "duration_seconds",
"price", "created_at_s", "available", "updated_at_s"}}}``, under compare and set
(:meth:`~feedforge.store.base.OnlineStore.put_document`), so concurrent writers on several
hosts never lose each other's items. Every serving worker follows the document
(:mod:`feedforge.serving.live`): a new item gets the serving version's content vector and
joins its candidates, a withdrawn one leaves every feed, within one refresh.

A publish that made a version current removes the available entries it folded in (updated
before it read the catalog), so the document holds only what no version serves yet, plus the
withdrawals (kept: an older version brought back by a rollback may still hold the item).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from feedforge.errors import StoreConflictError
from feedforge.store.base import OnlineStore

DOCUMENT = "live-items"
_MAX_ATTEMPTS = 20

Entries = dict[str, dict[str, Any]]


def read_live_items(store: OnlineStore) -> tuple[int, Entries]:
    """``(revision, {item_id: entry})`` of the document (``(0, {})`` before any write)."""
    revision, body = store.get_document(DOCUMENT)
    items = (body or {}).get("items") or {}
    return revision, {str(k): dict(v) for k, v in items.items()}


def update_live_items(store: OnlineStore, change: Callable[[Entries], Entries]) -> int:
    """Apply ``change`` to the entries under compare and set, retrying on conflict.

    Returns:
        The document's new revision.

    Raises:
        StoreConflictError: it kept changing under :data:`_MAX_ATTEMPTS` attempts.
        StoreError: the store failed.
    """
    for _ in range(_MAX_ATTEMPTS):
        revision, entries = read_live_items(store)
        try:
            return store.put_document(DOCUMENT, {"items": change(entries)}, revision)
        except StoreConflictError:
            continue
    raise StoreConflictError(
        f"the {DOCUMENT} document kept changing under {_MAX_ATTEMPTS} attempts; try again"
    )


def upsert_live_items(store: OnlineStore, entries: Mapping[str, Mapping[str, Any]]) -> int:
    """Add or replace entries (a newer ``updated_at_s`` wins over an older one)."""

    def change(current: Entries) -> Entries:
        for item_id, entry in entries.items():
            old = current.get(item_id)
            if old is None or float(old.get("updated_at_s", 0)) <= float(entry["updated_at_s"]):
                current[item_id] = dict(entry)
        return current

    return update_live_items(store, change)


def prune_folded(store: OnlineStore, folded_before_s: float) -> int:
    """Remove available entries updated before ``folded_before_s`` (a current version's
    catalog read time): that version serves them. Returns the entries removed."""
    removed = 0

    def change(current: Entries) -> Entries:
        nonlocal removed
        kept = {
            item_id: entry
            for item_id, entry in current.items()
            if not entry.get("available", True)
            or float(entry.get("updated_at_s", 0)) >= folded_before_s
        }
        removed = len(current) - len(kept)
        return kept

    if read_live_items(store)[1]:
        update_live_items(store, change)
    return removed
