"""Named offline evaluation protocols, each a faithful copy of a published one.

A protocol turns an interactions frame into a :class:`ProtocolSplit`: one validation fold (for
choosing hyper-parameters, and nothing else) and one test fold (the numbers we report), each
with the training interactions, the held-out relevant items, the items never to rank and the
users to average over. :func:`evaluate_fold` scores a model fitted on ``fold.train``.

Input frame (polars): ``user_id`` and ``item_id`` (strings), ``timestamp`` (UTC datetime) and
an optional nullable float ``rating``. Row order matters where the source's randomness follows
file order (``msr-stratified``); keep the rows as the source file lists them.

Registered protocols (:data:`PROTOCOLS`; details in each function's docstring):

* ``msr-stratified``: Microsoft Recommenders' MovieLens benchmark split and metrics.
* ``leave-one-out``: SASRec's last / second-to-last item per user, full or sampled ranking.
* ``temporal``: one global time split, feedforge's own default protocol.
* ``strong-generalization``: Liang et al. 2018 (Mult-VAE) held-out users with fold-in.

Metric names are ``<name>@<K>``, one definition per name, whatever the protocol (see
:mod:`feedforge.evaluation.metrics` for formulas): ``ndcg``, ``recall`` (``H / min(K, R)``),
``recall_total`` (``H / R``), ``precision``, ``map`` (divides by ``min(K, R)``), ``map_total``
(divides by ``R``: Microsoft Recommenders' ``map``), ``hitrate`` (alias ``hr``) and
``coverage``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedforge.datasets.idmap import IdMap
from feedforge.errors import ConfigError, DataError, ValidationError
from feedforge.evaluation.metrics import catalog_coverage, per_user_metrics
from feedforge.models.base import Interactions, Recommender, top_k


@dataclass(frozen=True)
class EvalFold:
    """One train / held-out pair in index space.

    Attributes:
        train: What the model is fitted on for this fold.
        relevant: ``(n_users, n_items)`` CSR, 1.0 for each held-out relevant (user, item).
        exclude: ``(n_users, n_items)`` CSR of items never to rank per user (full ranking).
        users: ``(U,)`` int64 user indices evaluated, ascending.
        candidates: ``(U, C)`` int64 items to rank among, row ``u`` for ``users[u]``, the
            target in column 0 (sampled protocols); ``None`` ranks the whole catalog.
    """

    train: Interactions
    relevant: sp.csr_matrix
    exclude: sp.csr_matrix
    users: np.ndarray
    candidates: np.ndarray | None = None


@dataclass(frozen=True)
class ProtocolSplit:
    """A protocol applied to a frame: id maps, a validation fold and a test fold.

    Attributes:
        protocol: The registered name.
        users: User id map (index space of every fold).
        items: Item id map.
        validation: Fold for hyper-parameter choice only.
        test: Fold for the final numbers.
        k: Length of the ranked lists the metrics need.
        metrics: The protocol's metric names, e.g. ``("ndcg@10", "hr@10")``.
        info: Row and user counts, boundaries and seeds, JSON-ready.
    """

    protocol: str
    users: IdMap
    items: IdMap
    validation: EvalFold
    test: EvalFold
    k: int
    metrics: tuple[str, ...]
    info: dict[str, Any]


# --------------------------------------------------------------------------- helpers

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _prepare(frame: pl.DataFrame) -> pl.DataFrame:
    """Check the schema; return ``_row, user_id, item_id, timestamp, rating`` in input order."""
    missing = {"user_id", "item_id", "timestamp"} - set(frame.columns)
    if missing:
        raise ValidationError(f"interactions frame lacks column(s) {sorted(missing)}")
    if not isinstance(frame.schema["timestamp"], pl.Datetime):
        raise ValidationError(f"timestamp must be a datetime, got {frame.schema['timestamp']}")
    rating = pl.col("rating") if "rating" in frame.columns else pl.lit(None)
    try:
        data = frame.select(
            pl.col("user_id").cast(pl.String),
            pl.col("item_id").cast(pl.String),
            pl.col("timestamp"),
            rating.cast(pl.Float64).alias("rating"),
        )
    except pl.exceptions.PolarsError as exc:
        raise ValidationError(f"interactions frame: {exc}") from exc
    if any(data.get_column(c).null_count() for c in ("user_id", "item_id", "timestamp")):
        raise ValidationError("user_id, item_id and timestamp must not be null")
    if data.height == 0:
        raise DataError("the interactions frame is empty")
    return data.with_row_index("_row")


def _natural_codes(ids: pl.Series) -> np.ndarray:
    """Dense codes in the order the source's pandas code sorts these ids.

    The sources read MovieLens ids as integers, so ids that are all integers sort numerically
    (``"2" < "10"``); other ids sort as strings.
    """
    as_int = ids.cast(pl.Int64, strict=False)
    key = as_int if as_int.null_count() == 0 and as_int.n_unique() == ids.n_unique() else ids
    return key.rank("dense").to_numpy().astype(np.int64) - 1


def _with_index(data: pl.DataFrame, users: IdMap, items: IdMap) -> pl.DataFrame:
    return data.with_columns(
        users.index(data.get_column("user_id")).alias("user_idx"),
        items.index(data.get_column("item_id")).alias("item_idx"),
    )


def _interactions(rows: pl.DataFrame, users: IdMap, items: IdMap) -> Interactions:
    """Rows with ``user_idx`` / ``item_idx`` as unit-weight :class:`Interactions`."""
    return Interactions(
        user_idx=rows.get_column("user_idx").to_numpy().astype(np.int32),
        item_idx=rows.get_column("item_idx").to_numpy().astype(np.int32),
        weight=np.ones(rows.height, dtype=np.float32),
        timestamp_us=rows.get_column("timestamp").dt.epoch("us").to_numpy().astype(np.int64),
        n_users=len(users),
        n_items=len(items),
        rating=rows.get_column("rating").fill_null(float("nan")).to_numpy().astype(np.float32),
    )


def _binary(user_idx: np.ndarray, item_idx: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """``shape`` float32 CSR with 1.0 at each distinct (user, item)."""
    matrix = sp.csr_matrix(
        (np.ones(len(user_idx), dtype=np.float32), (user_idx, item_idx)),
        shape=shape,
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _holdout_fold(
    train: pl.DataFrame, heldout: pl.DataFrame, users: IdMap, items: IdMap
) -> EvalFold:
    """Full-ranking fold: relevant = every held-out row, exclude = the fold's train items."""
    shape = (len(users), len(items))
    fit = _interactions(train, users, items)
    relevant = _binary(
        heldout.get_column("user_idx").to_numpy(), heldout.get_column("item_idx").to_numpy(), shape
    )
    return EvalFold(
        train=fit,
        relevant=relevant,
        exclude=_binary(fit.user_idx, fit.item_idx, shape),
        users=np.flatnonzero(np.diff(relevant.indptr) > 0).astype(np.int64),
    )


def _is_positive(threshold: float | None, strict: bool) -> pl.Expr:
    """Rows that count as positive: all when ``threshold`` is None; a null rating (an implicit
    event) always counts; else ``rating >= threshold`` (``>`` when ``strict``)."""
    if threshold is None:
        return pl.lit(True)
    above = pl.col("rating") > threshold if strict else pl.col("rating") >= threshold
    return pl.col("rating").is_null() | above


# --------------------------------------------------------------------------- msr-stratified


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


# --------------------------------------------------------------------------- leave-one-out


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


# --------------------------------------------------------------------------- temporal


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


# --------------------------------------------------------------------------- strong generalization


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


# --------------------------------------------------------------------------- registry


PROTOCOLS: dict[str, Callable[..., ProtocolSplit]] = {
    "msr-stratified": msr_stratified,
    "leave-one-out": leave_one_out,
    "temporal": temporal,
    "strong-generalization": strong_generalization,
}


def build_protocol(name: str, frame: pl.DataFrame, **params: Any) -> ProtocolSplit:
    """Apply the registered protocol ``name`` to ``frame`` with its keyword ``params``.

    Raises:
        ConfigError: unknown protocol name.
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name](frame, **params)


# --------------------------------------------------------------------------- evaluation

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

    relevant = fold.relevant[users]
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
