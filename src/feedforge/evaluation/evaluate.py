"""The evaluation stage: offline metrics of every trained model on the test split.

Top-K protocol (``temporal``): users known to the train id map with at least one test
positive for the configured objective; each model ranks the whole catalog, minus the items the
user interacted with in train; relevance is the test split's positives. The two-stage
pipeline (retrieval -> ranker) re-scores the retrieval model's top ``evaluation.candidates``
with features snapshotted at the test boundary, exactly as the online store would hold them.
For ``watch_time``, ``revenue`` and ``mix`` each model also gets the objective's observed value
at k: the watch minutes (revenue, mix value) its top k items actually earned from the user in
the test window, summed and averaged over users (:func:`value_at_k`), because a binary
relevance does not say how much a feed was worth. The ranker's AUC, log loss and calibration
error (both for unweighted objectives only; per head for the multi-task ranker) and the NDCG@k
of its order within each test request (gain: the objective's value) are measured on the test
impressions.

The stage reads only artifacts: the dataset (:func:`~feedforge.datasets.load.load_dataset`:
its test positives and impressions, the feature snapshot at ``t2`` and the observed outcomes
of the test window ``[t2, end]`` that ``feedforge build`` wrote) and the trained models. It
never opens the event log or the catalog, so events ingested after the build do not change
the evaluation of a dataset version. The report records that version and the version of
every model it measured (``model_versions``, from each model's manifest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedforge.artifacts import write_json_atomic
from feedforge.config import Settings
from feedforge.datasets.build import OUTCOME_COLUMNS
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.errors import DataError
from feedforge.evaluation.detail import (
    bootstrap_intervals,
    list_categories,
    metric_curves,
    per_user_at_k,
    primary_categories,
    reliability_bins,
)
from feedforge.evaluation.history import save_evaluation
from feedforge.evaluation.metrics import auc, log_loss, ranking_report
from feedforge.evaluation.ranking_metrics import (
    calibration_error,
    intra_list_diversity,
    request_ndcg,
)
from feedforge.features.objectives import positive_flags, settings_value
from feedforge.models.base import EmbeddingRecommender, Ranker, Recommender
from feedforge.models.ranking_data import RankingData, ranker_training_data
from feedforge.models.registry import load_ranker, load_recommender
from feedforge.models.two_stage import two_stage_recommend
from feedforge.workdir import Workdir

Progress = Callable[[str], None]


def ranker_metrics(
    ranker: Ranker, data: RankingData, k: int = 10, bins: int = 10
) -> dict[str, Any]:
    """A ranker on logged impressions: AUC of the objective's label by the ranker's score,
    log loss and expected calibration error of its probability, and the mean NDCG@k of its
    order within each request (gain: the objective's value, i.e. the label times its weight).

    A value-weighted single-task ranker (``watch_time``, ``revenue``, ``mix``) estimates value
    odds, not the label's probability, so its log loss and calibration error are None; so is
    every metric a single-class sample leaves undefined. A multi-task ranker's probability is
    ``p(click)``: its log loss and calibration error are the click head's, and ``heads`` holds
    every head's metrics (:func:`head_metrics`). ``reliability`` holds the points of the
    probability's reliability diagram in ``bins`` equal-mass bins (:func:`reliability_bins`;
    empty when its calibration is undefined) and ``value_by_score`` the mean observed gain in
    equal-mass bins of the score (the shape a value-weighted ranker's score should follow).
    """
    y, score = data.y, ranker.score(data.X)
    both = bool(len(y)) and y.min() != y.max()
    weighted = not np.allclose(data.weight, 1.0)
    ndcg, requests = request_ndcg(data.group, np.where(y == 1, data.weight, 0.0), score, k)
    labels, p = data.labels(ranker), ranker.predict_proba(data.X)
    calibrated = ranker.multi_task or not weighted
    has_both = bool(len(labels)) and labels.min() != labels.max()
    metrics: dict[str, Any] = {
        "impressions": len(y),
        "positive_rate": float(y.mean()) if len(y) else 0.0,
        "mean_p": float(p.mean()) if len(y) else 0.0,
        "value_weighted": weighted,
        "auc": auc(y, score) if both else None,
        "log_loss": log_loss(labels, p) if has_both and calibrated else None,
        "ece": calibration_error(labels, p) if has_both and calibrated else None,
        f"ndcg@{k}": ndcg if requests else None,
        "requests_with_positive": requests,
        "reliability": reliability_bins(labels, p, bins) if has_both and calibrated else [],
        "value_by_score": reliability_bins(np.where(y == 1, data.weight, 0.0), score, bins),
    }
    if ranker.multi_task:
        metrics["heads"] = head_metrics(ranker, data, bins)
    return metrics


def _binary_head(label: np.ndarray, p: np.ndarray, bins: int) -> dict[str, Any]:
    both = bool(len(label)) and label.min() != label.max()
    return {
        "auc": auc(label, p) if both else None,
        "log_loss": log_loss(label, p) if both else None,
        "ece": calibration_error(label, p) if both else None,
        "mean_predicted": float(p.mean()) if len(p) else None,
        "mean_observed": float(label.mean()) if len(label) else None,
        "reliability": reliability_bins(label, p, bins) if both else [],
    }


def _value_head(observed: np.ndarray, expected: np.ndarray, bins: int) -> dict[str, Any]:
    positive = (observed > 0).astype(np.int8)
    both = bool(len(positive)) and positive.min() != positive.max()
    total = float(observed.sum())
    return {
        "auc": auc(positive, expected) if both else None,
        "calibration_ratio": float(expected.sum()) / total if total > 0 else None,
        "mean_predicted": float(expected.mean()) if len(expected) else None,
        "mean_observed": float(observed.mean()) if len(observed) else None,
        "reliability": reliability_bins(observed, expected, bins),
    }


def head_metrics(ranker: Ranker, data: RankingData, bins: int = 10) -> dict[str, dict[str, Any]]:
    """Each head of a multi-task ranker against the test impressions' outcomes.

    * ``click``, ``purchase``: AUC, log loss, calibration error and reliability diagram
      (:func:`reliability_bins`) of ``p(click)`` and
      ``p(purchase) = p(click) * p(purchase | click)``;
    * ``watch``, ``revenue``: AUC of the expected value for "any" (watched, bought), the
      calibration ratio ``sum(expected) / sum(observed)`` (1 is calibrated) and the mean
      observed value in equal-mass bins of the expected one.
    """
    heads = ranker.predict_heads(data.X)
    if not heads:
        return {}
    out = data.outcomes
    result = {"click": _binary_head(out["clicked"].astype(np.int8), heads["p_click"], bins)}
    if "p_purchase" in heads:
        purchased = out["purchased"].astype(np.int8)
        result["purchase"] = _binary_head(purchased, heads["p_purchase"], bins)
    if "expected_watch_seconds" in heads:
        result["watch"] = _value_head(out["watch_seconds"], heads["expected_watch_seconds"], bins)
    if "expected_revenue" in heads:
        result["revenue"] = _value_head(out["revenue"], heads["expected_revenue"], bins)
    return result


def value_metric_name(value: dict[str, float]) -> str | None:
    """The observed-value metric of an objective's value: ``watch_minutes``, ``revenue``,
    ``value`` (a mix, in its own units) or None (``clicks``: the relevance is the value)."""
    if set(value) == {"clicked"}:
        return None
    if set(value) == {"watch_seconds"}:
        return "watch_minutes"
    if set(value) == {"revenue"}:
        return "revenue"
    return "value"


def observed_value(dataset: Dataset, value: dict[str, float]) -> tuple[str, sp.csr_matrix] | None:
    """``(name, (n_users, n_items) CSR)`` of each known user's observed value of each known
    item in the test window ``[t2, end]`` (the dataset's
    :meth:`~feedforge.datasets.load.Dataset.test_outcomes`), in the objective's units (see
    :func:`value_metric_name`; watch time in minutes); None for ``clicks``."""
    name = value_metric_name(value)
    if name is None:
        return None
    scale = 1.0 / 60.0 if name == "watch_minutes" else 1.0
    amount = pl.sum_horizontal(
        pl.col(OUTCOME_COLUMNS[outcome]).cast(pl.Float64).fill_null(0.0) * (weight * scale)
        for outcome, weight in value.items()
    )
    known = (
        dataset.test_outcomes()
        .drop_nulls(["user_idx", "item_idx"])
        .select("user_idx", "item_idx", amount.alias("value"))
    )
    matrix = sp.csr_matrix(
        (
            known.get_column("value").to_numpy(),
            (known.get_column("user_idx").to_numpy(), known.get_column("item_idx").to_numpy()),
        ),
        shape=(len(dataset.users), len(dataset.items)),
    )
    matrix.sum_duplicates()
    return f"{name}@", matrix


def user_values_at_k(recommended: np.ndarray, value: sp.csr_matrix, k: int) -> np.ndarray:
    """``(U,)`` each user's summed observed value of their top-``k`` items.

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
    return np.bincount(rows[ok], weights=picked, minlength=len(recs)).astype(np.float64)


def value_at_k(recommended: np.ndarray, value: sp.csr_matrix, k: int) -> float:
    """Mean over users of the summed observed value of their top-``k`` items (see
    :func:`user_values_at_k`)."""
    totals = user_values_at_k(recommended, value, k)
    return float(totals.mean()) if len(totals) else 0.0


@dataclass(frozen=True)
class EvalWindow:
    """What every top-K measure of a dataset's test split shares: the users with a test
    positive for the objective, their relevant items, the train items to exclude and the
    observed value of the window (see :func:`eval_window`)."""

    k: int
    users: np.ndarray
    relevant: sp.csr_matrix  # (len(users), n_items)
    train: sp.csr_matrix  # (n_users, n_items)
    n_items: int
    observed: tuple[str, sp.csr_matrix] | None
    categories: np.ndarray | None = None
    """``(n_items,)`` each item's first category code (``-1``: none), for diversity."""
    curve_ks: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        """The list length every model is asked for: k and every curve cut-off."""
        return max(self.k, *self.curve_ks) if self.curve_ks else self.k

    def two_stage(
        self,
        dataset: Dataset,
        retrieval: EmbeddingRecommender,
        ranker: Ranker | None,
        n_candidates: int,
        snapshot: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame] | None = None,
        k: int | None = None,
    ) -> np.ndarray:
        """The two-stage feed of every user (``k`` items, default the window's), with the
        features as the online store held them at the test window's start."""
        recs, _ = two_stage_recommend(
            retrieval,
            ranker,
            dataset,
            snapshot or dataset.feature_snapshot(),
            dataset.test_start,
            self.users,
            k or self.k,
            n_candidates,
            self.train,
        )
        return recs

    def metrics(self, recs: np.ndarray) -> dict[str, float]:
        """NDCG / recall / MAP / hit rate / coverage (and diversity, when the items have
        categories) @k of ``(len(users), K >= k)`` item indices, and the objective's
        observed value @k when it has one."""
        out = ranking_report(recs, self.relevant, self.n_items, self.k)
        if self.observed is not None:
            metric, matrix = self.observed
            out[f"{metric}{self.k}"] = value_at_k(recs, matrix[self.users], self.k)
        if self.categories is not None:
            listed = list_categories(np.asarray(recs)[:, : self.k], self.categories)
            out[f"diversity@{self.k}"] = intra_list_diversity(listed)
        return out

    def _value(self) -> tuple[Callable[[np.ndarray, int], np.ndarray] | None, str | None]:
        if self.observed is None:
            return None, None
        metric, matrix = self.observed
        rows = matrix[self.users]
        return (lambda recs, k: user_values_at_k(recs, rows, k)), metric.removesuffix("@")

    def detail(
        self, recs: np.ndarray, resamples: int, confidence: float
    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """The metric@K curves over :attr:`curve_ks` and the bootstrap intervals of the
        metrics @k (keys as in :meth:`metrics`, e.g. ``"ndcg@10"``) of ``(len(users),
        width)`` item indices (:mod:`feedforge.evaluation.detail`)."""
        value, name = self._value()
        curves = metric_curves(recs, self.relevant, self.curve_ks or (self.k,), value, name)
        per_user = per_user_at_k(recs, self.relevant, self.k, value, name)
        intervals = bootstrap_intervals(per_user, resamples, confidence)
        return curves, {f"{metric}@{self.k}": ci for metric, ci in intervals.items()}


def eval_window(dataset: Dataset, settings: Settings) -> EvalWindow:
    """The :class:`EvalWindow` of ``dataset`` for the configured objective and k.

    Raises:
        DataError: no test user has a positive for the objective.
    """
    value = settings_value(settings)
    relevant = dataset.relevant("test", positive_flags(value))
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if len(users) == 0:
        raise DataError(
            f"no test user has a positive for objective {settings.objective!r}; nothing to evaluate"
        )
    train = dataset.train_interactions()
    return EvalWindow(
        k=settings.evaluation.k,
        users=users,
        relevant=relevant[users],
        train=train.to_csr(),
        n_items=len(dataset.items),
        observed=observed_value(dataset, value),
        categories=primary_categories(train.item_features, len(dataset.items)),
        curve_ks=tuple(settings.evaluation.curve_ks),
    )


def evaluate(
    workdir: Workdir, settings: Settings, progress: Progress | None = None
) -> dict[str, Any]:
    """Evaluate every trained model and write ``reports/evaluation.json`` (the latest run),
    keeping a copy of every run under ``reports/evaluations/``
    (:func:`~feedforge.evaluation.history.save_evaluation`).

    Returns:
        The report: ``{"models": {name: {"ndcg@10": ...}}, "intervals": {name: {"ndcg@10":
        [low, high]}}, "curves": {name: {"k": [...], "ndcg": [...]}}, "ranker": {...},
        "dataset_version": ..., "model_versions": {model directory name: version}, ...}``.

    Raises:
        feedforge.errors.ArtifactError: the dataset or a model is missing, corrupt or of an
            unknown schema (e.g. a dataset built by an older feedforge).
        DataError: no test user has a positive for the objective.
    """
    say = progress or (lambda _msg: None)
    cfg = settings.evaluation
    k = cfg.k
    dataset = load_dataset(workdir)
    window = eval_window(dataset, settings)
    report: dict[str, Any] = {
        "objective": settings.objective,
        "protocol": "temporal",
        "k": k,
        "created_at": datetime.now(UTC).isoformat(),
        "dataset_version": dataset.version,
        "users_evaluated": len(window.users),
        "confidence": cfg.confidence,
        "bootstrap_resamples": cfg.bootstrap_resamples,
        "models": {},
        "intervals": {},
        "curves": {},
        "model_versions": {},
    }

    def measure(name: str, recs: np.ndarray) -> None:
        report["models"][name] = window.metrics(recs)
        curves, intervals = window.detail(recs, cfg.bootstrap_resamples, cfg.confidence)
        report["curves"][name], report["intervals"][name] = curves, intervals

    command = workdir.command("train")
    ranker_name = settings.models.ranker.type
    ranker_dir = workdir.model_dir(ranker_name)

    retrieval_name = settings.models.retrieval
    recommenders: dict[str, Recommender] = {}
    for name in ("popularity", retrieval_name):
        say(f"evaluating {name}")
        model = load_recommender(name, workdir.model_dir(name), build_command=command)
        recommenders[name] = model
        report["model_versions"][name] = model.artifact_version
        recs, _ = model.recommend(window.users, window.width, exclude=window.train)
        measure(name, recs)

    retrieval = recommenders[retrieval_name]
    if not isinstance(retrieval, EmbeddingRecommender) or not ranker_dir.is_dir():
        say("no ranker trained: skipping the two-stage pipeline")
    else:
        say(f"evaluating the two-stage pipeline ({retrieval_name} -> {ranker_name})")
        ranker = load_ranker(ranker_name, ranker_dir, build_command=command)
        report["model_versions"][ranker_name] = ranker.artifact_version
        n_candidates = max(cfg.candidates, window.width)
        recs = window.two_stage(dataset, retrieval, ranker, n_candidates, k=window.width)
        measure(f"{retrieval_name}+{ranker_name}", recs)
        test = ranker_training_data(dataset, "test", retrieval, settings_value(settings))
        report["ranker"] = {
            "model": ranker_name,
            "split": "test",
            **ranker_metrics(ranker, test, k, cfg.calibration_bins),
        }
    reports = workdir.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    write_json_atomic(reports / "evaluation.json", report)
    save_evaluation(reports, report, keep=cfg.keep_history)
    return report
