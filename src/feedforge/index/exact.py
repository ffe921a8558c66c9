"""Exact top-k search over a dense score matrix: the brute-force retrieval every model and the
ANN index's exact fallback share."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def top_k(
    scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns per row of a dense score matrix, best first.

    Args:
        scores: ``(B, n_items)`` float scores; modified in place where excluded.
        k: Items per row (clipped to ``n_items``).
        exclude: Optional ``(n_users, n_items)`` CSR of items to drop per user.
        rows: ``(B,)`` user indices of ``scores``' rows into ``exclude`` (needed with it).

    Returns:
        ``(B, k)`` int64 item indices and ``(B, k)`` float32 scores. Excluded items score
        ``-inf`` and only appear when fewer than ``k`` items remain.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if exclude is not None:
        if rows is None:
            raise ValueError("top_k: rows is required with exclude")
        sub = exclude[rows]
        r, c = sub.nonzero()
        scores[r, c] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(part_scores, order, axis=1)
