"""Ranking feature definitions: one for training (point in time) and serving (snapshot).

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

The counting itself is in :mod:`feedforge.features.offline` (from the event log) and
:mod:`feedforge.features.online` (from the online store's records).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

WINDOWS: dict[str, timedelta] = {"1d": timedelta(days=1), "7d": timedelta(days=7)}
"""The recent windows of the windowed counters (suffix -> length)."""

DEVICES: tuple[str, ...] = ("tv", "mobile", "web")
"""Devices with a one-hot feature; ``device_code`` ``j + 1`` is ``DEVICES[j]``, 0 unknown."""
DEVICE_CODES: dict[str, int] = {d: j + 1 for j, d in enumerate(DEVICES)}

WINDOWED_COUNTERS = ("user_impressions", "user_clicks", "item_impressions", "item_clicks")

RAW_COUNTERS: tuple[str, ...] = (
    "position",
    "user_impressions",
    "user_clicks",
    "item_impressions",
    "item_clicks",
    "user_category_clicks",
    "item_age_seconds",
    *(f"{name}_{w}" for w in WINDOWS for name in WINDOWED_COUNTERS),
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
    return device.replace_strict(DEVICE_CODES, default=0, return_dtype=pl.Int64).fill_null(0)


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
