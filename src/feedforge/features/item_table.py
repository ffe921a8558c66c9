"""A published version's item feature snapshot as arrays, and the candidates' raw counters.

The service reads a version's item records (:func:`~feedforge.features.definitions.item_records`)
from the online store once, when it loads the version: they are immutable within it, and
decoding the candidates' JSON records on every request cost 10 ms of a 24 ms request for 500
candidates (the load benchmark's profile). :func:`raw_from_table` assembles one request's raw
counters by array indexing; the leakage tests check they equal the offline snapshot's
(:func:`~feedforge.features.definitions.snapshot_candidate_counters`).

A missing record (an item absent from the snapshot) or a record lacking a field (written by an
older publisher) takes the documented defaults: zero counts, age 0, duration and price 0,
category ``""``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feedforge.features.online import ITEM_RECORD_COUNTERS, request_raw

_FLOATS = (*ITEM_RECORD_COUNTERS, "duration_seconds", "price")


@dataclass(frozen=True)
class ItemTable:
    """Item records as arrays, row ``j`` = the version's item index ``j``.

    Attributes:
        values: Record field -> ``(n_items,)`` float64 (counters, ``duration_seconds``,
            ``price``; 0 where unknown).
        created_at_s: ``(n_items,)`` creation times, NaN where unknown.
        present: ``(n_items,)`` whether the item had a record.
        category_code: ``(n_items,)`` int32 position of each item's primary category in
            ``vocabulary`` (``""`` where unknown), so a request maps its user's clicks per
            category with one gather.
        vocabulary: The distinct primary categories, sorted.
    """

    values: dict[str, np.ndarray]
    created_at_s: np.ndarray
    present: np.ndarray
    category_code: np.ndarray
    vocabulary: list[str]

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any] | None]) -> ItemTable:
        """The table of one record per item (None: no record)."""
        n = len(records)
        values = {name: np.zeros(n) for name in _FLOATS}
        created = np.full(n, np.nan)
        category = [""] * n
        present = np.zeros(n, dtype=bool)
        for j, rec in enumerate(records):
            if rec is None:
                continue
            present[j] = True
            for name in _FLOATS:
                values[name][j] = rec.get(name, 0)
            stamp = rec.get("created_at_s")
            if stamp is not None:
                created[j] = stamp
            category[j] = rec.get("category", "")
        vocabulary = sorted(set(category))
        position = {name: code for code, name in enumerate(vocabulary)}
        codes = np.fromiter((position[c] for c in category), dtype=np.int32, count=n)
        return cls(values, created, present, codes, vocabulary)

    def extended(self, records: Sequence[dict[str, Any] | None]) -> ItemTable:
        """This table with one row per record appended (rows ``n, n + 1, ...``)."""
        more = ItemTable.from_records(records)
        vocabulary = sorted(set(self.vocabulary) | set(more.vocabulary))
        position = {name: code for code, name in enumerate(vocabulary)}
        remap_self = np.array([position[c] for c in self.vocabulary] or [0], dtype=np.int32)
        remap_more = np.array([position[c] for c in more.vocabulary] or [0], dtype=np.int32)
        return ItemTable(
            values={k: np.concatenate([v, more.values[k]]) for k, v in self.values.items()},
            created_at_s=np.concatenate([self.created_at_s, more.created_at_s]),
            present=np.concatenate([self.present, more.present]),
            category_code=np.concatenate(
                [remap_self[self.category_code], remap_more[more.category_code]]
            ).astype(np.int32),
            vocabulary=vocabulary,
        )

    def categories(self, idx: np.ndarray) -> list[str]:
        """The primary categories of items ``idx`` (``""`` where unknown)."""
        return [self.vocabulary[code] for code in self.category_code[idx].tolist()]

    def age_days(self, idx: np.ndarray, now_s: float) -> np.ndarray:
        """``(N,)`` ages in days of items ``idx`` at ``now_s`` (NaN when unknown)."""
        return (now_s - self.created_at_s[idx]) / 86_400.0


def raw_from_table(
    user: dict[str, Any] | None,
    table: ItemTable,
    idx: np.ndarray,
    now_s: float,
    device: str | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Raw counters of one user's candidates ``idx`` (item indices of the table).

    Args:
        user: The user's record, or None (defaults).
        table: The version's item snapshot.
        idx: ``(N,)`` candidate item indices.
        now_s: Scoring time, epoch seconds (item age and hour of day).
        device: The request's device; None: the user's last device.

    Returns:
        The raw counters (each ``(N,)``) and how many candidates had no item record.
    """
    user = user or {}
    idx = np.asarray(idx, dtype=np.int64)
    n = len(idx)
    present = table.present[idx]
    raw = request_raw(user, n, now_s, device)
    for c in ITEM_RECORD_COUNTERS:
        raw[c] = table.values[c][idx].copy()
    raw["item_duration_seconds"] = table.values["duration_seconds"][idx].copy()
    raw["item_price"] = table.values["price"][idx].copy()
    created = table.created_at_s[idx]
    raw["item_age_seconds"] = np.where(np.isnan(created), 0.0, now_s - created)
    category_clicks = user.get("category_clicks", {})
    clicks = np.zeros(n)
    if category_clicks:
        per_code = np.array([float(category_clicks.get(c, 0)) for c in table.vocabulary])
        clicks = per_code[table.category_code[idx]]
    raw["user_category_clicks"] = np.where(present, clicks, 0.0)
    return raw, int(n - present.sum())
