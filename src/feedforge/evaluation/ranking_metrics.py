"""Metrics of the ranking stage: calibration, ordering within each request, and feed lists.

Inputs are flat per-impression arrays: ``group`` (the request each impression was shown in),
the label or gain of each impression, and the ranker's score or probability.
"""

from __future__ import annotations

import numpy as np

from feedforge.errors import DataError, ValidationError


def _flat(name: str, values: np.ndarray, n: int | None = None) -> np.ndarray:
    out = np.asarray(values).reshape(-1)
    if n is not None and len(out) != n:
        raise ValidationError(f"{name}: expected {n} values, got {len(out)}")
    return out


def calibration_error(y_true: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-mass bins of the predictions.

    ``ECE = sum_b (n_b / N) * |mean(y in b) - mean(p in b)|``. Equal-mass bins (quantiles of
    ``p``) keep every bin populated when predictions crowd near 0, as click probabilities do.

    Raises:
        DataError: no examples.
        ValidationError: lengths differ, ``p`` outside ``[0, 1]`` or ``bins < 1``.
    """
    y = _flat("calibration_error labels", y_true).astype(np.float64)
    prob = _flat("calibration_error probabilities", p, len(y)).astype(np.float64)
    if len(y) == 0:
        raise DataError("calibration_error: no examples")
    if bins < 1:
        raise ValidationError(f"calibration_error: bins must be >= 1, got {bins}")
    if not (np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1):
        raise ValidationError("calibration_error: probabilities must lie in [0, 1]")
    order = np.argsort(prob, kind="stable")
    error = 0.0
    for part in np.array_split(order, min(bins, len(y))):
        error += len(part) * abs(y[part].mean() - prob[part].mean())
    return float(error / len(y))


def request_ndcg(
    group: np.ndarray, gain: np.ndarray, score: np.ndarray, k: int = 10
) -> tuple[float, int]:
    """Mean NDCG@k of the order ``score`` gives the impressions of each request.

    Per request: ``DCG = sum_{j<=k} gain_(j) / log2(j + 1)`` with impressions sorted by
    descending score (ties keep input order), ``IDCG`` the same over gains sorted descending.
    Requests whose gains are all 0 have no defined NDCG and are skipped.

    Args:
        group: ``(N,)`` request key of each impression.
        gain: ``(N,)`` non-negative gain (a 0/1 label, or e.g. watch seconds).
        score: ``(N,)`` ranker scores.
        k: Cut-off.

    Returns:
        The mean over requests with a positive gain, and how many such requests there were.

    Raises:
        ValidationError: lengths differ, a negative or non-finite gain, or NaN scores.
    """
    keys = _flat("request_ndcg group", group)
    g = _flat("request_ndcg gain", gain, len(keys)).astype(np.float64)
    s = _flat("request_ndcg score", score, len(keys)).astype(np.float64)
    if not (np.isfinite(g).all() and (g >= 0).all()):
        raise ValidationError("request_ndcg: gains must be finite and >= 0")
    if not np.isfinite(s).all():
        raise ValidationError("request_ndcg: scores hold NaN or infinite values")
    if len(keys) == 0:
        return float("nan"), 0
    _, codes = np.unique(keys, return_inverse=True)
    # Sort by request, then by descending score (stable), and again by descending gain.
    by_score = np.lexsort((np.arange(len(s)), -s, codes))
    by_gain = np.lexsort((np.arange(len(g)), -g, codes))
    starts = np.flatnonzero(np.r_[True, codes[by_score][1:] != codes[by_score][:-1]])
    rank = np.arange(len(s)) - np.repeat(starts, np.diff(np.r_[starts, len(s)]))
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    n_groups = int(codes.max()) + 1
    dcg = np.bincount(codes[by_score], weights=g[by_score] * discount, minlength=n_groups)
    idcg = np.bincount(codes[by_gain], weights=g[by_gain] * discount, minlength=n_groups)
    defined = idcg > 0
    if not defined.any():
        return float("nan"), 0
    return float((dcg[defined] / idcg[defined]).mean()), int(defined.sum())


def intra_list_diversity(categories: np.ndarray) -> float:
    """Mean share of item pairs within each list whose categories differ.

    Args:
        categories: ``(U, K)`` category code of each listed item; ``-1`` pads short lists
            (padded slots take part in no pair).

    Returns:
        The mean over lists with at least two items (NaN when there is none).
    """
    cats = np.asarray(categories)
    if cats.ndim != 2:
        raise ValidationError(f"intra_list_diversity: expected (U, K) codes, got {cats.shape}")
    valid = cats >= 0
    same = (cats[:, :, None] == cats[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    n = valid.sum(axis=1)
    pairs = n * (n - 1) / 2
    same_pairs = (same.sum(axis=(1, 2)) - n) / 2
    ok = pairs > 0
    if not ok.any():
        return float("nan")
    return float((1.0 - same_pairs[ok] / pairs[ok]).mean())
