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
   ``user_impressions_log``      ``log1p(user impressions)``
   ``user_ctr``                  ``(user clicks + 1) / (user impressions + 10)``
   ``item_impressions_log``      ``log1p(item impressions)``
   ``item_ctr``                  ``(item clicks + 1) / (item impressions + 10)``
   ``item_age_days_log``         ``log1p(max(0, age in days))`` at the moment of scoring
   ``user_category_affinity``    ``(user clicks in the item's primary category + 1)
                                 / (user clicks + n_categories)``
   ``retrieval_score``           dot product of the retrieval model's user and item
                                 embeddings (added by the training stage; 0 when unknown)
   ============================  ===========================================================
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

RAW_COUNTERS: tuple[str, ...] = (
    "position",
    "user_impressions",
    "user_clicks",
    "item_impressions",
    "item_clicks",
    "user_category_clicks",
    "item_age_seconds",
)

FEATURES: tuple[str, ...] = (
    "position",
    "user_impressions_log",
    "user_ctr",
    "item_impressions_log",
    "item_ctr",
    "item_age_days_log",
    "user_category_affinity",
    "retrieval_score",
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
    user_clicks = f["user_clicks"]
    columns = {
        "position": f["position"],
        "user_impressions_log": np.log1p(f["user_impressions"]),
        "user_ctr": (user_clicks + _CTR_PRIOR_CLICKS)
        / (f["user_impressions"] + _CTR_PRIOR_IMPRESSIONS),
        "item_impressions_log": np.log1p(f["item_impressions"]),
        "item_ctr": (f["item_clicks"] + _CTR_PRIOR_CLICKS)
        / (f["item_impressions"] + _CTR_PRIOR_IMPRESSIONS),
        "item_age_days_log": np.log1p(np.maximum(f["item_age_seconds"], 0.0) / 86_400.0),
        "user_category_affinity": (f["user_category_clicks"] + 1.0)
        / (user_clicks + max(n_categories, 1)),
        "retrieval_score": np.asarray(retrieval_score, dtype=np.float64),
    }
    return np.column_stack([columns[name] for name in FEATURES])


def item_categories(items: pl.DataFrame) -> pl.DataFrame:
    """``item_id``, ``category`` (the primary, i.e. first, category; ``""`` if none) and
    ``created_at`` of each catalog item."""
    return items.select(
        "item_id",
        pl.col("categories").list.first().fill_null("").alias("category"),
        "created_at",
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


def point_in_time_counters(
    impressions: pl.LazyFrame, events: pl.LazyFrame, items: pl.DataFrame
) -> pl.LazyFrame:
    """Raw counters for each impression from events strictly before its timestamp.

    Args:
        impressions: Rows with ``event_id``, ``timestamp``, ``user_id``, ``item_id`` and
            ``position``.
        events: The whole event log (impressions and clicks are counted from it).
        items: The catalog (for categories and creation times).

    Returns:
        ``impressions`` plus every column of :data:`RAW_COUNTERS`.
    """
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
        pl.col("category").fill_null("")
    )
    out = _counts_asof(out, shown, ["user_id"], "user_impressions")
    out = _counts_asof(out, clicks, ["user_id"], "user_clicks")
    out = _counts_asof(out, shown, ["item_id"], "item_impressions")
    out = _counts_asof(out, clicks, ["item_id"], "item_clicks")
    out = _counts_asof(out, clicks, ["user_id", "category"], "user_category_clicks")
    return out.with_columns(
        ((pl.col("timestamp") - pl.col("created_at")).dt.total_microseconds() / 1e6)
        .fill_null(0.0)
        .alias("item_age_seconds"),
        pl.col("position").fill_null(SERVING_POSITION),
    ).drop("created_at")


def snapshot_counters(
    events: pl.LazyFrame, items: pl.DataFrame, cutoff: datetime
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Counters from every event strictly before ``cutoff``, for the online store.

    Returns:
        ``users`` (user_id, user_impressions, user_clicks), ``items`` (item_id, category,
        created_at, item_impressions, item_clicks; catalog items and any other item with
        events before ``cutoff``) and ``user_categories`` (user_id, category,
        user_category_clicks).
    """
    cats = item_categories(items)
    before = events.filter(pl.col("timestamp") < cutoff)
    is_imp = (pl.col("event_type") == "impression").cast(pl.Int64)
    is_clk = (pl.col("event_type") == "click").cast(pl.Int64)
    users = (
        before.group_by("user_id")
        .agg(is_imp.sum().alias("user_impressions"), is_clk.sum().alias("user_clicks"))
        .collect()
    )
    item_counts = (
        before.group_by("item_id")
        .agg(is_imp.sum().alias("item_impressions"), is_clk.sum().alias("item_clicks"))
        .collect()
    )
    # A full join: an item with events but no catalog row is counted too (category "", no
    # creation time), exactly as point_in_time_counters counts it for training.
    item_frame = cats.join(item_counts, on="item_id", how="full", coalesce=True).with_columns(
        pl.col("category").fill_null(""),
        pl.col("item_impressions").fill_null(0),
        pl.col("item_clicks").fill_null(0),
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
) -> pl.DataFrame:
    """Raw counters of (user, candidate item) pairs from a :func:`snapshot_counters` snapshot.

    Args:
        candidates: Rows with ``user_id`` and ``item_id`` (any other columns are kept).
        snapshot: ``(users, items, user_categories)`` from :func:`snapshot_counters`.
        now: The scoring time (for item age). ``position`` is :data:`SERVING_POSITION`.
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
    return out.with_columns(
        pl.lit(SERVING_POSITION).alias("position"),
        *(pl.col(c).fill_null(0) for c in RAW_COUNTERS[1:6]),
        ((pl.lit(now) - pl.col("created_at")).dt.total_microseconds() / 1e6)
        .fill_null(0.0)
        .alias("item_age_seconds"),
    )
