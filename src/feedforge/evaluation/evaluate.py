"""The evaluation stage: offline metrics of every trained model on the test split.

Top-K protocol (``temporal``): users known to the train id map with at least one test
positive for the configured objective; each model ranks the whole catalog, minus the items the
user interacted with in train; relevance is the test split's positives. The two-stage
pipeline (retrieval -> ranker) re-scores the retrieval model's top ``evaluation.candidates``
with features snapshotted at the test boundary, exactly as the online store would hold them.
For ``watch_time`` and ``revenue`` each model also gets the objective's observed value at k:
the watch minutes (or revenue) its top k items actually earned from the user in the test
window, summed and averaged over users (:func:`value_at_k`), because a binary relevance does
not say how much a feed was worth. The ranker's AUC, log loss and calibration error (both
for unweighted objectives only) and the NDCG@k of its order within each test request (gain:
the objective's value) are measured on the test impressions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedforge.artifacts import write_json_atomic
from feedforge.config import Settings
from feedforge.datasets.features import (
    RAW_COUNTERS,
    derive_features,
    retrieval_scores,
    snapshot_candidate_counters,
    snapshot_counters,
)
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.errors import DataError
from feedforge.evaluation.metrics import auc, log_loss, ranking_report
from feedforge.evaluation.ranking_metrics import calibration_error, request_ndcg
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.models.base import EmbeddingRecommender, Ranker, Recommender, top_k
from feedforge.models.registry import load_ranker, load_recommender
from feedforge.models.train import RankingData, ranker_training_data
from feedforge.workdir import Workdir

Progress = Callable[[str], None]


def two_stage_recommend(
    retrieval: EmbeddingRecommender,
    ranker: Ranker,
    dataset: Dataset,
    snapshot: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    now: datetime,
    user_idx: np.ndarray,
    k: int,
    n_candidates: int,
    exclude: sp.csr_matrix,
) -> np.ndarray:
    """Retrieve ``n_candidates`` per user, re-score them with the ranker, keep the top ``k``.

    Returns:
        ``(U, k)`` item indices.
    """
    cand, cand_scores = retrieval.recommend(user_idx, n_candidates, exclude=exclude)
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
    p = ranker.predict_proba(X).reshape(n_users, n_cand)
    # Excluded items only fill the list when fewer than n_candidates remain: keep them last.
    p[~np.isfinite(cand_scores)] = -np.inf
    order, _ = top_k(p, k)
    return np.take_along_axis(cand, order, axis=1)


def ranker_metrics(ranker: Ranker, data: RankingData, k: int = 10) -> dict[str, Any]:
    """A ranker on logged impressions: AUC of the label, log loss and expected calibration
    error, and the mean NDCG@k of its order within each request (gain: the objective's
    value, i.e. the label times its weight).

    A value-weighted ranker (``watch_time``, ``revenue``) estimates value odds, not the
    label's probability, so its log loss and calibration error are None; so is every metric
    a single-class sample leaves undefined.
    """
    y, p = data.y, ranker.predict_proba(data.X)
    both = bool(len(y)) and y.min() != y.max()
    weighted = not np.allclose(data.weight, 1.0)
    ndcg, requests = request_ndcg(data.group, np.where(y == 1, data.weight, 0.0), p, k)
    return {
        "impressions": len(y),
        "positive_rate": float(y.mean()) if len(y) else 0.0,
        "mean_p": float(p.mean()) if len(y) else 0.0,
        "value_weighted": weighted,
        "auc": auc(y, p) if both else None,
        "log_loss": log_loss(y, p) if both and not weighted else None,
        "ece": calibration_error(y, p) if both and not weighted else None,
        f"ndcg@{k}": ndcg if requests else None,
        "requests_with_positive": requests,
    }


VALUE_METRIC: dict[str, tuple[str, str, float]] = {
    "watch_time": ("watch_minutes", "watch", 1.0 / 60.0),
    "revenue": ("revenue", "purchase", 1.0),
}
"""Objective -> (metric name, event type, unit scale) of the observed-value metric."""


def observed_value(
    events: pl.LazyFrame, dataset: Dataset, start: datetime, objective: str
) -> tuple[str, sp.csr_matrix] | None:
    """``(name, (n_users, n_items) CSR)`` of each known user's observed value of each known
    item in the events from ``start`` on: watch minutes (``watch_time``) or revenue
    (``revenue``); None for ``clicks``, whose value is the relevance itself."""
    if objective not in VALUE_METRIC:
        return None
    name, event_type, scale = VALUE_METRIC[objective]
    column = "watch_seconds" if event_type == "watch" else "price"
    rows = (
        events.filter((pl.col("timestamp") >= start) & (pl.col("event_type") == event_type))
        .select("user_id", "item_id", pl.col(column).fill_null(0.0).alias("value"))
        .collect()
    )
    known = rows.with_columns(
        dataset.users.index(rows.get_column("user_id")).alias("u"),
        dataset.items.index(rows.get_column("item_id")).alias("i"),
    ).drop_nulls(["u", "i"])
    matrix = sp.csr_matrix(
        (
            known.get_column("value").to_numpy() * scale,
            (known.get_column("u").to_numpy(), known.get_column("i").to_numpy()),
        ),
        shape=(len(dataset.users), len(dataset.items)),
    )
    matrix.sum_duplicates()
    return f"{name}@", matrix


def value_at_k(recommended: np.ndarray, value: sp.csr_matrix, k: int) -> float:
    """Mean over users of the summed observed value of their top-``k`` items.

    Args:
        recommended: ``(U, K)`` item indices (``-1`` pads), rows aligned with ``value``'s.
        value: ``(U, n_items)`` observed value of each (user, item).
        k: Cut-off.
    """
    recs = np.asarray(recommended)[:, :k]
    rows = np.repeat(np.arange(len(recs)), recs.shape[1])
    cols = recs.reshape(-1)
    ok = cols >= 0
    picked = np.asarray(value[rows[ok], cols[ok]]).reshape(-1)
    totals = np.bincount(rows[ok], weights=picked, minlength=len(recs))
    return float(totals.mean()) if len(recs) else 0.0


def evaluate(
    workdir: Workdir, settings: Settings, progress: Progress | None = None
) -> dict[str, Any]:
    """Evaluate every trained model and write ``reports/evaluation.json``.

    Returns:
        The report: ``{"models": {name: {"ndcg@10": ...}}, "ranker": {...}, ...}``.
    """
    say = progress or (lambda _msg: None)
    k = settings.evaluation.k
    dataset = load_dataset(workdir)
    train_csr = dataset.train_interactions().to_csr()
    relevant = dataset.relevant("test", settings.objective)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if len(users) == 0:
        raise DataError(
            f"no test user has a positive for objective {settings.objective!r}; nothing to evaluate"
        )
    relevant_users = relevant[users]
    n_items = len(dataset.items)
    report: dict[str, Any] = {
        "objective": settings.objective,
        "protocol": "temporal",
        "k": k,
        "dataset_version": dataset.version,
        "users_evaluated": len(users),
        "models": {},
    }
    command = workdir.command("train")
    test_start = datetime.fromisoformat(dataset.split_bounds["t2"])
    events = EventLog(workdir.events_dir).scan()
    observed = observed_value(events, dataset, test_start, settings.objective)

    def add_value(name: str, recs: np.ndarray) -> None:
        if observed is not None:
            metric, matrix = observed
            report["models"][name][f"{metric}{k}"] = value_at_k(recs, matrix[users], k)

    retrieval_name = settings.models.retrieval
    recommenders: dict[str, Recommender] = {}
    for name in ("popularity", retrieval_name):
        say(f"evaluating {name}")
        model = load_recommender(name, workdir.model_dir(name), build_command=command)
        recommenders[name] = model
        recs, _ = model.recommend(users, k, exclude=train_csr)
        report["models"][name] = ranking_report(recs, relevant_users, n_items, k)
        add_value(name, recs)

    retrieval = recommenders[retrieval_name]
    ranker_name = settings.models.ranker.type
    ranker_dir = workdir.model_dir(ranker_name)
    if not isinstance(retrieval, EmbeddingRecommender) or not ranker_dir.is_dir():
        say("no ranker trained: skipping the two-stage pipeline")
    else:
        say(f"evaluating the two-stage pipeline ({retrieval_name} -> {ranker_name})")
        ranker = load_ranker(ranker_name, ranker_dir, build_command=command)
        _, items, _ = read_catalog(workdir)
        cutoff = datetime.fromisoformat(dataset.split_bounds["t2"])
        snapshot = snapshot_counters(events, items, cutoff)
        recs = two_stage_recommend(
            retrieval,
            ranker,
            dataset,
            snapshot,
            cutoff,
            users,
            k,
            settings.evaluation.candidates,
            train_csr,
        )
        two_stage = f"{retrieval_name}+{ranker_name}"
        report["models"][two_stage] = ranking_report(recs, relevant_users, n_items, k)
        add_value(two_stage, recs)
        test = ranker_training_data(dataset, "test", retrieval, settings.objective)
        report["ranker"] = {
            "model": ranker_name,
            "split": "test",
            **ranker_metrics(ranker, test, k),
        }
    reports = workdir.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    write_json_atomic(reports / "evaluation.json", report)
    return report
