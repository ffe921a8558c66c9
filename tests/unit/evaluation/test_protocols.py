"""Evaluation protocols on small hand-built frames with known answers, and evaluate_fold."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from feedforge.datasets.interactions import Interactions
from feedforge.errors import ConfigError, DataError, ValidationError
from feedforge.evaluation.protocols import (
    PROTOCOLS,
    EvalFold,
    ProtocolSplit,
    build_protocol,
    evaluate_fold,
    leave_one_out,
    msr_stratified,
    msr_stratified_rows,
    strong_generalization,
    temporal,
)
from feedforge.models.base import Recommender

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def frame(rows: list[tuple[str, str, float, float | None]]) -> pl.DataFrame:
    """``(user, item, day offset, rating)`` rows, in this order."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [T0 + timedelta(days=r[2]) for r in rows],
            "rating": [r[3] for r in rows],
        },
        schema={
            "user_id": pl.String,
            "item_id": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            "rating": pl.Float64,
        },
    )


def pairs(split: ProtocolSplit, user_idx: np.ndarray, item_idx: np.ndarray) -> set[tuple[str, str]]:
    return set(zip(split.users.id_of(user_idx), split.items.id_of(item_idx), strict=True))


def train_pairs(split: ProtocolSplit, fold: EvalFold) -> set[tuple[str, str]]:
    return pairs(split, fold.train.user_idx, fold.train.item_idx)


def matrix_pairs(split: ProtocolSplit, matrix: sp.csr_matrix) -> set[tuple[str, str]]:
    rows, cols = matrix.nonzero()
    return pairs(split, rows, cols)


class FixedScores(Recommender):
    """A fake recommender whose ``(n_users, n_items)`` scores are given."""

    name = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = np.asarray(scores, dtype=np.float32)

    def fit(self, interactions: Interactions) -> Self:
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        return self.scores[np.asarray(user_idx)]

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path, build_command: str = "feedforge train") -> Self:
        raise NotImplementedError


# --------------------------------------------------------------------------- msr-stratified


def test_msr_rows_match_a_hand_trace() -> None:
    # np.random.seed(42); np.random.rand(12) rounded:
    #   row:    0      1      2      3      4      5      6      7      8      9      10     11
    #   rand: .3745  .9507  .7320  .5987  .1560  .1560  .0581  .8662  .6011  .7081  .0206  .9699
    # groups: g0 = {3} (n=1), g1 = {1, 6} (n=2), g2 = {0, 2, 5, 7, 9, 11} (n=6), g3 = {4, 8, 10}
    # sorted by (group, rand): g0 [3]; g1 [6, 1]; g2 [5, 0, 9, 2, 7, 11]; g3 [10, 4, 8]
    # train counts round(0.75 n), half to even: n=1 -> 1, n=2 -> round(1.5) = 2,
    # n=6 -> round(4.5) = 4, n=3 -> round(2.25) = 2
    groups = np.array([2, 1, 2, 0, 3, 2, 1, 2, 3, 2, 3, 2])
    train, test = msr_stratified_rows(groups, ratio=0.75, seed=42)
    assert train.tolist() == [3, 6, 1, 5, 0, 9, 2, 10, 4]
    assert test.tolist() == [7, 11, 8]
    np.random.seed(42)  # the source's own calls give the same stream
    assert np.array_equal(np.random.RandomState(42).rand(12), np.random.rand(12))


def test_msr_rows_reject_a_bad_ratio() -> None:
    with pytest.raises(ConfigError):
        msr_stratified_rows(np.zeros(3, dtype=np.int64), ratio=1.0)


def msr_frame() -> pl.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for u in range(12):
        for i in rng.choice(30, size=int(rng.integers(4, 15)), replace=False):
            rows.append((f"u{u}", str(i), float(rng.integers(0, 100)), float(rng.integers(1, 6))))
    return frame(rows)


def test_msr_stratified_folds() -> None:
    data = msr_frame()
    split = msr_stratified(data)
    assert split.protocol == "msr-stratified"
    assert split.metrics == ("map_total@10", "ndcg@10", "precision@10", "recall_total@10")
    # Items are the groups; their codes follow numeric order ("2" < "10"), as the source's
    # integer ids do, so the returned row order is the source's.
    codes = np.unique(data["item_id"].cast(pl.Int64).to_numpy(), return_inverse=True)[1]
    train_rows, test_rows = msr_stratified_rows(codes, 0.75, 42)
    all_pairs = list(zip(data["user_id"], data["item_id"], strict=True))
    test_fold = split.test
    assert len(test_fold.train) == len(train_rows) == split.info["train_rows"]
    assert train_pairs(split, test_fold) == {all_pairs[r] for r in train_rows}
    assert matrix_pairs(split, test_fold.relevant) == {all_pairs[r] for r in test_rows}
    assert matrix_pairs(split, test_fold.exclude) == train_pairs(split, test_fold)
    assert test_fold.candidates is None
    assert test_fold.users.tolist() == sorted(
        {split.users.get(all_pairs[r][0]) for r in test_rows}  # type: ignore[type-var]
    )
    # The validation fold splits the train part again, with another seed.
    val = split.validation
    assert train_pairs(split, val) | matrix_pairs(split, val.relevant) == train_pairs(
        split, test_fold
    )
    assert not train_pairs(split, val) & matrix_pairs(split, val.relevant)
    assert split.info["validation_rows"] + split.info["validation_train_rows"] == len(train_rows)
    # Per item, the train share is round(0.75 n).
    counts = data.group_by("item_id").len()
    train_counts = (
        pl.DataFrame({"item_id": split.items.id_of(test_fold.train.item_idx)})
        .group_by("item_id")
        .len()
    )
    joined = counts.join(train_counts, on="item_id", how="left", suffix="_train").fill_null(0)
    expected = np.round(0.75 * joined["len"].to_numpy())
    assert np.array_equal(joined["len_train"].to_numpy(), expected)


def test_msr_min_rating_and_filter_by_user() -> None:
    data = frame([("a", "x", 0, 1.0), ("b", "x", 1, 2.0), ("a", "y", 2, 3.0)])
    split = msr_stratified(data, min_rating=2)
    assert split.info["rows"] == 2  # item y has one rating
    assert set(split.items.ids.to_list()) == {"x"}
    by_user = msr_stratified(msr_frame(), filter_by="user")
    assert by_user.info["filter_by"] == "user"
    with pytest.raises(ConfigError):
        msr_stratified(data, filter_by="day")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- leave-one-out


def loo_frame() -> pl.DataFrame:
    return frame(
        [
            ("a", "x", 1, None),
            ("c", "r", 9, None),  # c's rows arrive out of time order
            ("a", "y", 3, None),
            ("a", "z", 3, None),  # ties y on time: input order breaks it, so z is last
            ("b", "x", 1, None),  # b has 2 rows: all train, not evaluated
            ("b", "y", 2, None),
            ("c", "s", 5, None),
            ("c", "t", 7, None),
            ("c", "s", 1, None),  # c repeats s: the earlier s stays in train
        ]
    )


def test_leave_one_out_last_and_second_to_last_with_ties() -> None:
    split = leave_one_out(loo_frame())
    assert split.metrics == ("hr@10", "ndcg@10")
    a, b, c = (split.users.get(u) for u in "abc")
    assert split.validation.users.tolist() == split.test.users.tolist() == [a, c]
    assert split.info["users_below_3"] == 1
    val, test = split.validation, split.test
    assert matrix_pairs(split, val.relevant) == {("a", "y"), ("c", "t")}
    assert matrix_pairs(split, test.relevant) == {("a", "z"), ("c", "r")}
    assert train_pairs(split, val) == {("a", "x"), ("b", "x"), ("b", "y"), ("c", "s")}
    assert len(val.train) == 5  # c's two s rows
    assert train_pairs(split, test) == train_pairs(split, val) | {("a", "y"), ("c", "t")}
    # Full ranking: every other interacted item is excluded, never the target.
    assert matrix_pairs(split, val.exclude) == {
        ("a", "x"), ("a", "z"), ("b", "x"), ("b", "y"), ("c", "s"), ("c", "r")
    }  # fmt: skip
    assert matrix_pairs(split, test.exclude) == {
        ("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "s"), ("c", "t")
    }  # fmt: skip
    assert val.candidates is None and test.candidates is None
    # the test fold's train sequences end with the validation item
    assert split.items.id_of(test.train.sequences()[c])[-1] == "t"
    assert b is not None and len(test.train.sequences()[b]) == 2


def test_leave_one_out_target_repeating_a_train_item_is_not_excluded() -> None:
    data = frame([("a", "x", 1, None), ("a", "y", 2, None), ("a", "x", 3, None)])
    split = leave_one_out(data)
    assert matrix_pairs(split, split.test.relevant) == {("a", "x")}
    assert matrix_pairs(split, split.test.exclude) == {("a", "y")}


def test_sampled_candidates_hold_the_target_and_never_a_user_item() -> None:
    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", f"i{i}", float(day), None)
        for u in range(30)
        for day, i in enumerate(rng.choice(300, size=20, replace=False))
    ]
    # a dense user: 290 of 300 items seen, so only 10 unseen items are left to draw from
    rows += [("dense", f"i{i}", float(i), None) for i in range(290)]
    split = leave_one_out(frame(rows), negatives=10, seed=7)
    for fold in (split.validation, split.test):
        cand = fold.candidates
        assert cand is not None and cand.shape == (31, 11)
        seen = (fold.exclude + fold.relevant).tocsr()
        for row, user in enumerate(fold.users):
            own = set(seen.indices[seen.indptr[user] : seen.indptr[user + 1]].tolist())
            assert cand[row, 0] == fold.relevant[user].indices[0]
            assert not own & set(cand[row, 1:].tolist())
            assert len(set(cand[row].tolist())) == 11
    dense = int(np.flatnonzero(split.test.users == split.users.get("dense"))[0])
    assert split.test.candidates is not None
    unseen = {f"i{i}" for i in range(290, 300)}
    assert set(split.items.id_of(split.test.candidates[dense, 1:])) == unseen
    again = leave_one_out(frame(rows), negatives=10, seed=7)
    assert np.array_equal(again.test.candidates, split.test.candidates)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="unseen"):
        leave_one_out(frame(rows), negatives=11)


# --------------------------------------------------------------------------- temporal


def temporal_frame() -> pl.DataFrame:
    return frame(
        [
            ("a", "x", 1, 5.0),
            ("b", "y", 2, 4.0),
            ("a", "y", 3, 3.0),
            ("b", "z", 4, 5.0),
            ("c", "x", 5, 2.0),
            ("a", "w", 6, 4.0),
            ("a", "z", 7, 5.0),  # validation: a and z known in train -> relevant
            ("d", "v", 8, 5.0),  # validation: d and v unknown before t1 -> dropped
            ("d", "x", 9, 5.0),  # test: d known before t2 -> relevant
            ("b", "w", 10, 3.0),  # test: rating 3 < 4 -> not relevant
        ]
    )


def test_temporal_by_quantiles() -> None:
    # t2 = ts[int(10 * 0.8)] = day 9, t1 = ts[int(10 * 0.6)] = day 7
    split = temporal(temporal_frame(), validation_fraction=0.2, test_fraction=0.2)
    assert split.info["t1"] == (T0 + timedelta(days=7)).isoformat()
    assert split.info["t2"] == (T0 + timedelta(days=9)).isoformat()
    assert set(split.users.ids.to_list()) == {"a", "b", "c", "d"}  # fitted before t2
    assert set(split.items.ids.to_list()) == {"v", "w", "x", "y", "z"}
    assert len(split.validation.train) == 6 and len(split.test.train) == 8
    assert matrix_pairs(split, split.validation.relevant) == {("a", "z")}
    assert matrix_pairs(split, split.test.relevant) == {("d", "x")}
    assert split.test.users.tolist() == [split.users.get("d")]
    assert matrix_pairs(split, split.test.exclude) == train_pairs(split, split.test)
    assert split.metrics == (
        "ndcg@10", "recall@10", "map@10", "hitrate@10", "coverage@10", "precision@10"
    )  # fmt: skip


def test_temporal_by_days_and_without_threshold() -> None:
    # max = day 10: t2 = day 8, t1 = day 6
    split = temporal(temporal_frame(), validation_days=2, test_days=2, threshold=None)
    assert split.info["t2"] == (T0 + timedelta(days=8)).isoformat()
    assert len(split.validation.train) == 5
    # validation (days 6-7): w first appears on day 6, unknown to train -> dropped
    assert matrix_pairs(split, split.validation.relevant) == {("a", "z")}
    # test (days 8-10): d first appears on day 8 -> unknown; b's rating 3 counts (no threshold)
    assert matrix_pairs(split, split.test.relevant) == {("b", "w")}
    with pytest.raises(ConfigError):
        temporal(temporal_frame(), test_days=2)
    with pytest.raises(ConfigError):
        temporal(temporal_frame(), validation_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------------- strong generalization


def test_strong_generalization_folds() -> None:
    rng = np.random.default_rng(1)
    rows: list[tuple[str, str, float, float | None]] = []
    for u in range(1, 31):
        for day, i in enumerate(rng.choice(40, size=5 + u % 7, replace=False)):
            rows.append((str(u), str(i), float(day), 4.0))
        rows.append((str(u), "40", 50.0, 3.5))  # not > 3.5: dropped
    rows += [("31", str(i), 0.0, 5.0) for i in range(4)]  # 4 items < min_items: dropped
    # The source's user order: ids sorted numerically, permuted with seed 98765.
    permuted = (np.arange(1, 31)[np.random.RandomState(98765).permutation(30)]).astype(str)
    train_users, val_users, test_users = permuted[:20], permuted[20:25], permuted[25:]
    rows.append((str(test_users[0]), "held-only", 60.0, 5.0))  # not in the vocabulary

    split = strong_generalization(frame(rows), n_heldout_users=5)
    assert split.metrics == ("recall@20", "recall@50", "ndcg@100") and split.k == 100
    assert split.info["training_users"] == 20 and split.info["users"] == 30
    vocabulary = {r[1] for r in rows if r[0] in set(train_users) and r[3] and r[3] > 3.5}
    assert set(split.items.ids.to_list()) == vocabulary
    assert "held-only" not in vocabulary and "40" not in vocabulary
    train_rows = {(r[0], r[1]) for r in rows if r[0] in set(train_users) and r[1] in vocabulary}
    for fold, held in ((split.validation, val_users), (split.test, test_users)):
        assert sorted(split.users.id_of(fold.users)) == sorted(held)
        fold_in = train_pairs(split, fold) - train_rows
        assert {u for u, _ in fold_in} == set(held)
        assert matrix_pairs(split, fold.exclude) == train_pairs(split, fold)
        for user in held:
            u = split.users.get(str(user))
            assert u is not None
            n = sum(1 for r in rows if r[0] == user and r[1] in vocabulary and (r[3] or 0) > 3.5)
            held_out = set(split.items.id_of(fold.relevant[u].indices))
            own_fold_in = {i for v, i in fold_in if v == user}
            assert len(held_out) == int(0.2 * n)
            assert len(own_fold_in) == n - int(0.2 * n)
            assert not held_out & own_fold_in


def test_strong_generalization_fractions_and_errors() -> None:
    rows = [(str(u), str(i), float(i), None) for u in range(20) for i in range(6)]
    split = strong_generalization(frame(rows), n_heldout_users=0.1)
    assert split.info["n_heldout_users"] == 2 and len(split.test.users) == 2
    with pytest.raises(DataError):
        strong_generalization(frame(rows), n_heldout_users=10)
    with pytest.raises(ConfigError):
        strong_generalization(frame(rows), n_heldout_users=2.5)


# --------------------------------------------------------------------------- registry, input


def test_registry_and_input_checks() -> None:
    assert set(PROTOCOLS) == {
        "msr-stratified",
        "leave-one-out",
        "temporal",
        "strong-generalization",
    }
    split = build_protocol("leave-one-out", loo_frame(), negatives=None)
    assert split.protocol == "leave-one-out"
    with pytest.raises(ConfigError, match="unknown protocol"):
        build_protocol("random", loo_frame())
    with pytest.raises(ValidationError, match="lacks"):
        msr_stratified(loo_frame().drop("item_id"))
    with pytest.raises(ValidationError, match="datetime"):
        msr_stratified(loo_frame().with_columns(pl.col("timestamp").dt.epoch("s")))
    with pytest.raises(ValidationError, match="null"):
        msr_stratified(loo_frame().with_columns(pl.lit(None, pl.String).alias("user_id")))
    with pytest.raises(DataError):
        msr_stratified(loo_frame().clear())
    # rating is optional
    assert leave_one_out(loo_frame().drop("rating")).info["evaluated_users"] == 2


# --------------------------------------------------------------------------- evaluate_fold


def hand_fold(candidates: np.ndarray | None = None) -> EvalFold:
    n_users, n_items = 3, 6
    relevant = sp.csr_matrix(
        (np.ones(3, dtype=np.float32), ([0, 0, 1], [1, 4, 5])), shape=(n_users, n_items)
    )
    exclude = sp.csr_matrix(
        (np.ones(2, dtype=np.float32), ([0, 1], [0, 2])), shape=(n_users, n_items)
    )
    empty = np.empty(0, dtype=np.int32)
    train = Interactions(
        empty, empty, empty.astype(np.float32), empty.astype(np.int64), n_users, n_items
    )
    return EvalFold(train, relevant, exclude, np.array([0, 1]), candidates)


def test_evaluate_fold_full_ranking_by_hand() -> None:
    scores = np.array(
        [
            [9, 8, 1, 2, 7, 0],  # item 0 excluded -> top 3 = 1, 4, 3: hits [1, 1, 0], R = 2
            [0, 1, 9, 5, 4, 3],  # item 2 excluded -> top 3 = 3, 4, 5: hits [0, 0, 1], R = 1
            [0, 0, 0, 0, 0, 0],  # not evaluated
        ]
    )
    names = (
        "precision@3", "recall@3", "recall_total@3", "ndcg@3", "map@3", "map_total@3",
        "hr@3", "hitrate@1", "precision@1", "coverage@3",
    )  # fmt: skip
    for batch_size in (1, 1024):
        got = evaluate_fold(FixedScores(scores), hand_fold(), names, k=3, batch_size=batch_size)
        assert list(got) == list(names)
        assert got["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
        assert got["recall@3"] == pytest.approx(1.0)
        assert got["recall_total@3"] == pytest.approx(1.0)
        # user 0: DCG = IDCG; user 1: 1 / log2(4) over IDCG 1
        assert got["ndcg@3"] == pytest.approx((1.0 + 0.5) / 2)
        # user 0: (1/1 + 2/2) / 2 = 1; user 1: (1/3) / 1
        assert got["map@3"] == pytest.approx((1 + 1 / 3) / 2)
        assert got["map_total@3"] == pytest.approx((1 + 1 / 3) / 2)
        assert got["hr@3"] == 1.0 and got["hitrate@1"] == 0.5 and got["precision@1"] == 0.5
        assert got["coverage@3"] == pytest.approx(4 / 6)  # items {1, 3, 4, 5}
    assert scores[0, 0] == 9  # the model's array is not modified


def test_evaluate_fold_excluded_items_never_count() -> None:
    fold = hand_fold()
    exclude = sp.csr_matrix(np.array([[1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1], [0] * 6]))
    fold = EvalFold(fold.train, fold.relevant, exclude, fold.users)
    scores = np.tile(np.arange(6, 0, -1), (3, 1))  # item 0 best ... item 5 worst
    got = evaluate_fold(FixedScores(scores), fold, ("recall@3", "precision@3"), k=3)
    # user 0: only item 4 is left (a hit, R = 2): recall 1/2, precision 1/3 (padding = miss)
    # user 1: relevant item 5 is excluded: 0
    assert got["recall@3"] == pytest.approx(0.25)
    assert got["precision@3"] == pytest.approx(1 / 6)


def test_evaluate_fold_sampled_by_hand() -> None:
    candidates = np.array([[1, 2, 3], [5, 0, 4]])
    fold = hand_fold(candidates)
    fold = EvalFold(
        fold.train, sp.csr_matrix(([1.0, 1.0], ([0, 1], [1, 5])), shape=(3, 6)), fold.exclude,
        fold.users, candidates,
    )  # fmt: skip
    scores = np.array(
        [
            [100, 5, 5, 1, 0, 0],  # item 0 is no candidate; target 1 ties item 2 -> rank 2
            [3, 0, 0, 0, 2, 0],  # target 5 below 0 and 4 -> rank 3
            [0, 0, 0, 0, 0, 0],
        ]
    )
    got = evaluate_fold(FixedScores(scores), fold, ("hr@2", "ndcg@2", "hr@3"), k=3)
    assert got["hr@2"] == 0.5
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3)) / 2)
    assert got["hr@3"] == 1.0


def test_evaluate_fold_errors() -> None:
    fold = hand_fold()
    good = FixedScores(np.zeros((3, 6)))
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate_fold(good, fold, ("mrr@3",), k=3)
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate_fold(good, fold, ("map",), k=3)  # the cut-off is always written out
    with pytest.raises(ConfigError, match="K must"):
        evaluate_fold(good, fold, ("ndcg@5",), k=3)
    with pytest.raises(DataError, match="NaN"):
        evaluate_fold(FixedScores(np.full((3, 6), np.nan)), fold, ("ndcg@3",), k=3)
    with pytest.raises(DataError, match="expected"):
        evaluate_fold(FixedScores(np.zeros((3, 5))), fold, ("ndcg@3",), k=3)


def test_oracle_scores_perfectly_on_leave_one_out() -> None:
    split = leave_one_out(loo_frame())
    for fold in (split.validation, split.test):
        oracle = FixedScores(fold.relevant.toarray())
        got = evaluate_fold(oracle, fold, split.metrics, split.k)
        assert got == {"hr@10": 1.0, "ndcg@10": 1.0}
