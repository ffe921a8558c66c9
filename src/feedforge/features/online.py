"""Online feature records: the snapshot as the online store holds it.

One JSON record per user and per item. The publisher writes them (:func:`user_records`,
:func:`item_records`); the service reads them back into raw counters with
:func:`request_raw` and :func:`~feedforge.features.item_table.raw_from_table`, the same
numbers :func:`~feedforge.features.offline.snapshot_candidate_counters` gives offline.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from feedforge.features.definitions import DEVICE_CODES, SERVING_POSITION, WINDOWS

USER_RECORD_COUNTERS: tuple[str, ...] = (
    "user_impressions",
    "user_clicks",
    *(f"user_{n}_{w}" for w in WINDOWS for n in ("impressions", "clicks")),
)
ITEM_RECORD_COUNTERS: tuple[str, ...] = (
    "item_impressions",
    "item_clicks",
    *(f"item_{n}_{w}" for w in WINDOWS for n in ("impressions", "clicks")),
)


def user_records(
    users: pl.DataFrame, user_categories: pl.DataFrame, seen: pl.DataFrame
) -> tuple[list[str], list[dict[str, Any]]]:
    """One record per user: counters (:data:`USER_RECORD_COUNTERS`), the last device, clicks
    per category and the items already consumed."""
    cats = user_categories.group_by("user_id").agg(
        pl.struct("category", "user_category_clicks").alias("cats")
    )
    frame = (
        users.join(cats, on="user_id", how="full", coalesce=True)
        .join(seen, on="user_id", how="full", coalesce=True)
        .with_columns(
            *(pl.col(c).fill_null(0) for c in USER_RECORD_COUNTERS),
            pl.col("user_last_device").fill_null(0),
        )
    )
    ids = frame.get_column("user_id").to_list()
    records = [
        {
            **{c: int(row[c]) for c in USER_RECORD_COUNTERS},
            "last_device": int(row["user_last_device"]),
            "category_clicks": {
                c["category"]: int(c["user_category_clicks"]) for c in (row["cats"] or [])
            },
            "seen": row["seen"] or [],
        }
        for row in frame.iter_rows(named=True)
    ]
    return ids, records


def item_records(items: pl.DataFrame) -> tuple[list[str], list[dict[str, Any]]]:
    """One record per item: counters (:data:`ITEM_RECORD_COUNTERS`), primary category,
    creation time (epoch seconds), duration and price."""
    frame = items.with_columns((pl.col("created_at").dt.epoch("us") / 1e6).alias("created_at_s"))
    ids = frame.get_column("item_id").to_list()
    records = [
        {
            **{c: int(row[c]) for c in ITEM_RECORD_COUNTERS},
            "category": row["category"],
            "created_at_s": row["created_at_s"],
            "duration_seconds": float(row["item_duration_seconds"]),
            "price": float(row["item_price"]),
        }
        for row in frame.iter_rows(named=True)
    ]
    return ids, records


def request_raw(
    user: dict[str, Any] | None, n: int, now_s: float, device: str | None = None
) -> dict[str, np.ndarray]:
    """The raw counters every candidate of one request shares (each ``(n,)``): the user's
    record counters, the serving position, the hour of ``now_s`` and the device (the
    request's, else the user's last)."""
    user = user or {}
    raw: dict[str, np.ndarray] = {
        c: np.full(n, float(user.get(c, 0))) for c in USER_RECORD_COUNTERS
    }
    raw["position"] = np.full(n, float(SERVING_POSITION))
    raw["hour"] = np.full(n, float(datetime.fromtimestamp(now_s, UTC).hour))
    code = DEVICE_CODES.get(device or "", 0)
    raw["device_code"] = np.full(n, float(code or user.get("last_device", 0)))
    return raw
