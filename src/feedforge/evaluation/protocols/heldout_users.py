"""``strong-generalization``: Liang et al. 2018 (Mult-VAE) held-out users with fold-in."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from feedforge.datasets.idmap import IdMap
from feedforge.errors import ConfigError, DataError
from feedforge.evaluation.protocols.base import (
    ProtocolSplit,
    _holdout_fold,
    _is_positive,
    _natural_codes,
    _prepare,
    _with_index,
)


def strong_generalization(
    frame: pl.DataFrame,
    *,
    threshold: float | None = 3.5,
    min_items: int = 5,
    n_heldout_users: float = 10_000,
    heldout_fraction: float = 0.2,
    seed: int = 98765,
    k: int = 100,
) -> ProtocolSplit:
    """Liang et al. 2018 (Mult-VAE) held-out users (``strong-generalization``).

    Source: ``dawenl/vae_cf`` preprocessing as branched in ``google-research/ials``
    (``vae_benchmarks/generate_data.py``; metrics in ``recommender.h``).

    Procedure (same random streams as the source for integer-like ids):

    1. Keep rows with ``rating > threshold`` (a null rating, or ``threshold=None``, keeps the
       row); keep users with at least ``min_items`` rows (no item filter).
    2. Users sorted (numerically when every id is an integer), permuted with
       ``np.random.seed(seed)``; the last ``n_heldout_users`` are test users, the
       ``n_heldout_users`` before them validation users, the rest training users. A float
       ``n_heldout_users`` in ``(0, 1)`` is a fraction: ``int(fraction * n_users)``.
    3. Item vocabulary: the items of the training users. Held-out users' rows outside it drop.
    4. Each held-out set, re-seeded with ``seed``, users in sorted order: a user with at least
       ``min_items`` remaining rows gets ``int(heldout_fraction * n)`` rows (``np.random.choice``
       without replacement, rows in input order) to predict, the rest are the fold-in input;
       a user with fewer rows is fold-in only and not evaluated.

    Each fold's ``train`` holds the training users' rows **plus** that fold's held-out users'
    fold-in rows: models score a held-out user from their fold-in history, so they must see it.
    The source trains on the training users only; a model that learns item parameters from
    ``train`` also learns a little from the fold-in rows. ``users`` = the held-out users with at
    least one item to predict; exclude = their fold-in items. Metrics: ``recall@20``,
    ``recall@50`` (hits / ``min(K, n_heldout)``) and ``ndcg@100`` (ideal DCG over
    ``min(K, n_heldout)`` items); ``k=100``.
    """
    if min_items < 1 or not 0.0 < heldout_fraction < 1.0:
        raise ConfigError("min_items must be >= 1 and heldout_fraction in (0, 1)")
    data = _prepare(frame).filter(_is_positive(threshold, strict=True))
    data = data.filter(pl.len().over("user_id") >= min_items)
    if data.height == 0:
        raise DataError(f"no user has {min_items} positive rows")
    data = data.with_columns(pl.Series("_user_code", _natural_codes(data.get_column("user_id"))))
    user_ids = data.select("user_id", "_user_code").unique().sort("_user_code")["user_id"]
    n_users = len(user_ids)
    if 0.0 < n_heldout_users < 1.0:
        n_heldout = int(n_heldout_users * n_users)
    elif n_heldout_users >= 1 and float(n_heldout_users).is_integer():
        n_heldout = int(n_heldout_users)
    else:
        raise ConfigError(f"n_heldout_users must be a count or a fraction, got {n_heldout_users}")
    if n_heldout < 1 or n_users - 2 * n_heldout < 1:
        raise DataError(f"{n_users} users cannot hold out {n_heldout} validation + test users")
    permuted = user_ids.gather(np.random.RandomState(seed).permutation(n_users))
    train_users = permuted[: n_users - 2 * n_heldout]
    held = {
        "validation": permuted[n_users - 2 * n_heldout : n_users - n_heldout],
        "test": permuted[n_users - n_heldout :],
    }
    train = data.filter(pl.col("user_id").is_in(train_users.implode()))
    vocabulary = train.get_column("item_id")
    users, items = IdMap.fit(data.get_column("user_id")), IdMap.fit(vocabulary)
    train = _with_index(train, users, items)
    info: dict[str, Any] = {
        "rows": data.height,
        "users": n_users,
        "items": len(items),
        "training_users": len(train_users),
        "training_rows": train.height,
        "n_heldout_users": n_heldout,
        "seed": seed,
    }

    folds = {}
    for name, heldout_users in held.items():
        rows = data.filter(
            pl.col("user_id").is_in(heldout_users.implode())
            & pl.col("item_id").is_in(vocabulary.unique().implode())
        )
        rows = _with_index(rows, users, items)
        codes = rows.get_column("_user_code").to_numpy()
        order = np.lexsort((rows.get_column("_row").to_numpy(), codes))
        starts = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1]])
        sizes = np.diff(np.r_[starts, rows.height])
        to_predict = np.zeros(rows.height, dtype=bool)
        rng = np.random.RandomState(seed)
        for start, size in zip(starts, sizes, strict=True):
            if size >= min_items:
                chosen = rng.choice(size, size=int(heldout_fraction * size), replace=False)
                to_predict[order[start + chosen]] = True
        mask = pl.Series(to_predict)
        fold = _holdout_fold(
            pl.concat([train, rows.filter(~mask)]), rows.filter(mask), users, items
        )
        folds[name] = fold
        info[f"{name}_fold_in_rows"] = int((~to_predict).sum())
        info[f"{name}_heldout_rows"] = int(to_predict.sum())
        info[f"{name}_users"] = len(fold.users)
    return ProtocolSplit(
        protocol="strong-generalization",
        users=users,
        items=items,
        validation=folds["validation"],
        test=folds["test"],
        k=k,
        metrics=("recall@20", "recall@50", "ndcg@100"),
        info=info,
    )
