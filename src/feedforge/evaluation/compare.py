"""Two feed pipelines on one test window: the continuous-training loop's offline gate.

:func:`compare_pipelines` scores each pipeline (a retrieval model and an optional ranker) on
the same dataset's test split, exactly as ``feedforge evaluate`` scores the two-stage feed:
users with a test positive for the objective, train items excluded, the ranker fed the
features snapshotted at the test window's start, NDCG / recall / MAP / hit rate / coverage @k
and the objective's observed value @k, and the ranker's AUC and per-request NDCG@k of the test
window's logged impressions.

The feed metrics are measured on outcomes logged under the serving version's own feeds, so
they credit it for the items it chose to show (exposure bias): a candidate trained on newer
data can score lower on them while serving better. The per-impression metrics judge both
rankers on the same shown items, each with an outcome, and do not favour the logging policy.

:class:`PublishedRetrieval` carries a published version's embeddings into another dataset's
index space, so the version serving now can be measured on a newer test window than the one
it was built with: users and items the version does not know get no vector; a user without
one is scored as the service would score a user without a vector (the version's popular list
order, here: the dataset's train popularity), and an unknown item is never retrieved.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from feedforge.config import Settings
from feedforge.datasets.interactions import Interactions
from feedforge.datasets.load import Dataset
from feedforge.errors import ValidationError
from feedforge.evaluation.evaluate import eval_window, ranker_metrics, value_metric_name
from feedforge.features.objectives import settings_value
from feedforge.models.base import EmbeddingRecommender, Ranker
from feedforge.models.ranking_data import ranker_training_data

_UNKNOWN_ITEM_SCORE = -1e30


class PublishedRetrieval(EmbeddingRecommender):
    """A published version's embeddings aligned to a dataset's id maps (read-only).

    Args:
        user_vectors: ``(n_users, D)`` float32, rows of the dataset's user index (zeros for
            users the version has no vector for).
        item_vectors: ``(n_items, D)`` float32, rows of the dataset's item index.
        user_known: ``(n_users,)`` whether the version has the user's vector.
        item_known: ``(n_items,)`` whether the version has the item's vector.
        fallback: ``(n_items,)`` scores of users without a vector (e.g. train popularity).
    """

    name: ClassVar[str] = "published"

    def __init__(
        self,
        user_vectors: np.ndarray,
        item_vectors: np.ndarray,
        user_known: np.ndarray,
        item_known: np.ndarray,
        fallback: np.ndarray,
    ) -> None:
        super().__init__()
        if user_vectors.shape[1] != item_vectors.shape[1]:
            raise ValidationError(
                f"user vectors have {user_vectors.shape[1]} dimensions, item vectors "
                f"{item_vectors.shape[1]}"
            )
        self._users = np.asarray(user_vectors, dtype=np.float32)
        self._items = np.asarray(item_vectors, dtype=np.float32)
        self._user_known = np.asarray(user_known, dtype=bool)
        self._item_known = np.asarray(item_known, dtype=bool)
        self._fallback = np.asarray(fallback, dtype=np.float32)

    def fit(self, interactions: Interactions) -> PublishedRetrieval:
        raise ValidationError("a published version's embeddings are not trained here")

    def user_embeddings(self) -> np.ndarray:
        return self._users

    def item_embeddings(self) -> np.ndarray:
        return self._items

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        user_idx = np.asarray(user_idx, dtype=np.int64)
        scores = self._users[user_idx] @ self._items.T
        unknown = ~self._user_known[user_idx]
        if unknown.any():
            scores[unknown] = self._fallback
        scores[:, ~self._item_known] = _UNKNOWN_ITEM_SCORE
        return scores

    def _describe(self) -> tuple[dict[str, int], dict[str, Any]]:
        raise ValidationError("a published version's embeddings are not saved as a model")

    def _write_files(self, directory: Any) -> None:
        raise ValidationError("a published version's embeddings are not saved as a model")

    @classmethod
    def _read_files(cls, directory: Any, manifest: Any, build_command: str) -> Any:
        raise ValidationError("a published version's embeddings are not loaded as a model")


def gate_metric_name(settings: Settings, metric: str) -> str:
    """The report key of a gate metric (``value``: the objective's observed value @k, which
    is ``ndcg@k`` for ``clicks``; ``ndcg``, ``recall``: those @k; ``auc``: the ranker's AUC
    on the test impressions; ``request_ndcg``: its NDCG@k within each logged request)."""
    k = settings.evaluation.k
    if metric == "auc":
        return "auc"
    if metric == "request_ndcg":
        return f"request_ndcg@{k}"
    if metric == "value":
        observed = value_metric_name(settings_value(settings))
        return f"{observed}@{k}" if observed else f"ndcg@{k}"
    return f"{metric}@{k}"


def compare_pipelines(
    dataset: Dataset,
    settings: Settings,
    pipelines: dict[str, tuple[EmbeddingRecommender, Ranker | None]],
) -> dict[str, Any]:
    """Each pipeline's two-stage feed on ``dataset``'s test split (see the module docs).

    Returns:
        ``{"k", "users_evaluated", "dataset_version", "models": {name: metrics}}``.

    Raises:
        DataError: no test user has a positive for the objective.
    """
    window = eval_window(dataset, settings)
    value = settings_value(settings)
    snapshot = dataset.feature_snapshot()
    k = window.k
    out: dict[str, Any] = {
        "k": k,
        "users_evaluated": len(window.users),
        "dataset_version": dataset.version,
        "models": {},
    }
    for name, (retrieval, ranker) in pipelines.items():
        recs = window.two_stage(
            dataset, retrieval, ranker, settings.evaluation.candidates, snapshot
        )
        metrics = window.metrics(recs)
        if ranker is not None:
            # The ranker's order of the test window's logged impressions (its retrieval score
            # feature from this pipeline's embeddings): every shown item has its outcome, so
            # unlike the feed metrics above it does not credit the policy that logged them.
            test = ranker_training_data(dataset, "test", retrieval, value)
            if len(test.y):
                ranked = ranker_metrics(ranker, test, k)
                metrics["auc"] = ranked["auc"]
                metrics[f"request_ndcg@{k}"] = ranked[f"ndcg@{k}"]
        out["models"][name] = metrics
    return out
