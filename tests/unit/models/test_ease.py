"""EASE: the closed form against a dense reference; scoring histories; limits and errors.

Also ``score_from_history`` of ALS, the other model with a fold-in for users unseen in training
(strong generalisation). The shared contract is in ``test_contract.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from feedforge.datasets.interactions import Interactions
from feedforge.errors import ArtifactError, ValidationError
from feedforge.models import ease
from feedforge.models.als import ALSRecommender
from feedforge.models.ease import EASERecommender, required_gib

INPUTS = {"dataset": "test-dataset"}  # the lineage every saved model records

N_USERS, N_ITEMS = 40, 25


def random_interactions(weights: np.ndarray | None = None) -> Interactions:
    """About 30% dense random positives with weights 1-3; the last user has none."""
    rng = np.random.default_rng(3)
    dense = rng.random((N_USERS, N_ITEMS)) < 0.3
    dense[-1] = False
    users, items = np.nonzero(dense)
    n = len(users)
    w = rng.integers(1, 4, size=n).astype(np.float32) if weights is None else weights
    return Interactions(
        users.astype(np.int32), items.astype(np.int32), w, np.zeros(n, np.int64), N_USERS, N_ITEMS
    )


def reference_weights(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck's closed form in plain numpy: B = I - P diag(1/diag(P)), P = (X^T X + l2 I)^-1."""
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p / np.diag(p)[None, :]


@pytest.fixture(scope="module")
def data() -> Interactions:
    return random_interactions()


@pytest.mark.parametrize("implicit", [True, False])
def test_closed_form_matches_the_dense_reference(data: Interactions, implicit: bool) -> None:
    l2 = 7.0
    model = EASERecommender(l2=l2, implicit=implicit).fit(data)
    x = data.to_csr().toarray().astype(np.float64)
    if implicit:
        x = (x > 0).astype(np.float64)
    expected = reference_weights(x, l2)
    b = model.item_weights_
    assert b is not None and b.dtype == np.float32 and b.shape == (N_ITEMS, N_ITEMS)
    np.testing.assert_allclose(b, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.diag(b), 0.0)
    # Optimality (KKT) of min |X - XB|^2 + l2 |B|^2 s.t. diag(B) = 0: the gradient
    # (X^T X + l2 I) B - X^T X is zero off the diagonal, where B is unconstrained.
    gradient = (x.T @ x + l2 * np.eye(N_ITEMS)) @ b.astype(np.float64) - x.T @ x
    np.fill_diagonal(gradient, 0.0)
    np.testing.assert_allclose(gradient, 0.0, atol=1e-3)
    # Scores are the training rows times B.
    np.testing.assert_allclose(model.score(np.arange(N_USERS)), x @ b, rtol=1e-5, atol=1e-6)


def test_implicit_binarises_and_explicit_uses_weights(data: Interactions) -> None:
    ones = random_interactions(np.ones(len(data), np.float32))
    binary = EASERecommender(l2=7.0).fit(data).item_weights_
    np.testing.assert_array_equal(binary, EASERecommender(l2=7.0).fit(ones).item_weights_)
    weighted = EASERecommender(l2=7.0, implicit=False).fit(data).item_weights_
    assert weighted is not None and binary is not None
    assert not np.allclose(weighted, binary)


def test_gram_matrix_in_column_chunks(data: Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ease, "_GRAM_CHUNK_ENTRIES", 3 * N_USERS)  # 3 items per chunk
    x = data.to_csr()
    np.testing.assert_allclose(ease._gram(x), (x.T @ x).toarray(), rtol=1e-12)


def test_score_from_history_scores_any_history(data: Interactions) -> None:
    model = EASERecommender(l2=7.0).fit(data)
    train = data.to_csr()
    users = np.arange(N_USERS)
    # The training rows give exactly the training users' scores.
    np.testing.assert_array_equal(model.score_from_history(train), model.score(users))
    # A new user: the sum of B's rows of their items (values ignored when implicit).
    history = sp.csr_matrix(([4.0, 1.0], ([0, 0], [2, 5])), shape=(1, N_ITEMS))
    b = model.item_weights_
    assert b is not None
    np.testing.assert_allclose(model.score_from_history(history)[0], b[2] + b[5], rtol=1e-6)
    empty = model.score_from_history(sp.csr_matrix((3, N_ITEMS), dtype=np.float32))
    assert empty.shape == (3, N_ITEMS) and empty.dtype == np.float32 and not empty.any()
    with pytest.warns(RuntimeWarning, match="coo"):
        coo = model.score_from_history(train.tocoo())
    np.testing.assert_array_equal(coo, model.score(users))


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (np.ones((1, N_ITEMS)), "sparse"),
        (sp.csr_matrix((1, N_ITEMS + 1)), "columns"),
        (sp.csr_matrix(np.full((1, N_ITEMS), -1.0)), ">= 0"),
        (sp.csr_matrix(np.full((1, N_ITEMS), np.nan)), "finite"),
    ],
)
def test_score_from_history_rejects_bad_input(data: Interactions, matrix: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        EASERecommender(l2=7.0).fit(data).score_from_history(matrix)


def test_score_rejects_unknown_users(data: Interactions) -> None:
    model = EASERecommender(l2=7.0).fit(data)
    with pytest.raises(ValidationError, match="score_from_history"):
        model.score(np.array([N_USERS]))
    # A user without training data scores 0 everywhere.
    assert not model.score(np.array([N_USERS - 1])).any()


def test_refuses_catalogs_above_max_items_with_the_memory_needed(data: Interactions) -> None:
    model = EASERecommender(max_items=N_ITEMS - 1)
    with pytest.raises(ValidationError, match=r"25 items exceed max_items=24.*GiB"):
        model.fit(data)
    assert model.item_weights_ is None
    # 16 bytes per B entry: the float64 inverse and the inversion's float64 workspace.
    assert required_gib(30_000) == pytest.approx(13.66, abs=0.3)


@pytest.mark.slow
def test_a_catalog_of_16500_items_fits() -> None:
    """Regression: scipy's bundled OpenBLAS died with SIGSEGV inverting the Gram matrix of
    about 16,000 items and more (Amazon Sports: 18,357), taking the process with it."""
    rng = np.random.default_rng(0)
    n_items, n_users = 16_500, 3_000
    users = np.repeat(np.arange(n_users), 12)
    items = rng.integers(0, n_items, size=len(users))
    items[::12] = 7  # every user has item 7; half of them also item 11
    items[1::24] = 11
    data = Interactions(
        users.astype(np.int32), items.astype(np.int32), np.ones(len(users), np.float32),
        np.zeros(len(users), np.int64), n_users, n_items,
    )  # fmt: skip
    model = EASERecommender(l2=50.0).fit(data)
    b = model.item_weights_
    assert b is not None and np.isfinite(b).all()
    np.testing.assert_array_equal(np.diag(b), 0.0)
    # Item 11 always comes with item 7: 7 is the item 11 predicts most strongly.
    assert int(np.argmax(b[11])) == 7


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"l2": 0.0}, "l2"),
        ({"l2": -1.0}, "l2"),
        ({"l2": float("nan")}, "l2"),
        ({"implicit": "yes"}, "implicit"),
        ({"max_items": 0}, "max_items"),
    ],
)
def test_rejects_invalid_params(params: dict[str, Any], match: str, data: Interactions) -> None:
    with pytest.raises(ValidationError, match=match):
        EASERecommender(**params).fit(data)


def test_load_refuses_inconsistent_files(data: Interactions, tmp_path: Path) -> None:
    model = EASERecommender(l2=7.0).fit(data)
    directory = tmp_path / "ease"
    model.save(directory, inputs=INPUTS)
    loaded = EASERecommender.load(directory)
    assert loaded.user_items_ is not None and model.user_items_ is not None
    assert (loaded.user_items_ != model.user_items_).nnz == 0
    np.save(directory / "item_weights.npy", np.zeros((N_ITEMS, N_ITEMS - 1), np.float32))
    with pytest.raises(ArtifactError, match="item_weights"):
        EASERecommender.load(directory)
    model.save(directory, inputs=INPUTS)
    x = data.to_csr()
    np.savez(directory / "user_items.npz", data=x.data[1:], indices=x.indices, indptr=x.indptr)
    with pytest.raises(ArtifactError, match="user_items"):
        EASERecommender.load(directory)


# -- score_from_history of ALS ----------------------------------------------------------------


def test_als_score_from_history_folds_in_each_row(data: Interactions) -> None:
    model = ALSRecommender(factors=4, iterations=5).fit(data)
    items = model.item_embeddings()
    history = data.to_csr()[:6]
    scores = model.score_from_history(history)
    assert scores.shape == (6, N_ITEMS) and scores.dtype == np.float32
    for row in range(6):
        vector = model.fold_in(history[row].indices, history[row].data)
        np.testing.assert_allclose(scores[row], items @ vector, rtol=1e-5, atol=1e-6)
    assert not model.score_from_history(sp.csr_matrix((2, N_ITEMS))).any()
    with pytest.raises(ValidationError, match="columns"):
        model.score_from_history(sp.csr_matrix((1, N_ITEMS + 1)))
    with pytest.raises(ValidationError, match="columns"):
        model.score_from_history(np.ones((1, N_ITEMS)))
    with pytest.raises(ValidationError, match="weights"):
        model.score_from_history(sp.csr_matrix(np.full((1, N_ITEMS), -1.0)))
