"""Offline metrics: top-K ranking metrics over recommendation lists, and binary-label metrics.

Top-K inputs, shared by every ranking function:

* ``recommended``: ``(U, K)`` int item indices per user, best first; ``-1`` pads short lists.
  An item repeated within a row counts once (at its first position).
* ``relevant``: each user's held-out items, either a length-``U`` sequence of sets of item
  indices or a ``(U, n_items)`` sparse matrix whose non-zero entries are relevant.
* ``k``: the cut-off (default ``K``). Lists shorter than ``k`` are treated as padded, so a
  model that returns fewer items is penalised, not excused.

Notation: ``hit_j = 1`` when the item at rank ``j`` (1-based) is relevant, ``H = sum_{j<=k}
hit_j``, ``R`` = the user's number of relevant items. Users with ``R = 0`` are undefined for
every metric: per-user arrays hold NaN for them and means skip them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp
import sklearn.metrics

from feedforge.errors import DataError, ValidationError

Relevant: TypeAlias = Sequence[Iterable[int]] | sp.spmatrix | sp.sparray


def _hits(
    recommended: np.ndarray, relevant: Relevant, k: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """The hit matrix of the first ``k`` ranks.

    Returns:
        ``(U, k)`` bool hits, ``(U,)`` int64 relevant counts ``R`` and ``k``.
    """
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValidationError(f"recommended must be 2-D (U, K), got shape {rec.shape}")
    if rec.size and not np.issubdtype(rec.dtype, np.integer):
        raise ValidationError(f"recommended must hold integer item indices, got {rec.dtype}")
    rec = rec.astype(np.int64)
    if rec.size and rec.min() < -1:
        raise ValidationError("recommended holds an index below -1 (-1 is the only padding)")
    n_users, width = rec.shape
    k = width if k is None else int(k)
    if k < 1:
        raise ValidationError(f"k must be >= 1, got {k}")
    # Cut or pad to exactly k columns.
    rec = rec[:, :k]
    if rec.shape[1] < k:
        rec = np.pad(rec, ((0, 0), (0, k - rec.shape[1])), constant_values=-1)

    if sp.issparse(relevant):
        rel = sp.csr_array(relevant, copy=True)  # cleaned below; never mutate the input
        if rel.shape[0] != n_users:
            raise ValidationError(f"relevant has {rel.shape[0]} rows for {n_users} users")
        rel.eliminate_zeros()
        rel.sum_duplicates()  # also sorts the indices
        n_cols = rel.shape[1]
        if rec.size and rec.max() >= n_cols:
            raise ValidationError(f"recommended holds an item index >= n_items ({n_cols})")
        n_relevant = np.diff(rel.indptr).astype(np.int64)
        rel_items = rel.indices.astype(np.int64)
    else:
        sets = [np.unique(np.fromiter(items, dtype=np.int64)) for items in relevant]
        if len(sets) != n_users:
            raise ValidationError(f"relevant has {len(sets)} entries for {n_users} users")
        n_relevant = np.array([len(s) for s in sets], dtype=np.int64)
        rel_items = np.concatenate(sets) if sets else np.empty(0, dtype=np.int64)
        if rel_items.size and rel_items.min() < 0:
            raise ValidationError("relevant holds a negative item index")
        n_cols = int(max(rel_items.max(initial=-1), rec.max(initial=-1))) + 1

    # A (user, item) pair as one int64 key: hits are a vectorised membership test.
    rel_users = np.repeat(np.arange(n_users, dtype=np.int64), n_relevant)
    rel_keys = rel_users * n_cols + rel_items
    rec_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_cols + rec
    hits = np.isin(rec_keys, rel_keys) & (rec >= 0)
    # Only the first occurrence of an item in a row can hit.
    flat = np.where(rec >= 0, rec_keys, -1 - np.arange(rec.size).reshape(rec.shape)).ravel()
    first = np.zeros(flat.size, dtype=bool)
    first[np.unique(flat, return_index=True)[1]] = True
    hits &= first.reshape(rec.shape)
    return hits, n_relevant, k


def _undefined_to_nan(values: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return np.where(n_relevant > 0, values, np.nan)


def _mean(per_user: np.ndarray) -> float:
    defined = per_user[~np.isnan(per_user)]
    if defined.size == 0:
        raise DataError("no user has a relevant item; the metric is undefined")
    return float(defined.mean())


def per_user_metrics(
    recommended: np.ndarray, relevant: Relevant, k: int | None = None
) -> dict[str, np.ndarray]:
    """Every per-user top-K metric, for bootstraps and segment breakdowns.

    Returns:
        ``{"ndcg", "recall", "recall_total", "map", "map_total", "hitrate", "precision"}`` ->
        ``(U,)`` float64 arrays, NaN for users with no relevant item. Formulas: see each
        function.
    """
    hits, n_rel, k = _hits(recommended, relevant, k)
    h = hits.sum(axis=1).astype(np.float64)
    capped = np.minimum(k, n_rel).astype(np.float64)
    safe_capped = np.maximum(capped, 1.0)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)  # (k,)
    dcg = hits @ discount
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[capped.astype(np.int64)]
    precision_at_j = np.cumsum(hits, axis=1) / ranks  # (U, k)
    precision_sum = (precision_at_j * hits).sum(axis=1)
    average_precision = precision_sum / safe_capped
    values = {
        "ndcg": dcg / np.maximum(ideal, 1e-300),
        "recall": h / safe_capped,
        "recall_total": h / np.maximum(n_rel, 1),
        "map": average_precision,
        "map_total": precision_sum / np.maximum(n_rel, 1),
        "hitrate": (h > 0).astype(np.float64),
        "precision": h / k,
    }
    return {name: _undefined_to_nan(v, n_rel) for name, v in values.items()}


def recall_at_k(recommended: np.ndarray, relevant: Relevant, k: int | None = None) -> float:
    """Mean over users with ``R >= 1`` of ``H / min(k, R)``.

    The denominator is capped at ``k`` so that a perfect list scores 1.0 even when a user has
    more than ``k`` relevant items (a list of ``k`` cannot hold more than ``k`` hits); see
    :func:`recall_at_k_total` for the uncapped ``H / R``.
    """
    return _mean(per_user_metrics(recommended, relevant, k)["recall"])


def recall_at_k_total(recommended: np.ndarray, relevant: Relevant, k: int | None = None) -> float:
    """Mean over users with ``R >= 1`` of ``H / R`` (can stay below 1.0 when ``R > k``)."""
    return _mean(per_user_metrics(recommended, relevant, k)["recall_total"])


def precision_at_k(recommended: np.ndarray, relevant: Relevant, k: int | None = None) -> float:
    """Mean over users with ``R >= 1`` of ``H / k`` (padding counts as a miss)."""
    return _mean(per_user_metrics(recommended, relevant, k)["precision"])


def ndcg_at_k(recommended: np.ndarray, relevant: Relevant, k: int | None = None) -> float:
    """Mean over users with ``R >= 1`` of ``DCG / IDCG`` with binary relevance.

    ``DCG = sum_{j=1..k} hit_j / log2(j + 1)`` and ``IDCG = sum_{j=1..min(k, R)} 1 / log2(j + 1)``
    (all relevant items ranked first).
    """
    return _mean(per_user_metrics(recommended, relevant, k)["ndcg"])


def map_at_k(recommended: np.ndarray, relevant: Relevant, k: int | None = None) -> float:
    """Mean over users with ``R >= 1`` of ``AP@k = sum_{j=1..k} P@j * hit_j / min(k, R)``.

    ``P@j = (sum_{i<=j} hit_i) / j`` is the precision of the first ``j`` ranks.
    """
    return _mean(per_user_metrics(recommended, relevant, k)["map"])


def map_total(recommended: np.ndarray, relevant: Relevant, k: int | None = None) -> float:
    """Mean over users with ``R >= 1`` of ``sum_{j=1..k} P@j * hit_j / R``.

    Microsoft Recommenders' ``map`` (``recommenders.evaluation.python_evaluation.map``, the
    metric of its MovieLens benchmark): the same sum as :func:`map_at_k` but divided by the
    user's *total* number of relevant items ``R`` instead of ``min(k, R)``, so a user with more
    than ``k`` relevant items cannot reach 1.0.
    """
    return _mean(per_user_metrics(recommended, relevant, k)["map_total"])


def hitrate_at_k(recommended: np.ndarray, relevant: Relevant, k: int | None = None) -> float:
    """Mean over users with ``R >= 1`` of ``1[H > 0]``: the share with at least one hit."""
    return _mean(per_user_metrics(recommended, relevant, k)["hitrate"])


def catalog_coverage(recommended: np.ndarray, n_items: int, k: int | None = None) -> float:
    """``|{items in the first k columns of any row}| / n_items`` (padding ``-1`` ignored).

    Args:
        recommended: ``(U, K)`` item indices.
        n_items: Catalog size.
        k: Cut-off (default ``K``).
    """
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValidationError(f"recommended must be 2-D (U, K), got shape {rec.shape}")
    if n_items < 1:
        raise ValidationError(f"n_items must be >= 1, got {n_items}")
    rec = rec[:, : rec.shape[1] if k is None else k]
    items = np.unique(rec[rec >= 0])
    if items.size and items[-1] >= n_items:
        raise ValidationError(f"recommended holds an item index >= n_items ({n_items})")
    return items.size / n_items


def ranking_report(
    recommended: np.ndarray, relevant: Relevant, n_items: int, k: int
) -> dict[str, float]:
    """All top-K metrics at ``k``, averaged over the users with at least one relevant item.

    Coverage is computed over the rows of those same users, so every number describes one
    population.

    Returns:
        Keys ``"ndcg@k"``, ``"recall@k"``, ``"map@k"``, ``"hitrate@k"``, ``"coverage@k"``,
        ``"precision@k"`` with ``k`` written out (e.g. ``"ndcg@10"``).

    Raises:
        DataError: no user has a relevant item.
    """
    per_user = per_user_metrics(recommended, relevant, k)
    evaluated = ~np.isnan(per_user["recall"])
    report = {f"{name}@{k}": _mean(per_user[name]) for name in ("ndcg", "recall", "map")}
    report[f"hitrate@{k}"] = _mean(per_user["hitrate"])
    report[f"coverage@{k}"] = catalog_coverage(np.asarray(recommended)[evaluated], n_items, k)
    report[f"precision@{k}"] = _mean(per_user["precision"])
    return report


def _binary_labels(y_true: np.ndarray, y_score: np.ndarray, what: str) -> tuple[np.ndarray, ...]:
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValidationError(f"{what}: {len(y)} labels but {len(s)} scores")
    if y.size == 0:
        raise DataError(f"{what}: no examples")
    if not np.isin(y, (0, 1)).all():
        raise ValidationError(f"{what}: labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValidationError(f"{what}: scores hold NaN or infinite values")
    if np.unique(y).size < 2:
        raise DataError(
            f"{what} is undefined: every label is {int(y[0])}; it needs positives and negatives"
        )
    return y.astype(np.int64), s


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve: ``P(score of a random positive > score of a random negative)``.

    Args:
        y_true: ``(N,)`` labels in ``{0, 1}``.
        y_score: ``(N,)`` scores, higher meaning more likely positive.

    Raises:
        DataError: a single class (AUC is undefined) or no examples.
        ValidationError: labels not 0/1, NaN scores or mismatched lengths.
    """
    y, s = _binary_labels(y_true, y_score, "AUC")
    return float(sklearn.metrics.roc_auc_score(y, s))


def log_loss(y_true: np.ndarray, p: np.ndarray) -> float:
    """Mean of ``-(y log p + (1 - y) log(1 - p))``, ``p`` clipped away from 0 and 1.

    Args:
        y_true: ``(N,)`` labels in ``{0, 1}``.
        p: ``(N,)`` predicted probabilities of label 1.

    Raises:
        DataError: a single class or no examples.
        ValidationError: labels not 0/1, ``p`` outside ``[0, 1]`` or mismatched lengths.
    """
    y, prob = _binary_labels(y_true, p, "log loss")
    if prob.min() < 0 or prob.max() > 1:
        raise ValidationError("log loss: probabilities must lie in [0, 1]")
    return float(sklearn.metrics.log_loss(y, prob, labels=[0, 1]))
