"""``leave-one-out``: SASRec's next-item protocol (last / second-to-last item per user), with
full or sampled ranking."""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedforge.datasets.idmap import IdMap
from feedforge.errors import ConfigError, DataError
from feedforge.evaluation.protocols.base import (
    EvalFold,
    ProtocolSplit,
    _binary,
    _interactions,
    _prepare,
    _with_index,
)


def _sample_negatives(
    seen: sp.csr_matrix, users: np.ndarray, targets: np.ndarray, n: int, seed: int
) -> np.ndarray:
    """``(U, 1 + n)``: each target, then ``n`` distinct items the user never interacted with,
    uniformly at random (``np.random.default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    n_items = seen.shape[1]
    out = np.empty((len(users), n + 1), dtype=np.int64)
    out[:, 0] = targets
    for row, user in enumerate(users):
        own = seen.indices[seen.indptr[user] : seen.indptr[user + 1]]
        available = n_items - len(own)
        if available < n:
            raise DataError(f"user index {user} has only {available} unseen items, need {n}")
        if available < 4 * n:
            out[row, 1:] = rng.choice(np.setdiff1d(np.arange(n_items), own), n, replace=False)
            continue
        picked = np.empty(0, dtype=np.int64)
        while len(picked) < n:  # rejection sampling, order-preserving de-duplication
            draw = rng.integers(0, n_items, size=2 * (n - len(picked)) + 8)
            merged = np.concatenate([picked, draw[~np.isin(draw, own)]])
            picked = merged[np.sort(np.unique(merged, return_index=True)[1])]
        out[row, 1:] = picked[:n]
    return out


def leave_one_out(
    frame: pl.DataFrame, *, negatives: int | None = None, seed: int = 0, k: int = 10
) -> ProtocolSplit:
    """SASRec's next-item protocol (``leave-one-out``).

    Source: ``kang205/SASRec``, ``util.py`` (``data_partition``, ``evaluate``,
    ``evaluate_valid``) and the paper (Kang & McAuley 2018).

    Procedure:

    1. Each user's rows in time order, ties kept in input order (SASRec reads a file already
       in time order). The last item is the test target, the second-to-last the validation
       target, the rest train.
    2. Users with fewer than 3 rows keep every row in train and are not evaluated (as in
       ``data_partition``, where their validation and test lists are empty and ``evaluate``
       skips them).
    3. Validation fold: train = the rest; relevant = the validation target. Test fold: train =
       the rest plus the validation item ("at test time the input sequence includes the
       validation item"); relevant = the test target.
    4. Full ranking (``negatives=None``): every item is ranked; exclude = all the user's other
       interacted items (past and future), never the target itself.
    5. Sampled (``negatives=100`` in the paper): the target is ranked among ``negatives``
       distinct items drawn uniformly from the items the user never interacted with
       (``np.random.default_rng(seed)`` for the validation fold, ``seed + 1`` for the test
       fold; the target in column 0). SASRec's code draws each negative independently (so
       repeats are possible) and only rejects training items; we follow PROTOCOLS.md's "never
       interacted with". A negative that ties the target ranks above it.

    SASRec evaluates a random 10,000 users when there are more; every user is evaluated here.
    Metrics (``k=10``): ``hr@k`` and ``ndcg@k`` (one relevant item: ``1 / log2(rank + 1)``
    when ``rank <= k``).
    """
    if negatives is not None and negatives < 1:
        raise ConfigError(f"negatives must be >= 1 or None, got {negatives}")
    data = _prepare(frame)
    users, items = IdMap.fit(data.get_column("user_id")), IdMap.fit(data.get_column("item_id"))
    data = _with_index(data, users, items)
    user = data.get_column("user_idx").to_numpy().astype(np.int64)
    item = data.get_column("item_idx").to_numpy().astype(np.int64)
    stamp = data.get_column("timestamp").dt.epoch("us").to_numpy()
    order = np.lexsort((np.arange(data.height), stamp, user))
    bounds = np.searchsorted(user[order], np.arange(len(users) + 1))
    counts = np.diff(bounds)
    from_end = np.empty(data.height, dtype=np.int64)
    from_end[order] = bounds[user[order] + 1] - 1 - np.arange(data.height)
    evaluated = counts[user] >= 3
    is_test = evaluated & (from_end == 0)
    is_val = evaluated & (from_end == 1)

    shape = (len(users), len(items))
    seen = _binary(user, item, shape)
    eval_users = np.flatnonzero(counts >= 3).astype(np.int64)

    def fold(train_mask: np.ndarray, target_mask: np.ndarray, fold_seed: int) -> EvalFold:
        targets = np.empty(len(users), dtype=np.int64)
        targets[user[target_mask]] = item[target_mask]
        relevant = _binary(user[target_mask], item[target_mask], shape)
        exclude = (seen - relevant).tocsr()  # the target itself is never excluded
        exclude.eliminate_zeros()
        candidates = None
        if negatives is not None:
            candidates = _sample_negatives(
                seen, eval_users, targets[eval_users], negatives, fold_seed
            )
        return EvalFold(
            train=_interactions(data.filter(pl.Series(train_mask)), users, items),
            relevant=relevant,
            exclude=exclude,
            users=eval_users,
            candidates=candidates,
        )

    return ProtocolSplit(
        protocol="leave-one-out",
        users=users,
        items=items,
        validation=fold(~(is_test | is_val), is_val, seed),
        test=fold(~is_test, is_test, seed + 1),
        k=k,
        metrics=(f"hr@{k}", f"ndcg@{k}"),
        info={
            "rows": data.height,
            "users": len(users),
            "items": len(items),
            "evaluated_users": len(eval_users),
            "users_below_3": int((counts < 3).sum()),
            "negatives": negatives,
            "seed": seed,
        },
    )
