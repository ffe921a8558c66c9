"""Two-stage inference: retrieve candidates, re-score them with the ranker, keep the top k.

The one offline retrieve -> rank function: evaluation scores the test window with it and
batch scoring (:mod:`feedforge.publish.batch`) precomputes every user's feed with it. The
online service runs the same two stages over the online store's records and the ANN index
(:mod:`feedforge.serving.pipeline`); the features are the same numbers
(:mod:`feedforge.features.online` mirrors
:func:`~feedforge.features.offline.snapshot_candidate_counters`).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedforge.datasets.load import Dataset
from feedforge.features.definitions import RAW_COUNTERS, derive_features, retrieval_scores
from feedforge.features.offline import snapshot_candidate_counters
from feedforge.index.exact import top_k
from feedforge.models.base import EmbeddingRecommender, Ranker


def two_stage_recommend(
    retrieval: EmbeddingRecommender,
    ranker: Ranker | None,
    dataset: Dataset,
    snapshot: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    now: datetime,
    user_idx: np.ndarray,
    k: int,
    n_candidates: int,
    exclude: sp.csr_matrix,
) -> tuple[np.ndarray, np.ndarray]:
    """Retrieve ``n_candidates`` per user, re-score them with the ranker, keep the top ``k``.

    Returns:
        ``(U, k)`` item indices and their ranker scores (retrieval scores without a ranker;
        ``-inf`` where fewer than ``k`` items remain after ``exclude``).
    """
    cand, cand_scores = retrieval.recommend(user_idx, n_candidates, exclude=exclude)
    if ranker is None:
        return cand[:, :k], cand_scores[:, :k].astype(np.float64)
    n_users, n_cand = cand.shape
    flat_users = np.repeat(user_idx, n_cand)
    flat_items = cand.reshape(-1)
    frame = pl.DataFrame(
        {
            "user_id": dataset.users.id_of(flat_users),
            "item_id": dataset.items.id_of(flat_items),
        }
    )
    raw_frame = snapshot_candidate_counters(frame, snapshot, now)
    raw = {name: raw_frame.get_column(name).to_numpy() for name in RAW_COUNTERS}
    scores = retrieval_scores(
        retrieval.user_embeddings(), retrieval.item_embeddings(), flat_users, flat_items
    )
    X = derive_features(raw, scores, dataset.n_categories)
    p = ranker.score(X).reshape(n_users, n_cand)
    # Excluded items only fill the list when fewer than n_candidates remain: keep them last.
    p[~np.isfinite(cand_scores)] = -np.inf
    order, top = top_k(p, k)
    return np.take_along_axis(cand, order, axis=1), top.astype(np.float64)
