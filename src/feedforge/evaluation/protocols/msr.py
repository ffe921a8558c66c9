"""``msr-stratified``: Microsoft Recommenders' MovieLens benchmark split and metrics."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from feedforge.datasets.idmap import IdMap
from feedforge.errors import ConfigError, DataError
from feedforge.evaluation.protocols.base import (
    ProtocolSplit,
    _holdout_fold,
    _natural_codes,
    _prepare,
    _with_index,
)


def msr_stratified_rows(
    groups: np.ndarray, ratio: float = 0.75, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Row assignment of Microsoft Recommenders' ``python_stratified_split`` (two-way).

    Same steps as ``recommenders/datasets/python_splitters.py::_do_stratification``
    (recommenders 1.2.1): ``np.random.seed(seed)``; one ``np.random.rand(N)`` value per row
    of the whole frame, in row order; sort by (group, random); within each group of ``n`` rows
    the first ``round(ratio * n)`` go to train (numpy rounding, half to even: 1 -> 1, 2 -> 2,
    6 -> 4), the rest to test.

    Args:
        groups: ``(N,)`` int codes of the stratification column (item or user), rows in the
            data's order, codes ordered as the source sorts the ids.
        ratio: Train share, in ``(0, 1)``.
        seed: The legacy numpy seed.

    Returns:
        Train and test row positions, each in the order the source returns its rows (by group,
        then by the random value).
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"ratio must lie in (0, 1), got {ratio}")
    n = len(groups)
    random = np.random.RandomState(seed).rand(n)  # the stream of np.random.seed(seed); rand(n)
    order = np.lexsort((np.arange(n), random, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(1, n + 1) - np.repeat(starts, counts)
    to_train = rank <= np.repeat(np.round(ratio * counts), counts)
    return order[to_train], order[~to_train]


def msr_stratified(
    frame: pl.DataFrame,
    *,
    ratio: float = 0.75,
    seed: int = 42,
    validation_seed: int = 43,
    filter_by: Literal["item", "user"] = "item",
    min_rating: int = 1,
    k: int = 10,
) -> ProtocolSplit:
    """Microsoft Recommenders' MovieLens benchmark protocol (``msr-stratified``).

    Source: ``recommenders-team/recommenders`` (1.2.1): ``datasets/python_splitters.py``,
    ``evaluation/python_evaluation.py``, ``examples/06_benchmarks``.

    Procedure:

    1. Keep the groups (items for ``filter_by="item"``) with at least ``min_rating`` rows.
    2. Test fold: ``python_stratified_split(data, ratio, min_rating, filter_by, seed)``, see
       :func:`msr_stratified_rows`. On ML-100k (rows in ``u.data`` order) this gives 75,066
       train and 24,934 test rows, and all 943 users appear in test.
    3. Validation fold: the same split (``min_rating=1``) applied to the train part, rows in
       the order the source returns them, with ``validation_seed``; its train part is a subset
       of the test fold's train.
    4. Relevant: every held-out rating (no threshold). Exclude: the fold's train items (the
       benchmark's recommenders remove seen items before the top k). Users: every user with a
       held-out row.

    Metrics (``k=10``): ``map_total@k`` (the benchmark's ``map``: precision at each hit in the
    top k, summed, over the user's total number of test items), ``ndcg@k``, ``precision@k`` and
    ``recall_total@k`` (the benchmark's ``recall_at_k``: hits / total test items).
    """
    if min_rating < 1:
        raise ConfigError(f"min_rating must be >= 1, got {min_rating}")
    if filter_by not in ("item", "user"):
        raise ConfigError(f"filter_by must be 'item' or 'user', got {filter_by!r}")
    data = _prepare(frame)
    column = f"{filter_by}_id"
    if min_rating > 1:
        data = data.filter(pl.len().over(column) >= min_rating)
        if data.height == 0:
            raise DataError(f"no {filter_by} has {min_rating} ratings")
    users, items = IdMap.fit(data.get_column("user_id")), IdMap.fit(data.get_column("item_id"))
    data = _with_index(data, users, items)
    groups = _natural_codes(data.get_column(column))
    train_rows, test_rows = msr_stratified_rows(groups, ratio, seed)
    fit_pos, val_pos = msr_stratified_rows(groups[train_rows], ratio, validation_seed)
    train, test = data[train_rows], data[test_rows]
    fit, val = train[fit_pos], train[val_pos]
    validation = _holdout_fold(fit, val, users, items)
    test_fold = _holdout_fold(train, test, users, items)
    return ProtocolSplit(
        protocol="msr-stratified",
        users=users,
        items=items,
        validation=validation,
        test=test_fold,
        k=k,
        metrics=(f"map_total@{k}", f"ndcg@{k}", f"precision@{k}", f"recall_total@{k}"),
        info={
            "rows": data.height,
            "train_rows": train.height,
            "test_rows": test.height,
            "validation_train_rows": fit.height,
            "validation_rows": val.height,
            "ratio": ratio,
            "seed": seed,
            "validation_seed": validation_seed,
            "filter_by": filter_by,
            "min_rating": min_rating,
            "test_users": len(test_fold.users),
            "validation_users": len(validation.users),
        },
    )
