"""``temporal``: one global time split, feedforge's own default protocol."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from feedforge.datasets.idmap import IdMap
from feedforge.errors import ConfigError, DataError
from feedforge.evaluation.protocols.base import (
    EvalFold,
    ProtocolSplit,
    _holdout_fold,
    _is_positive,
    _prepare,
    _with_index,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def temporal(
    frame: pl.DataFrame,
    *,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    validation_days: float | None = None,
    test_days: float | None = None,
    threshold: float | None = 4.0,
    k: int = 10,
) -> ProtocolSplit:
    """One global time split (``temporal``), feedforge's default protocol.

    Boundaries ``t1 <= t2``: train ``timestamp < t1 <= validation < t2 <= test``. With
    ``test_days`` and ``validation_days``: ``t2 = max(timestamp) - test_days`` and ``t1 = t2 -
    validation_days``. Otherwise by quantiles of the sorted timestamps ``ts`` (``N`` rows):
    ``t2 = ts[int(N * (1 - test_fraction))]``, ``t1 = ts[int(N * (1 - test_fraction -
    validation_fraction))]``; rows tied on a boundary go to the later period.

    Id maps are fitted on the rows before ``t2``. Validation fold: train = rows before ``t1``;
    test fold: train = rows before ``t2``. Relevant: the held-out period's positives (``rating
    >= threshold``; a null rating, or ``threshold=None``, counts every row) of users and items
    present in that fold's train (the others are cold start, out of scope here). Exclude: the
    fold's train items. Metrics: the keys of
    :func:`~feedforge.evaluation.metrics.ranking_report` at ``k``.
    """
    data = _prepare(frame)
    stamp = data.get_column("timestamp").dt.epoch("us").to_numpy()
    if test_days is not None or validation_days is not None:
        if test_days is None or validation_days is None or min(test_days, validation_days) <= 0:
            raise ConfigError("give both test_days and validation_days, each > 0")
        t2 = int(stamp.max() - test_days * 86_400e6)
        t1 = int(t2 - validation_days * 86_400e6)
    else:
        if min(test_fraction, validation_fraction) <= 0 or test_fraction + validation_fraction >= 1:
            raise ConfigError("fractions must be > 0 and sum to less than 1")
        ts = np.sort(stamp)
        t2 = int(ts[int(len(ts) * (1 - test_fraction))])
        t1 = int(ts[int(len(ts) * (1 - test_fraction - validation_fraction))])
    epoch = pl.col("timestamp").dt.epoch("us")
    known = data.filter(epoch < t2)
    users, items = IdMap.fit(known.get_column("user_id")), IdMap.fit(known.get_column("item_id"))
    data = _with_index(data, users, items)
    positive = _is_positive(threshold, strict=False)

    def fold(train: pl.DataFrame, heldout: pl.DataFrame) -> tuple[EvalFold, int]:
        heldout = heldout.filter(
            positive
            & pl.col("user_id").is_in(train.get_column("user_id").unique().implode())
            & pl.col("item_id").is_in(train.get_column("item_id").unique().implode())
        )
        return _holdout_fold(train, heldout, users, items), heldout.height

    for name, rows in (("train", epoch < t1), ("validation", (epoch >= t1) & (epoch < t2))):
        if data.filter(rows).height == 0:
            raise DataError(f"the temporal {name} period is empty; change the boundaries")
    validation, val_rows = fold(data.filter(epoch < t1), data.filter((epoch >= t1) & (epoch < t2)))
    test, test_rows = fold(data.filter(epoch < t2), data.filter(epoch >= t2))
    boundary = [(_EPOCH + timedelta(microseconds=t)).isoformat() for t in (t1, t2)]
    return ProtocolSplit(
        protocol="temporal",
        users=users,
        items=items,
        validation=validation,
        test=test,
        k=k,
        metrics=tuple(
            f"{m}@{k}" for m in ("ndcg", "recall", "map", "hitrate", "coverage", "precision")
        ),
        info={
            "rows": data.height,
            "t1": boundary[0],
            "t2": boundary[1],
            "validation_train_rows": len(validation.train),
            "validation_relevant_rows": val_rows,
            "train_rows": len(test.train),
            "test_relevant_rows": test_rows,
            "validation_users": len(validation.users),
            "test_users": len(test.users),
            "threshold": threshold,
        },
    )
