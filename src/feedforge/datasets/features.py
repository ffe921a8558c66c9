"""Ranking features: one definition for training (point in time) and serving (snapshot).

Features are derived in two steps:

1. **Raw counters** (:data:`RAW_COUNTERS`), counted only from events *strictly before* the
   moment of scoring: for a logged impression, before its timestamp (computed with as-of joins
   that exclude exact matches); for serving, before the publish cutoff (a snapshot written to
   the online store).
2. **Derived features** (:data:`FEATURES`), computed from the raw counters by
   :func:`derive_features`, the single formula both paths call:

   ============================  ===========================================================
   ``position``                  impression slot (0 = top); fixed to :data:`SERVING_POSITION`
                                 when serving, so the model's position effect is a constant
                                 offset that cannot reorder candidates (position de-biasing)
   ``user_impressions_log``      ``log1p(user impressions)``, all time (also ``_1d``/``_7d``:
                                 the last day / week before the moment of scoring)
   ``user_ctr``                  ``(user clicks + 1) / (user impressions + 10)`` (and
                                 ``_1d``, ``_7d``)
   ``item_impressions_log``      ``log1p(item impressions)`` (and ``_1d``, ``_7d``)
   ``item_ctr``                  ``(item clicks + 1) / (item impressions + 10)`` (and ``_1d``,
                                 ``_7d``: smoothed CTR over recent windows, i.e. trending)
   ``item_age_days_log``         ``log1p(max(0, age in days))`` at the moment of scoring
   ``item_duration_log``         ``log1p(duration in minutes)`` (0 when unknown)
   ``item_price_log``            ``log1p(price)`` (0 for free or unknown)
   ``user_category_affinity``    ``(user clicks in the item's primary category + 1)
                                 / (user clicks + n_categories)`` (user x item cross)
   ``retrieval_score``           dot product of the retrieval model's user and item
                                 embeddings (added by the training stage; 0 when unknown)
   ``hour_sin``, ``hour_cos``    the UTC hour of day of the impression (serving: of the
                                 request) on the unit circle
   ``device_tv`` ... ``_web``    one-hot device of the request; when the request names none,
                                 the user's most recent impression's device before the moment
                                 of scoring (all 0 when unknown)
   ============================  ===========================================================

Windowed counters count events in ``[t - w, t)``; like every counter they exclude events at
the moment of scoring itself.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

WINDOWS: dict[str, timedelta] = {"1d": timedelta(days=1), "7d": timedelta(days=7)}
"""The recent windows of the windowed counters (suffix -> length)."""

DEVICES: tuple[str, ...] = ("tv", "mobile", "web")
"""Devices with a one-hot feature; ``device_code`` ``j + 1`` is ``DEVICES[j]``, 0 unknown."""
_DEVICE_CODES: dict[str, int] = {d: j + 1 for j, d in enumerate(DEVICES)}

_WINDOWED = ("user_impressions", "user_clicks", "item_impressions", "item_clicks")

RAW_COUNTERS: tuple[str, ...] = (
    "position",
    "user_impressions",
    "user_clicks",
    "item_impressions",
    "item_clicks",
    "user_category_clicks",
    "item_age_seconds",
    *(f"{name}_{w}" for w in WINDOWS for name in _WINDOWED),
    "item_duration_seconds",
    "item_price",
    "hour",
    "device_code",
)

FEATURES: tuple[str, ...] = (
    "position",
    "user_impressions_log",
    "user_ctr",
    "item_impressions_log",
    "item_ctr",
    *(
        f"{name}_{w}"
        for w in WINDOWS
        for name in ("user_impressions_log", "user_ctr", "item_impressions_log", "item_ctr")
    ),
    "item_age_days_log",
    "item_duration_log",
    "item_price_log",
    "user_category_affinity",
    "retrieval_score",
    "hour_sin",
    "hour_cos",
    *(f"device_{d}" for d in DEVICES),
)

SERVING_POSITION = 0

_CTR_PRIOR_CLICKS = 1.0
_CTR_PRIOR_IMPRESSIONS = 10.0


def derive_features(
    raw: dict[str, np.ndarray], retrieval_score: np.ndarray, n_categories: int
) -> np.ndarray:
    """Turn raw counters into the model's feature matrix.

    Args:
        raw: Each name of :data:`RAW_COUNTERS` -> ``(N,)`` array.
        retrieval_score: ``(N,)`` retrieval scores.
        n_categories: Number of categories in the catalog (smoothing of the affinity).

    Returns:
        ``(N, len(FEATURES))`` float64 matrix, columns in :data:`FEATURES` order.
    """
    f = {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()}

    def ctr(clicks: np.ndarray, impressions: np.ndarray) -> np.ndarray:
        return (clicks + _CTR_PRIOR_CLICKS) / (impressions + _CTR_PRIOR_IMPRESSIONS)

    columns = {
        "position": f["position"],
        "item_age_days_log": np.log1p(np.maximum(f["item_age_seconds"], 0.0) / 86_400.0),
        "item_duration_log": np.log1p(np.maximum(f["item_duration_seconds"], 0.0) / 60.0),
        "item_price_log": np.log1p(np.maximum(f["item_price"], 0.0)),
        "user_category_affinity": (f["user_category_clicks"] + 1.0)
        / (f["user_clicks"] + max(n_categories, 1)),
        "retrieval_score": np.asarray(retrieval_score, dtype=np.float64),
        "hour_sin": np.sin(2 * np.pi * f["hour"] / 24.0),
        "hour_cos": np.cos(2 * np.pi * f["hour"] / 24.0),
    }
    for suffix in ("", *(f"_{w}" for w in WINDOWS)):
        for who in ("user", "item"):
            shown, clicks = f[f"{who}_impressions{suffix}"], f[f"{who}_clicks{suffix}"]
            columns[f"{who}_impressions_log{suffix}"] = np.log1p(shown)
            columns[f"{who}_ctr{suffix}"] = ctr(clicks, shown)
    for j, device in enumerate(DEVICES):
        columns[f"device_{device}"] = (f["device_code"] == j + 1).astype(np.float64)
    return np.column_stack([columns[name] for name in FEATURES])


def device_code(device: pl.Expr) -> pl.Expr:
    """The ``device_code`` raw counter of a device-name column: ``j + 1`` for ``DEVICES[j]``,
    else 0 (unknown or null)."""
    return device.replace_strict(_DEVICE_CODES, default=0, return_dtype=pl.Int64).fill_null(0)


def item_categories(items: pl.DataFrame) -> pl.DataFrame:
    """``item_id``, ``category`` (the primary, i.e. first, category; ``""`` if none),
    ``created_at``, ``item_duration_seconds`` and ``item_price`` (0 when unknown) of each
    catalog item."""
    return items.select(
        "item_id",
        pl.col("categories").list.first().fill_null("").alias("category"),
        "created_at",
        pl.col("duration_seconds").cast(pl.Float64).fill_null(0.0).alias("item_duration_seconds"),
        pl.col("price").cast(pl.Float64).fill_null(0.0).alias("item_price"),
    )


def _counts_asof(
    left: pl.LazyFrame, events: pl.LazyFrame, by: list[str], name: str
) -> pl.LazyFrame:
    """Join to ``left`` the number of ``events`` with the same ``by`` keys and a timestamp
    strictly before each left row's timestamp."""
    cumulative = (
        events.group_by([*by, "timestamp"])
        .agg(pl.len().alias("_n"))
        .sort([*by, "timestamp"])
        .with_columns(pl.col("_n").cum_sum().over(by).alias(name))
        .drop("_n")
        .sort("timestamp")
    )
    return (
        left.sort("timestamp")
        .join_asof(
            cumulative,
            on="timestamp",
            by=by,
            strategy="backward",
            allow_exact_matches=False,
            # Both sides are sorted on the timestamp just above, so within every ``by`` group
            # too; polars cannot verify that with groups and would warn on every build.
            check_sortedness=False,
        )
        .with_columns(pl.col(name).fill_null(0))
    )


def _windowed_asof(
    left: pl.LazyFrame, events: pl.LazyFrame, by: list[str], name: str
) -> pl.LazyFrame:
    """Add ``<name>_<w>`` for each of :data:`WINDOWS`: ``events`` in ``[t - w, t)``, i.e. the
    all-time count ``name`` (already on ``left``) minus the count strictly before ``t - w``."""
    for suffix, length in WINDOWS.items():
        shifted = left.with_columns(
            pl.col("timestamp").alias("_at"), (pl.col("timestamp") - length).alias("timestamp")
        )
        left = (
            _counts_asof(shifted, events, by, "_before")
            .with_columns(
                pl.col("_at").alias("timestamp"),
                (pl.col(name) - pl.col("_before")).alias(f"{name}_{suffix}"),
            )
            .drop("_at", "_before")
        )
    return left


def _device_events(events: pl.LazyFrame) -> pl.LazyFrame:
    """``user_id, timestamp, _device``: the device code of each user's impressions, one row
    per (user, instant); the largest code when one instant names several."""
    return (
        events.filter((pl.col("event_type") == "impression") & pl.col("device").is_not_null())
        .group_by("user_id", "timestamp")
        .agg(device_code(pl.col("device")).max().alias("_device"))
    )


def point_in_time_counters(
    impressions: pl.LazyFrame, events: pl.LazyFrame, items: pl.DataFrame
) -> pl.LazyFrame:
    """Raw counters for each impression from events strictly before its timestamp.

    Args:
        impressions: Rows with ``event_id``, ``timestamp``, ``user_id``, ``item_id``,
            ``position`` and optionally ``device`` (the request's; null or absent: the user's
            last impression device before the timestamp).
        events: The whole event log (impressions and clicks are counted from it).
        items: The catalog (for categories, creation times, durations and prices).

    Returns:
        ``impressions`` plus every column of :data:`RAW_COUNTERS`.
    """
    if "device" not in impressions.collect_schema().names():
        impressions = impressions.with_columns(pl.lit(None, pl.String).alias("device"))
    cats = item_categories(items).lazy()
    shown = events.filter(pl.col("event_type") == "impression").select(
        "user_id", "item_id", "timestamp"
    )
    clicks = (
        events.filter(pl.col("event_type") == "click")
        .select("user_id", "item_id", "timestamp")
        .join(cats.select("item_id", "category"), on="item_id", how="left")
        .with_columns(pl.col("category").fill_null(""))
    )
    out = impressions.join(cats, on="item_id", how="left").with_columns(
        pl.col("category").fill_null(""),
        pl.col("item_duration_seconds").fill_null(0.0),
        pl.col("item_price").fill_null(0.0),
    )
    out = _counts_asof(out, shown, ["user_id"], "user_impressions")
    out = _counts_asof(out, clicks, ["user_id"], "user_clicks")
    out = _counts_asof(out, shown, ["item_id"], "item_impressions")
    out = _counts_asof(out, clicks, ["item_id"], "item_clicks")
    out = _counts_asof(out, clicks, ["user_id", "category"], "user_category_clicks")
    out = _windowed_asof(out, shown, ["user_id"], "user_impressions")
    out = _windowed_asof(out, clicks, ["user_id"], "user_clicks")
    out = _windowed_asof(out, shown, ["item_id"], "item_impressions")
    out = _windowed_asof(out, clicks, ["item_id"], "item_clicks")
    last_device = _device_events(events).sort("timestamp")
    out = out.sort("timestamp").join_asof(
        last_device,
        on="timestamp",
        by="user_id",
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    return out.with_columns(
        ((pl.col("timestamp") - pl.col("created_at")).dt.total_microseconds() / 1e6)
        .fill_null(0.0)
        .alias("item_age_seconds"),
        pl.col("position").fill_null(SERVING_POSITION),
        pl.col("timestamp").dt.hour().cast(pl.Int64).alias("hour"),
        pl.when(device_code(pl.col("device")) > 0)
        .then(device_code(pl.col("device")))
        .otherwise(pl.col("_device").fill_null(0))
        .alias("device_code"),
    ).drop("created_at", "_device")


def _window_sums(cutoff: datetime, prefix: str) -> list[pl.Expr]:
    """Impressions and clicks in each window ``[cutoff - w, cutoff)``, as ``<prefix>_..._<w>``."""
    exprs = []
    for suffix, length in WINDOWS.items():
        recent = pl.col("timestamp") >= cutoff - length
        for kind, name in (("impression", "impressions"), ("click", "clicks")):
            hit = ((pl.col("event_type") == kind) & recent).cast(pl.Int64)
            exprs.append(hit.sum().alias(f"{prefix}_{name}_{suffix}"))
    return exprs


def snapshot_counters(
    events: pl.LazyFrame, items: pl.DataFrame, cutoff: datetime
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Counters from every event strictly before ``cutoff``, for the online store.

    Returns:
        ``users`` (user_id, user_impressions, user_clicks, their windowed counts and
        ``user_last_device``, the device code of the user's last impression), ``items``
        (item_id, category, created_at, item_duration_seconds, item_price, item_impressions,
        item_clicks and their windowed counts; catalog items and any other item with events
        before ``cutoff``) and ``user_categories`` (user_id, category, user_category_clicks).
    """
    cats = item_categories(items)
    before = events.filter(pl.col("timestamp") < cutoff)
    is_imp = (pl.col("event_type") == "impression").cast(pl.Int64)
    is_clk = (pl.col("event_type") == "click").cast(pl.Int64)
    last_device = (
        _device_events(before)
        .sort("timestamp")
        .group_by("user_id")
        .agg(pl.col("_device").last().alias("user_last_device"))
    )
    users = (
        before.group_by("user_id")
        .agg(
            is_imp.sum().alias("user_impressions"),
            is_clk.sum().alias("user_clicks"),
            *_window_sums(cutoff, "user"),
        )
        .join(last_device, on="user_id", how="left")
        .with_columns(pl.col("user_last_device").fill_null(0))
        .collect()
    )
    item_counts = (
        before.group_by("item_id")
        .agg(
            is_imp.sum().alias("item_impressions"),
            is_clk.sum().alias("item_clicks"),
            *_window_sums(cutoff, "item"),
        )
        .collect()
    )
    # A full join: an item with events but no catalog row is counted too (category "", no
    # creation time), exactly as point_in_time_counters counts it for training.
    counted = [c for c in item_counts.columns if c != "item_id"]
    item_frame = cats.join(item_counts, on="item_id", how="full", coalesce=True).with_columns(
        pl.col("category").fill_null(""),
        pl.col("item_duration_seconds").fill_null(0.0),
        pl.col("item_price").fill_null(0.0),
        *(pl.col(c).fill_null(0) for c in counted),
    )
    user_categories = (
        before.filter(pl.col("event_type") == "click")
        .join(cats.lazy().select("item_id", "category"), on="item_id", how="left")
        .with_columns(pl.col("category").fill_null(""))
        .group_by("user_id", "category")
        .agg(pl.len().alias("user_category_clicks"))
        .collect()
    )
    return users, item_frame, user_categories


def retrieval_scores(
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
) -> np.ndarray:
    """Row-wise dot products ``<U[user_idx[n]], V[item_idx[n]]>``; 0 where an index is < 0.

    Args:
        user_embeddings: ``(n_users, D)``.
        item_embeddings: ``(n_items, D)``.
        user_idx: ``(N,)`` user indices, ``-1`` for unknown users.
        item_idx: ``(N,)`` item indices, ``-1`` for unknown items.

    Returns:
        ``(N,)`` float64 scores.
    """
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    known = (user_idx >= 0) & (item_idx >= 0)
    out = np.zeros(len(user_idx), dtype=np.float64)
    if known.any():
        u = user_embeddings[user_idx[known]]
        v = item_embeddings[item_idx[known]]
        out[known] = np.einsum("nd,nd->n", u, v)
    return out


def feature_matrix(
    frame: pl.DataFrame,
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    n_categories: int,
) -> np.ndarray:
    """The ``(N, len(FEATURES))`` matrix of a frame holding :data:`RAW_COUNTERS` and the
    ``user_idx``/``item_idx`` columns (null where unknown)."""
    raw = {name: frame.get_column(name).to_numpy() for name in RAW_COUNTERS}
    scores = retrieval_scores(
        user_embeddings,
        item_embeddings,
        frame.get_column("user_idx").fill_null(-1).to_numpy(),
        frame.get_column("item_idx").fill_null(-1).to_numpy(),
    )
    return derive_features(raw, scores, n_categories)


def snapshot_candidate_counters(
    candidates: pl.DataFrame,
    snapshot: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    now: datetime,
    device: str | None = None,
) -> pl.DataFrame:
    """Raw counters of (user, candidate item) pairs from a :func:`snapshot_counters` snapshot.

    Args:
        candidates: Rows with ``user_id`` and ``item_id`` (any other columns are kept).
        snapshot: ``(users, items, user_categories)`` from :func:`snapshot_counters`.
        now: The scoring time (item age, hour). ``position`` is :data:`SERVING_POSITION`.
        device: The request's device; ``None``: each user's last impression device.
    """
    users, items, user_categories = snapshot
    out = (
        candidates.with_row_index("_row")
        .join(users, on="user_id", how="left")
        .join(items, on="item_id", how="left")
        .with_columns(pl.col("category").fill_null(""))
        .join(user_categories, on=["user_id", "category"], how="left")
        .sort("_row")
        .drop("_row")
    )
    counts = [
        c for c in RAW_COUNTERS if c not in ("position", "item_age_seconds", "hour", "device_code")
    ]
    requested = device_code(pl.lit(device, dtype=pl.String))
    return out.with_columns(
        pl.lit(SERVING_POSITION).alias("position"),
        *(pl.col(c).fill_null(0) for c in counts),
        ((pl.lit(now) - pl.col("created_at")).dt.total_microseconds() / 1e6)
        .fill_null(0.0)
        .alias("item_age_seconds"),
        pl.lit(now.astimezone(UTC).hour, dtype=pl.Int64).alias("hour"),
        pl.when(requested > 0)
        .then(requested)
        .otherwise(pl.col("user_last_device").fill_null(0))
        .alias("device_code"),
    )


# -- online-store records -----------------------------------------------------------------
# The snapshot as the online store holds it: one JSON record per user and per item. The
# publisher writes them (:func:`user_records`, :func:`item_records`); the service reads them
# back into raw counters with :func:`~feedforge.datasets.item_table.raw_from_table`, the
# same numbers :func:`snapshot_candidate_counters` gives offline.

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
    code = _DEVICE_CODES.get(device or "", 0)
    raw["device_code"] = np.full(n, float(code or user.get("last_device", 0)))
    return raw
