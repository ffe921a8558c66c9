"""What the evaluation report adds to each model's mean metrics at k: bootstrap confidence
intervals over the test users, metric@K curves, intra-list diversity and the ranker's
reliability diagrams.

* **Intervals** (:func:`bootstrap_intervals`): percentile bootstrap of the mean over the
  evaluated users (``scipy.stats.bootstrap``), every metric resampled with the same users so
  the intervals describe one population.
* **Curves** (:func:`metric_curves`): each top-K metric at every cut-off of
  ``evaluation.curve_ks`` from one list per user of the longest cut-off.
* **Diversity** (:func:`primary_categories` + :func:`~feedforge.evaluation.ranking_metrics.
  intra_list_diversity`): the mean share of item pairs in a top-k list whose (first)
  categories differ.
* **Reliability** (:func:`reliability_bins`): equal-mass bins of predicted probabilities with
  the observed rate in each, the data of a reliability diagram.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.stats

from feedforge.errors import ValidationError
from feedforge.evaluation.metrics import per_user_metrics

TOP_K_METRICS = ("ndcg", "recall", "map", "hitrate", "precision")
"""The per-user top-K metrics the report's curves and intervals cover (besides the
objective's value when it has one)."""


def per_user_at_k(
    recommended: np.ndarray,
    relevant: sp.csr_matrix,
    k: int,
    value: Callable[[np.ndarray, int], np.ndarray] | None = None,
    value_name: str | None = None,
) -> dict[str, np.ndarray]:
    """Each user's top-K metrics at ``k`` (and their observed value @k with ``value``).

    Args:
        recommended: ``(U, K)`` item indices, ``K >= k``.
        relevant: ``(U, n_items)`` relevance of the same users.
        k: Cut-off.
        value: ``(recommended, k) -> (U,)`` per-user observed value, or None.
        value_name: The value metric's name (e.g. ``"watch_minutes"``).
    """
    per_user = per_user_metrics(recommended, relevant, k)
    out = {name: per_user[name] for name in TOP_K_METRICS}
    if value is not None and value_name is not None:
        out[value_name] = value(recommended, k)
    return out


def metric_curves(
    recommended: np.ndarray,
    relevant: sp.csr_matrix,
    ks: Sequence[int],
    value: Callable[[np.ndarray, int], np.ndarray] | None = None,
    value_name: str | None = None,
) -> dict[str, list[float]]:
    """Every metric's mean at each cut-off of ``ks`` (``{"k": ks, "ndcg": [...], ...}``).

    Raises:
        ValidationError: a cut-off is longer than the lists.
    """
    width = np.asarray(recommended).shape[1]
    if max(ks) > width:
        raise ValidationError(f"metric_curves: cut-off {max(ks)} > list length {width}")
    curves: dict[str, list[float]] = {"k": [int(k) for k in ks]}
    for k in ks:
        for name, values in per_user_at_k(recommended, relevant, k, value, value_name).items():
            curves.setdefault(name, []).append(float(np.nanmean(values)))
    return curves


def bootstrap_intervals(
    per_user: Mapping[str, np.ndarray],
    resamples: int,
    confidence: float,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile-bootstrap confidence interval of each metric's mean over users.

    Every metric is resampled with the same draws of users (``scipy.stats.bootstrap`` on the
    stacked ``(metrics, users)`` array), so their intervals describe one population.

    Returns:
        Metric -> ``[low, high]``; ``{}`` with fewer than two users or ``resamples == 0``.
    """
    names = list(per_user)
    if not names or resamples == 0:
        return {}
    data = np.vstack([np.asarray(per_user[n], dtype=np.float64) for n in names])
    if data.shape[1] < 2 or np.isnan(data).any():
        return {}
    result = scipy.stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        axis=-1,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return {n: [float(lo), float(hi)] for n, lo, hi in zip(names, low, high, strict=True)}


def primary_categories(item_features: sp.csr_matrix | None, n_items: int) -> np.ndarray | None:
    """``(n_items,)`` the first category code of each item (``-1``: none), from the
    dataset's multi-hot item categories; None without categories."""
    if item_features is None:
        return None
    csr = sp.csr_matrix(item_features)
    counts = np.diff(csr.indptr)
    codes = np.full(n_items, -1, dtype=np.int64)
    has = np.flatnonzero(counts[:n_items] > 0)
    codes[has] = csr.indices[csr.indptr[has]]
    return codes


def list_categories(recommended: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """``(U, K)`` category code of each listed item (``-1`` for padding)."""
    recs = np.asarray(recommended)
    return np.where(recs >= 0, categories[np.where(recs >= 0, recs, 0)], -1)


def reliability_bins(labels: np.ndarray, p: np.ndarray, bins: int) -> list[dict[str, float]]:
    """The points of a reliability diagram: ``bins`` equal-mass bins of the predictions
    (quantiles of ``p``, as :func:`~feedforge.evaluation.ranking_metrics.calibration_error`
    uses), each with its mean prediction, observed rate and size.

    Raises:
        ValidationError: the lengths differ.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    prob = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(y) != len(prob):
        raise ValidationError(f"reliability_bins: {len(y)} labels for {len(prob)} predictions")
    if len(y) == 0:
        return []
    order = np.argsort(prob, kind="stable")
    return [
        {
            "predicted": float(prob[part].mean()),
            "observed": float(y[part].mean()),
            "n": len(part),
        }
        for part in np.array_split(order, min(bins, len(y)))
        if len(part)
    ]
