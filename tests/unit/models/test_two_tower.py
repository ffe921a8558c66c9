"""Two-tower beyond the shared contract: loss, features, history windows, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from feedforge.datasets.interactions import Interactions
from feedforge.errors import ValidationError
from feedforge.models.two_tower import (
    TwoTowerNet,
    TwoTowerRecommender,
    in_batch_softmax_loss,
    padded_features,
    recent_history,
)

INPUTS = {"dataset": "test-dataset"}  # the lineage every saved model records

TINY = {"embedding_dim": 16, "hidden_dim": 16, "batch_size": 32, "epochs": 20, "device": "cpu"}
N_USERS, N_ITEMS = 30, 14


def genre_blocks() -> Interactions:
    """Users 0-14 like items 0-5 (genre 0), users 15-29 items 6-11 (genre 1).

    Items 12 (genre 0) and 13 (genre 1) are never interacted with: only their features
    can place them.
    """
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(N_USERS):
        block = np.arange(6) if u < N_USERS // 2 else np.arange(6, 12)
        chosen = rng.permutation(block)[:5]
        users += [u] * len(chosen)
        items += chosen.tolist()
    genres = np.array([0] * 6 + [1] * 6 + [0, 1])
    features = sp.csr_matrix(
        (np.ones(N_ITEMS, np.float32), (np.arange(N_ITEMS), genres)), shape=(N_ITEMS, 2)
    )
    n = len(users)
    return Interactions(
        np.array(users, np.int32), np.array(items, np.int32), np.ones(n, np.float32),
        np.arange(n, dtype=np.int64) * 1_000_000, N_USERS, N_ITEMS, item_features=features,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fitted() -> tuple[Interactions, TwoTowerRecommender]:
    interactions = genre_blocks()
    return interactions, TwoTowerRecommender(**TINY).fit(interactions)


def test_smoke_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    index, weight = padded_features(None, 20)
    net = TwoTowerNet(
        10, 20, torch.from_numpy(index), torch.from_numpy(weight), 0, dim=16, history_len=5,
        pooling="attention", use_user_id=True, hidden_dim=16, dropout=0.0, normalize=True,
    )  # fmt: skip
    history = torch.randint(0, 21, (16, 5))
    users, items = torch.randint(0, 10, (16,)), torch.randint(0, 20, (16,))
    log_q = torch.full((20,), -np.log(20.0))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = in_batch_softmax_loss(
            net.user_tower(history, users), net.item_tower(items), items, log_q, 0.1
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_in_batch_loss_subtracts_log_q_and_masks_duplicates() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    item_idx = torch.tensor([4, 7, 4])  # rows 0 and 2 share their positive
    log_q = torch.zeros(10)
    log_q[4], log_q[7] = np.log(0.5), np.log(0.25)
    loss = in_batch_softmax_loss(users, items, item_idx, log_q, temperature=0.5)
    logits = users @ items.T / 0.5 - log_q[item_idx]
    expected = torch.stack(
        [
            -torch.log_softmax(logits[0, [0, 1]], 0)[0],  # column 2 is item 4 again: masked
            -torch.log_softmax(logits[1], 0)[1],
            -torch.log_softmax(logits[2, [1, 2]], 0)[1],  # column 0 is item 4 again: masked
        ]
    ).mean()
    torch.testing.assert_close(loss, expected)


def test_padded_features_round_trip() -> None:
    csr = sp.csr_matrix(np.array([[0, 2, 0], [0, 0, 0], [1, 0.5, 3]], np.float32))
    index, weight = padded_features(csr, 3)
    assert index.shape == weight.shape == (3, 3)
    dense = np.zeros((3, 4), np.float32)
    np.add.at(dense, (np.arange(3)[:, None].repeat(3, 1), index), weight)
    np.testing.assert_array_equal(dense[:, 1:], csr.toarray())
    index, weight = padded_features(None, 4)
    assert index.shape == (4, 1) and not index.any() and not weight.any()


def test_recent_history_is_right_aligned_and_stays_in_the_user() -> None:
    flat = torch.tensor([10, 11, 12, 20, 21, 22, 23])
    start, end = torch.tensor([0, 3, 3, 0]), torch.tensor([2, 7, 3, 0])
    tokens = recent_history(flat, start, end, length=3)
    expected = [[0, 11, 12], [22, 23, 24], [0, 0, 0], [0, 0, 0]]
    np.testing.assert_array_equal(tokens.numpy(), expected)


def test_learns_blocks_and_places_cold_items_by_their_features(
    fitted: tuple[Interactions, TwoTowerRecommender],
) -> None:
    _, model = fitted
    scores = model.score(np.arange(N_USERS))
    block_a = np.arange(N_USERS) < N_USERS // 2
    # Warm items: own block above the other block.
    own = np.where(block_a[:, None], scores[:, :6], scores[:, 6:12])
    other = np.where(block_a[:, None], scores[:, 6:12], scores[:, :6])
    assert (own.mean(axis=1) > other.max(axis=1)).all()
    # Cold items: the one sharing the user's genre scores higher.
    cold_gap = scores[:, 12] - scores[:, 13]  # genre 0 minus genre 1
    assert (np.where(block_a, cold_gap, -cold_gap) > 0).all()


def test_normalized_embeddings_have_unit_norm(
    fitted: tuple[Interactions, TwoTowerRecommender],
) -> None:
    _, model = fitted
    np.testing.assert_allclose(np.linalg.norm(model.user_embeddings(), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(model.item_embeddings(), axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"pooling": "attention"},
        {"use_user_id": True},
        {"normalize": False, "temperature": 1.0, "logq_correction": False},
    ],
)
def test_variants_fit_and_round_trip(options: dict[str, object], tmp_path: Path) -> None:
    interactions = genre_blocks()
    model = TwoTowerRecommender(**{**TINY, "epochs": 3, **options}).fit(interactions)  # type: ignore[arg-type]
    users = np.arange(N_USERS)
    assert np.isfinite(model.score(users)).all()
    model.save(tmp_path / "m", inputs=INPUTS)
    loaded = TwoTowerRecommender.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score(users), model.score(users))
    history = np.array([1, 2, 3])
    np.testing.assert_array_equal(loaded.fold_in(history), model.fold_in(history))
    assert loaded.get_params() == model.get_params()


def test_fold_in_of_a_fitted_history_is_its_user_embedding(
    fitted: tuple[Interactions, TwoTowerRecommender],
) -> None:
    interactions, model = fitted
    sequences = interactions.sequences()
    for u in (0, 20):
        np.testing.assert_allclose(
            model.fold_in(sequences[u]), model.user_embeddings()[u], rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValidationError, match="outside"):
        model.fold_in(np.array([-1]))


def test_without_features_and_deterministic() -> None:
    base = genre_blocks()
    interactions = Interactions(
        base.user_idx, base.item_idx, base.weight, base.timestamp_us, N_USERS, N_ITEMS
    )
    params = {**TINY, "epochs": 3}
    users = np.arange(N_USERS)
    a = TwoTowerRecommender(**params).fit(interactions).score(users)  # type: ignore[arg-type]
    b = TwoTowerRecommender(**params).fit(interactions).score(users)  # type: ignore[arg-type]
    c = TwoTowerRecommender(**params, random_state=1).fit(interactions).score(users)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "params",
    [
        {"embedding_dim": 0},
        {"pooling": "max"},
        {"batch_size": 1},
        {"temperature": 0.0},
        {"normalize": "yes"},
        {"device": "tpu"},
    ],
)
def test_invalid_params_raise_validation_error(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TwoTowerRecommender(**{**TINY, **params}).fit(genre_blocks())  # type: ignore[arg-type]
