"""Ranking-stage metrics on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from feedforge.errors import DataError, ValidationError
from feedforge.evaluation.evaluate import value_at_k
from feedforge.evaluation.ranking_metrics import (
    calibration_error,
    intra_list_diversity,
    request_ndcg,
)


def test_calibration_error_hand_computed() -> None:
    # Two equal-mass bins: {0.1, 0.2} with labels {0, 0}, {0.7, 0.9} with labels {1, 0}.
    y = np.array([0, 0, 1, 0])
    p = np.array([0.2, 0.1, 0.9, 0.7])
    expected = 0.5 * abs(0 - 0.15) + 0.5 * abs(0.5 - 0.8)
    assert calibration_error(y, p, bins=2) == pytest.approx(expected)
    assert calibration_error(y, np.full(4, 0.25), bins=1) == pytest.approx(0.0)
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        calibration_error(y, np.array([0.1, 0.2, 1.5, 0.3]))
    with pytest.raises(DataError):
        calibration_error(np.array([]), np.array([]))


def test_request_ndcg_hand_computed() -> None:
    group = np.array(["a", "a", "a", "b", "b", "c", "c"])
    gain = np.array([0.0, 1.0, 2.0, 1.0, 0.0, 0.0, 0.0])
    score = np.array([0.9, 0.5, 0.1, 0.8, 0.2, 0.3, 0.4])
    # a: order gains (0, 1, 2) -> DCG 1/log2(3) + 2/log2(4); ideal (2, 1, 0) -> 2 + 1/log2(3).
    dcg_a = 1 / math.log2(3) + 2 / 2
    idcg_a = 2 + 1 / math.log2(3)
    # b: the positive is first -> 1. c: no positive -> skipped.
    value, n = request_ndcg(group, gain, score, k=10)
    assert n == 2
    assert value == pytest.approx((dcg_a / idcg_a + 1.0) / 2)
    # k = 1: a gets 0 / 2, b gets 1.
    assert request_ndcg(group, gain, score, k=1)[0] == pytest.approx(0.5)
    # Ties keep input order (the first listed ranks first).
    assert request_ndcg(np.array([1, 1]), np.array([0.0, 1.0]), np.zeros(2), k=1)[0] == 0.0
    with pytest.raises(ValidationError, match="gains"):
        request_ndcg(group, -gain, score)


def test_intra_list_diversity() -> None:
    lists = np.array([[0, 0, 1, -1], [2, 2, 2, 2], [3, -1, -1, -1]])
    # list 0: 3 items, pairs (0,0) same, (0,1) x2 differ -> 2/3; list 1: 0; list 2: no pair.
    assert intra_list_diversity(lists) == pytest.approx((2 / 3 + 0.0) / 2)
    with pytest.raises(ValidationError):
        intra_list_diversity(np.array([1, 2, 3]))


def test_value_at_k_sums_the_observed_value_of_the_top_items() -> None:
    value = sp.csr_matrix(np.array([[0.0, 30.0, 10.0, 0.0], [5.0, 0.0, 0.0, 7.0]]))
    recs = np.array([[1, 3, 2], [2, -1, -1]])
    # user 0: 30 + 0 (+ 10 beyond k=2); user 1: 0 (padding counts nothing).
    assert value_at_k(recs, value, k=2) == pytest.approx((30.0 + 0.0) / 2)
    assert value_at_k(recs, value, k=3) == pytest.approx((40.0 + 0.0) / 2)
