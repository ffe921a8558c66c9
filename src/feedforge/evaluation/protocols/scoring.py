"""Score a fitted model on one :class:`~feedforge.evaluation.protocols.EvalFold`.

Metric names are ``<name>@<K>``, one definition per name, whatever the protocol (see
:mod:`feedforge.evaluation.metrics` for formulas): ``ndcg``, ``recall`` (``H / min(K, R)``),
``recall_total`` (``H / R``), ``precision``, ``map`` (divides by ``min(K, R)``), ``map_total``
(divides by ``R``: Microsoft Recommenders' ``map``), ``hitrate`` (alias ``hr``) and
``coverage``.
"""

from __future__ import annotations

import numpy as np

from feedforge.errors import ConfigError, DataError
from feedforge.evaluation.metrics import catalog_coverage, per_user_metrics
from feedforge.evaluation.protocols.base import EvalFold
from feedforge.index.exact import top_k
from feedforge.models.base import Recommender

_PER_USER_KEYS = {
    "ndcg": "ndcg",
    "recall": "recall",
    "recall_total": "recall_total",
    "precision": "precision",
    "map": "map",
    "map_total": "map_total",
    "hitrate": "hitrate",
    "hr": "hitrate",
}


def _parse_metric(name: str, k: int) -> tuple[str, int]:
    base, at, cutoff = name.partition("@")
    if not at or not cutoff.isdigit() or (base not in _PER_USER_KEYS and base != "coverage"):
        raise ConfigError(
            f"unknown metric {name!r}; use <name>@<K> with name in "
            f"{sorted([*_PER_USER_KEYS, 'coverage'])}"
        )
    if not 1 <= int(cutoff) <= k:
        raise ConfigError(f"metric {name!r}: K must lie in [1, k={k}]")
    return base, int(cutoff)


def _rank_batch(
    scores: np.ndarray, fold: EvalFold, rows: np.ndarray, batch: slice, k: int
) -> np.ndarray:
    """``(B, k)`` recommended items of one batch; ``-1`` where only excluded items remain."""
    if fold.candidates is None:
        ranked, top = top_k(scores, k, fold.exclude, rows)
        ranked[~np.isfinite(top)] = -1  # excluded (-inf) items never count as recommended
    else:
        candidates = fold.candidates[batch]
        cand_scores = np.take_along_axis(scores, candidates, axis=1)
        is_relevant = np.take_along_axis(fold.relevant[rows].toarray() != 0, candidates, axis=1)
        # Best score first; on a tie, non-relevant candidates first (a tie is no credit).
        order = np.lexsort((is_relevant, -cand_scores), axis=-1)
        ranked = np.take_along_axis(candidates, order, axis=1)[:, :k]
    return np.pad(ranked, ((0, 0), (0, k - ranked.shape[1])), constant_values=-1)


def evaluate_fold(
    model: Recommender,
    fold: EvalFold,
    metrics: tuple[str, ...],
    k: int,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Metrics of a model already fitted on ``fold.train``, averaged over ``fold.users``.

    Full ranking (``fold.candidates is None``): each user's ``fold.exclude`` items are dropped,
    then the top ``k`` of all items are kept. Sampled: only the user's candidates are ranked
    (ties rank the relevant item last). Users with no relevant item are skipped.

    Args:
        model: A recommender fitted on ``fold.train``; ``model.score(users)`` is called in
            batches and must return ``(B, n_items)`` scores.
        fold: The fold to evaluate.
        metrics: Names ``<name>@<K>`` with ``K <= k`` (see the module docstring).
        k: Length of the ranked lists.
        batch_size: Users scored per call.

    Returns:
        ``{metric name: mean over evaluated users}``, in the order of ``metrics``.

    Raises:
        ConfigError: an unknown metric name or ``K > k``.
        DataError: the model's scores have the wrong shape or hold NaN; no user to evaluate.
    """
    parsed = [_parse_metric(name, k) for name in metrics]
    return fold_metrics(rank_fold(model, fold, k, batch_size), fold, metrics, k, parsed)


def rank_fold(model: Recommender, fold: EvalFold, k: int, batch_size: int = 1024) -> np.ndarray:
    """``(U, k)`` items recommended to each of ``fold.users`` (``-1`` where only excluded
    items remain), ranked as :func:`evaluate_fold` ranks them.

    Raises:
        DataError: the model's scores have the wrong shape or hold NaN; no user to evaluate.
    """
    n_items = fold.relevant.shape[1]
    users = np.asarray(fold.users, dtype=np.int64)
    if len(users) == 0:
        raise DataError("the fold has no user to evaluate")
    recommended = np.empty((len(users), k), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch = slice(start, start + batch_size)
        rows = users[batch]
        scores = np.array(model.score(rows), dtype=np.float32)  # a copy: top_k writes into it
        if scores.shape != (len(rows), n_items):
            raise DataError(f"score() returned {scores.shape}, expected {(len(rows), n_items)}")
        if np.isnan(scores).any():
            raise DataError(f"{type(model).__name__}.score() returned NaN")
        recommended[batch] = _rank_batch(scores, fold, rows, batch, k)
    return recommended


def per_user_values(recommended: np.ndarray, fold: EvalFold, metric: str, k: int) -> np.ndarray:
    """``(U,)`` values of one per-user metric (not ``coverage``) of :func:`rank_fold`'s
    output, NaN for users without a relevant item: what standard errors and paired
    comparisons of two models need.

    Raises:
        ConfigError: an unknown metric name, ``coverage``, or ``K > k``.
    """
    base, cutoff = _parse_metric(metric, k)
    if base == "coverage":
        raise ConfigError("coverage is a catalog metric, not a per-user one")
    users = np.asarray(fold.users, dtype=np.int64)
    return per_user_metrics(recommended, fold.relevant[users], cutoff)[_PER_USER_KEYS[base]]


def fold_metrics(
    recommended: np.ndarray,
    fold: EvalFold,
    metrics: tuple[str, ...],
    k: int,
    parsed: list[tuple[str, int]] | None = None,
) -> dict[str, float]:
    """:func:`evaluate_fold`'s means from :func:`rank_fold`'s output.

    Raises:
        ConfigError: an unknown metric name or ``K > k``.
        DataError: no evaluated user has a relevant item.
    """
    parsed = parsed or [_parse_metric(name, k) for name in metrics]
    n_items = fold.relevant.shape[1]
    relevant = fold.relevant[np.asarray(fold.users, dtype=np.int64)]
    report: dict[str, float] = {}
    per_cutoff: dict[int, dict[str, np.ndarray]] = {}
    for name, (base, cutoff) in zip(metrics, parsed, strict=True):
        if cutoff not in per_cutoff:
            per_cutoff[cutoff] = per_user_metrics(recommended, relevant, cutoff)
        values = per_cutoff[cutoff]
        defined = ~np.isnan(values["recall"])
        if not defined.any():
            raise DataError("no evaluated user has a relevant item")
        if base == "coverage":
            report[name] = catalog_coverage(recommended[defined], n_items, cutoff)
        else:
            report[name] = float(values[_PER_USER_KEYS[base]][defined].mean())
    return report
