"""Offline feature computation: raw counters from the event log, at a point in time.

Two ways of counting the raw counters of :mod:`feedforge.features.definitions`, both from
events strictly before the moment of scoring:

* :func:`point_in_time_counters`: for each logged impression, before its own timestamp (as-of
  joins that exclude exact matches), for training rows;
* :func:`snapshot_counters`: before one cutoff for every user and item (the snapshot the
  publisher writes to the online store, and the one evaluation scores the test window with);
  :func:`snapshot_candidate_counters` reads (user, item) pairs back out of it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from feedforge.features.definitions import (
    RAW_COUNTERS,
    SERVING_POSITION,
    WINDOWS,
    device_code,
)


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


def snapshot_candidate_counters(
    candidates: pl.DataFrame,
    snapshot: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    now: datetime | pl.Expr,
    device: str | pl.Expr | None = None,
) -> pl.DataFrame:
    """Raw counters of (user, candidate item) pairs from a :func:`snapshot_counters` snapshot.

    Args:
        candidates: Rows with ``user_id`` and ``item_id`` (any other columns are kept).
        snapshot: ``(users, items, user_categories)`` from :func:`snapshot_counters`.
        now: The scoring time (item age, hour): one time for every row, or an expression of
            ``candidates`` giving each row's own (a UTC ``Datetime`` column, e.g. the logged
            requests a skew check recomputes). ``position`` is :data:`SERVING_POSITION`.
        device: The request's device; ``None``: each user's last impression device. An
            expression of ``candidates`` gives each row's own (null: the user's last).
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
    if isinstance(now, datetime):
        at, hour = pl.lit(now), pl.lit(now.astimezone(UTC).hour, dtype=pl.Int64)
    else:
        at, hour = now, now.dt.convert_time_zone("UTC").dt.hour().cast(pl.Int64)
    requested = device_code(
        device if isinstance(device, pl.Expr) else pl.lit(device, dtype=pl.String)
    )
    return out.with_columns(
        pl.lit(SERVING_POSITION).alias("position"),
        *(pl.col(c).fill_null(0) for c in counts),
        ((at - pl.col("created_at")).dt.total_microseconds() / 1e6)
        .fill_null(0.0)
        .alias("item_age_seconds"),
        hour.alias("hour"),
        pl.when(requested > 0)
        .then(requested)
        .otherwise(pl.col("user_last_device").fill_null(0))
        .alias("device_code"),
    )


def snapshot_time_of(events: pl.LazyFrame) -> datetime:
    """The feature snapshot time of a log: just after its last event (now when empty)."""
    last = events.select(pl.col("timestamp").max()).collect().item()
    return (last or datetime.now(UTC)) + timedelta(microseconds=1)
