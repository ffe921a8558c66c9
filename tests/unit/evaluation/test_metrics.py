"""Top-K and binary-label metrics on hand-computed examples and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from feedforge.errors import DataError, ValidationError
from feedforge.evaluation.metrics import (
    auc,
    catalog_coverage,
    hitrate_at_k,
    log_loss,
    map_at_k,
    ndcg_at_k,
    per_user_metrics,
    precision_at_k,
    ranking_report,
    recall_at_k,
    recall_at_k_total,
)

L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)  # discounts of ranks 1, 2, 3


def one(recommended: list[int], relevant: set[int], k: int | None = None) -> dict[str, float]:
    per_user = per_user_metrics(np.array([recommended]), [relevant], k)
    return {name: float(values[0]) for name, values in per_user.items()}


def test_hand_computed_user_with_two_hits_and_padding() -> None:
    # recommended [3, 1, 7, -1], relevant {1, 7, 9}, k = 4
    # hits = [0, 1, 1, 0]; H = 2; R = 3; min(k, R) = 3
    # recall = 2/3; recall_total = 2/3; precision = 2/4 (the padding counts as a miss)
    # DCG  = 1/log2(3) + 1/log2(4)                 = 0.63093 + 0.5 = 1.13093
    # IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4)     = 2.13093        -> ndcg = 0.53072
    # AP   = (P@2 * 1 + P@3 * 1) / 3 = (1/2 + 2/3) / 3 = 0.38889
    m = one([3, 1, 7, -1], {1, 7, 9})
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["recall_total"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(0.5)
    assert m["ndcg"] == pytest.approx((1 / L3 + 1 / L4) / (1 / L2 + 1 / L3 + 1 / L4))
    assert m["ndcg"] == pytest.approx(0.53072, abs=1e-5)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert m["hitrate"] == 1.0


def test_user_with_one_relevant_item() -> None:
    # recommended [2, 5, 6, 8], relevant {5}: hit at rank 2 only; R = 1
    # recall = 1/min(4, 1) = 1; precision = 1/4; ndcg = (1/log2(3)) / (1/log2(2)) = 0.63093
    # AP = P@2 / min(4, 1) = 1/2
    m = one([2, 5, 6, 8], {5})
    assert m["recall"] == 1.0
    assert m["precision"] == 0.25
    assert m["ndcg"] == pytest.approx(1 / L3)
    assert m["map"] == pytest.approx(0.5)


def test_no_hits_score_zero() -> None:
    m = one([0, 4, -1, -1], {9})
    assert all(value == 0.0 for value in m.values())


def test_perfect_list_scores_one() -> None:
    m = one([4, 2, 8], {2, 4, 8})
    assert all(m[name] == pytest.approx(1.0) for name in ("recall", "ndcg", "map", "precision"))


def test_recall_caps_the_denominator_at_k_but_recall_total_does_not() -> None:
    # recommended [1, 2], relevant {1, 2, 3, 4}, k = 2: H = 2
    # recall = 2 / min(2, 4) = 1.0 ; recall_total = 2 / 4 = 0.5 ; ndcg = 1 (IDCG over 2 ranks)
    m = one([1, 2], {1, 2, 3, 4})
    assert m["recall"] == 1.0
    assert m["recall_total"] == 0.5
    assert m["ndcg"] == pytest.approx(1.0)


def test_k_cuts_the_list_and_short_lists_count_as_padding() -> None:
    # k = 2 of [9, 8, 1]: the hit at rank 3 is cut off.
    assert one([9, 8, 1], {1}, k=2)["recall"] == 0.0
    # k = 4 on a 2-column list: precision divides by k, not by the list length.
    assert one([1, 5], {1}, k=4)["precision"] == 0.25


def test_repeated_item_counts_once() -> None:
    # [1, 1, 2] with relevant {1}: only rank 1 hits -> precision 1/3, ndcg 1
    m = one([1, 1, 2], {1})
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["ndcg"] == pytest.approx(1.0)


def test_means_skip_users_without_relevant_items() -> None:
    recommended = np.array([[2, 5, 6, 8], [0, 4, -1, -1], [1, 2, 3, 4]])
    relevant = [{5}, {9}, set()]
    # users 0 and 1 only: recall (1 + 0) / 2
    assert recall_at_k(recommended, relevant) == pytest.approx(0.5)
    assert recall_at_k_total(recommended, relevant) == pytest.approx(0.5)
    assert hitrate_at_k(recommended, relevant) == pytest.approx(0.5)
    assert precision_at_k(recommended, relevant) == pytest.approx(0.125)
    assert ndcg_at_k(recommended, relevant) == pytest.approx(1 / L3 / 2)
    assert map_at_k(recommended, relevant) == pytest.approx(0.25)
    assert np.isnan(per_user_metrics(recommended, relevant)["recall"][2])


def test_sparse_relevant_matches_sets() -> None:
    recommended = np.array([[3, 1, 7, -1], [2, 5, 6, 8], [0, 4, -1, -1]])
    sets = [{1, 7, 9}, {5}, {9}]
    rows = np.repeat(np.arange(3), [len(s) for s in sets])
    cols = np.concatenate([sorted(s) for s in sets])
    csr = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(3, 12))
    from_sets = per_user_metrics(recommended, sets)
    from_csr = per_user_metrics(recommended, csr)
    for name in from_sets:
        np.testing.assert_allclose(from_csr[name], from_sets[name])


def test_matches_a_plain_python_reference_on_random_lists() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, k = 50, 30, 7
    recommended = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    recommended[rng.random(recommended.shape) < 0.1] = -1
    relevant = [
        set(rng.choice(n_items, size=rng.integers(1, 10), replace=False).tolist())
        for _ in range(n_users)
    ]

    def reference(rec: list[int], rel: set[int]) -> tuple[float, float, float]:
        hits = [1 if item in rel else 0 for item in rec]
        dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(rel))))
        ap = sum(sum(hits[: j + 1]) / (j + 1) for j, h in enumerate(hits) if h)
        return sum(hits) / min(k, len(rel)), dcg / idcg, ap / min(k, len(rel))

    expected = np.array(
        [reference(r.tolist(), s) for r, s in zip(recommended, relevant, strict=True)]
    )
    got = per_user_metrics(recommended, relevant, k)
    np.testing.assert_allclose(got["recall"], expected[:, 0])
    np.testing.assert_allclose(got["ndcg"], expected[:, 1])
    np.testing.assert_allclose(got["map"], expected[:, 2])


def test_catalog_coverage() -> None:
    # distinct items {0, 1, 2, 3} of a 10-item catalog; -1 is padding
    recommended = np.array([[0, 1, -1], [1, 2, 3]])
    assert catalog_coverage(recommended, n_items=10) == pytest.approx(0.4)
    assert catalog_coverage(recommended, n_items=10, k=1) == pytest.approx(0.2)  # {0, 1}
    with pytest.raises(ValidationError):
        catalog_coverage(recommended, n_items=3)


def test_ranking_report_keys_and_population() -> None:
    recommended = np.array([[2, 5, 6, 8], [0, 4, -1, -1], [7, 7, 7, 7]])
    report = ranking_report(recommended, [{5}, {9}, set()], n_items=10, k=4)
    assert list(report) == [
        "ndcg@4", "recall@4", "map@4", "hitrate@4", "coverage@4", "precision@4"
    ]  # fmt: skip
    assert report["recall@4"] == pytest.approx(0.5)
    # coverage over the evaluated users only: {2, 5, 6, 8, 0, 4} of 10 (item 7 is not counted)
    assert report["coverage@4"] == pytest.approx(0.6)
    assert all(isinstance(v, float) for v in report.values())


def test_input_errors() -> None:
    with pytest.raises(DataError, match="no user has a relevant item"):
        recall_at_k(np.array([[1, 2]]), [set()])
    with pytest.raises(ValidationError, match="2-D"):
        recall_at_k(np.array([1, 2]), [{1}])
    with pytest.raises(ValidationError, match="entries for"):
        recall_at_k(np.array([[1, 2]]), [{1}, {2}])
    with pytest.raises(ValidationError, match="k must be"):
        recall_at_k(np.array([[1, 2]]), [{1}], k=0)
    with pytest.raises(ValidationError, match="below -1"):
        recall_at_k(np.array([[1, -2]]), [{1}])
    with pytest.raises(ValidationError, match="n_items"):
        recall_at_k(np.array([[1, 5]]), sp.csr_matrix(np.ones((1, 3))))


def test_auc_and_log_loss_hand_computed() -> None:
    # AUC: positives score 0.35 and 0.8, negatives 0.1 and 0.4. Of the 4 (pos, neg) pairs,
    # 0.35 > 0.1, 0.35 < 0.4, 0.8 > 0.1, 0.8 > 0.4 -> 3/4.
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # log loss: -(ln 0.8 + ln(1 - 0.4)) / 2 = (0.22314 + 0.51083) / 2 = 0.36698
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(0.366985, abs=1e-6)
    # p = 0 or 1 is clipped, not infinite
    assert math.isfinite(log_loss(np.array([1, 0]), np.array([0.0, 1.0])))


def test_auc_and_log_loss_refuse_a_single_class() -> None:
    with pytest.raises(DataError, match="every label is 1"):
        auc(np.array([1, 1]), np.array([0.2, 0.3]))
    with pytest.raises(DataError, match="every label is 0"):
        log_loss(np.array([0, 0]), np.array([0.2, 0.3]))
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        log_loss(np.array([0, 1]), np.array([0.2, 1.3]))
    with pytest.raises(ValidationError, match="NaN"):
        auc(np.array([0, 1]), np.array([0.2, np.nan]))
