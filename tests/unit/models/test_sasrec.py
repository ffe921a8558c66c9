"""SASRec beyond the shared contract: training smoke test, behaviour, persistence, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from feedforge.datasets.interactions import Interactions
from feedforge.errors import ArtifactError, ValidationError
from feedforge.models.sasrec import (
    SASRecNet,
    SASRecRecommender,
    next_item_loss,
    training_windows,
)

INPUTS = {"dataset": "test-dataset"}  # the lineage every saved model records

TINY = {
    "embedding_dim": 16, "num_blocks": 1, "max_len": 12, "epochs": 40, "batch_size": 8,
    "patience": None, "device": "cpu",
}  # fmt: skip


def successor_sequences(
    n_users: int = 40, n_items: int = 20, seed: int = 0
) -> tuple[Interactions, np.ndarray]:
    """Each user reads a run ``s, s+1, ..., e`` of items; the item after ``i`` is ``i + 1``.

    Returns:
        The interactions and each user's last item.
    """
    rng = np.random.default_rng(seed)
    users, items, times, last = [], [], [], []
    for u in range(n_users):
        length = int(rng.integers(4, 9))
        start = int(rng.integers(0, n_items - length - 1))
        run = np.arange(start, start + length)
        users += [u] * length
        items += run.tolist()
        times += (1_000_000 * np.arange(length)).tolist()
        last.append(run[-1])
    n = len(users)
    interactions = Interactions(
        np.array(users, np.int32),
        np.array(items, np.int32),
        np.ones(n, np.float32),
        np.array(times, np.int64),
        n_users,
        n_items,
    )
    return interactions, np.array(last)


@pytest.fixture(scope="module")
def successor() -> tuple[Interactions, np.ndarray, SASRecRecommender]:
    interactions, last = successor_sequences()
    model = SASRecRecommender(**TINY, dropout=0.0, learning_rate=5e-3).fit(interactions)
    return interactions, last, model


def test_smoke_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    net = SASRecNet(n_items=30, dim=16, num_blocks=2, num_heads=2, max_len=10, dropout=0.1)
    tokens = torch.randint(1, 31, (8, 11))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(10):
        hidden = net(tokens[:, :-1]).reshape(-1, 16)
        loss = next_item_loss(
            hidden, tokens[:, 1:].reshape(-1) - 1, net.item_table(), None, generator
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    net = SASRecNet(n_items=30, dim=16, num_blocks=2, num_heads=1, max_len=10, dropout=0.0).eval()
    a = torch.tensor([[1, 2, 3, 4, 5, 6]])
    b = torch.tensor([[1, 2, 3, 9, 8, 7]])
    with torch.no_grad():
        torch.testing.assert_close(net(a)[:, :3], net(b)[:, :3])
        # Right padding never changes the real positions.
        padded = torch.tensor([[1, 2, 3, 0, 0, 0]])
        torch.testing.assert_close(net(padded)[:, :3], net(a[:, :3]))
        torch.testing.assert_close(net.last_states(padded), net(a[:, :3])[:, 2])


def test_predicts_the_successor_item(
    successor: tuple[Interactions, np.ndarray, SASRecRecommender],
) -> None:
    interactions, last, model = successor
    users = np.arange(interactions.n_users)
    top = model.score(users).argmax(axis=1)
    # Users whose run ends at the catalog's end have no successor to predict.
    has_next = last + 1 < interactions.n_items
    accuracy = (top[has_next] == last[has_next] + 1).mean()
    assert accuracy >= 0.9, accuracy
    # A history the model never saw: the successor of its last item comes first.
    assert model.fold_in(np.array([3, 4, 5])).shape == (16,)
    assert (model.item_embeddings() @ model.fold_in(np.array([3, 4, 5]))).argmax() == 6


def test_fold_in_of_a_fitted_sequence_is_its_user_embedding(
    successor: tuple[Interactions, np.ndarray, SASRecRecommender],
) -> None:
    interactions, _, model = successor
    sequences = interactions.sequences()
    for u in (0, 7):
        np.testing.assert_allclose(
            model.fold_in(sequences[u]), model.user_embeddings()[u], rtol=1e-5, atol=1e-6
        )
    assert not model.fold_in(np.array([], dtype=np.int64)).any()
    with pytest.raises(ValidationError, match="outside"):
        model.fold_in(np.array([interactions.n_items]))
    with pytest.raises(ValidationError, match="integers"):
        model.fold_in(np.array([1.5]))


def test_user_without_history_gets_a_zero_embedding() -> None:
    interactions, _ = successor_sequences(n_users=10)
    more = Interactions(
        interactions.user_idx, interactions.item_idx, interactions.weight,
        interactions.timestamp_us, n_users=12, n_items=interactions.n_items,
    )  # fmt: skip
    model = SASRecRecommender(**{**TINY, "epochs": 2}).fit(more)
    assert not model.user_embeddings()[10:].any()
    assert model.user_embeddings()[:10].any(axis=1).all()


def test_sampled_negatives_also_learn_the_successor() -> None:
    interactions, last = successor_sequences()
    model = SASRecRecommender(**TINY, dropout=0.0, learning_rate=5e-3, negatives=8)
    top = model.fit(interactions).score(np.arange(interactions.n_users)).argmax(axis=1)
    has_next = last + 1 < interactions.n_items
    assert (top[has_next] == last[has_next] + 1).mean() >= 0.8


def test_sampled_loss_masks_accidental_hits() -> None:
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    loss = next_item_loss(hidden, torch.tensor([0, 1]), table, 64, generator)
    # 64 draws from 3 items: every target is drawn, but only the other items count.
    expected = -torch.log_softmax(torch.tensor([1.0, 0.0, 0.0]), dim=0)[0]
    assert float(loss) < float(expected) + 1.0
    assert torch.isfinite(loss)


def test_training_windows_make_every_item_a_target_once() -> None:
    seq = np.arange(23)
    windows = training_windows([seq, np.array([5]), np.array([], np.int64)], max_len=10)
    assert all(len(w) <= 11 for w in windows)
    targets = np.concatenate([w[1:] for w in windows])
    np.testing.assert_array_equal(np.sort(targets), np.arange(1, 23))
    # The newest window is full, as at scoring time.
    np.testing.assert_array_equal(windows[0], np.arange(12, 23))


def test_same_seed_same_model_other_seed_differs(
    successor: tuple[Interactions, np.ndarray, SASRecRecommender],
) -> None:
    interactions, _, model = successor
    users = np.arange(interactions.n_users)
    params = {**model.get_params(), "epochs": 3}
    a = SASRecRecommender(**params).fit(interactions).score(users)
    b = SASRecRecommender(**params).fit(interactions).score(users)
    c = SASRecRecommender(**{**params, "random_state": 1}).fit(interactions).score(users)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Training does not disturb the caller's random stream.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SASRecRecommender(**params).fit(interactions)
    torch.testing.assert_close(torch.rand(3), expected)


def test_save_load_keeps_scores_and_the_network(
    successor: tuple[Interactions, np.ndarray, SASRecRecommender], tmp_path: Path
) -> None:
    interactions, _, model = successor
    model.save(tmp_path / "m", inputs=INPUTS)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "manifest.json", "params.json", "weights.safetensors",
    ]  # fmt: skip
    loaded = SASRecRecommender.load(tmp_path / "m")
    users = np.arange(interactions.n_users)
    np.testing.assert_array_equal(loaded.score(users), model.score(users))
    history = np.array([2, 3, 4])
    np.testing.assert_array_equal(loaded.fold_in(history), model.fold_in(history))
    assert loaded.get_params() == model.get_params()


def test_load_refuses_weights_of_another_shape(
    successor: tuple[Interactions, np.ndarray, SASRecRecommender], tmp_path: Path
) -> None:
    _, _, model = successor
    model.save(tmp_path / "m", inputs=INPUTS)
    path = tmp_path / "m" / "params.json"
    path.write_text(path.read_text().replace('"embedding_dim": 16', '"embedding_dim": 8'))
    with pytest.raises(ArtifactError, match="weights"):
        SASRecRecommender.load(tmp_path / "m")


@pytest.mark.parametrize(
    "params",
    [
        {"embedding_dim": 0},
        {"num_heads": 3},
        {"dropout": 1.0},
        {"learning_rate": 0.0},
        {"negatives": 0},
        {"epochs": -1},
        {"device": "tpu"},
    ],
)
def test_invalid_params_raise_validation_error(params: dict[str, object]) -> None:
    interactions, _ = successor_sequences(n_users=5)
    with pytest.raises(ValidationError):
        SASRecRecommender(**{**TINY, **params}).fit(interactions)  # type: ignore[arg-type]


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience() -> None:
    from feedforge.models.sasrec import _HeldOut

    interactions, _ = successor_sequences(n_users=60)
    params = {**TINY, "epochs": 30, "patience": 2, "validation_users": 20, "dropout": 0.0}
    model = SASRecRecommender(**params, learning_rate=5e-3).fit(interactions)
    scores = model.training_curve_["series"]["held-out ndcg@10"]
    stats = model.fit_stats_
    assert stats["epochs_run"] == len(scores) == len(model.training_curve_["series"]["train loss"])
    best = int(np.argmax(scores))
    assert stats["best_epoch"] == best + 1
    # Stopped because `patience` epochs did not beat the best, or ran out of epochs.
    assert stats["epochs_run"] == 30 or stats["epochs_run"] - 1 - best == 2
    assert all(s <= scores[best] for s in scores[best + 1 :])
    assert 0 < stats["seconds_to_best"] <= stats["seconds"] and stats["ms_per_step"] > 0
    # The network ends with the best epoch's weights: its held-out score is the best one.
    held = model._held_out(interactions.sequences())
    assert len(held) == 20
    sequences = interactions.sequences()
    validation = _HeldOut([sequences[u] for u in held], model.params.max_len, 20)
    assert validation.ndcg(model._net(), torch.device("cpu")) == pytest.approx(scores[best])
    # The user vectors read the whole sequences, held-out items included.
    np.testing.assert_allclose(
        model.fold_in(sequences[held[0]]), model.user_embeddings()[held[0]], atol=1e-5
    )


def test_held_out_ndcg_matches_a_direct_ranking() -> None:
    from feedforge.models.sasrec import _HeldOut

    torch.manual_seed(0)
    net = SASRecNet(n_items=12, dim=8, num_blocks=1, num_heads=1, max_len=5, dropout=0.0).eval()
    sequences = [np.array([1, 2, 3, 4]), np.array([5, 6, 5]), np.array([7, 8, 9, 10, 11, 0])]
    held = _HeldOut(sequences, max_len=5, n_items=12)
    expected = []
    with torch.no_grad():
        for seq in sequences:
            prefix, target = seq[:-1], int(seq[-1])
            scores = (net.last_states(torch.from_numpy(prefix[None] + 1)) @ net.item_table().T)[
                0
            ].numpy()
            others = [i for i in prefix.tolist() if i != target]  # the target is never excluded
            scores[others] = -np.inf
            rank = int((scores > scores[target]).sum())
            expected.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
    assert held.ndcg(net, torch.device("cpu"), batch_size=2) == pytest.approx(np.mean(expected))


def test_length_buckets_cover_every_row_once_in_batches_of_similar_length() -> None:
    from feedforge.models.torch_utils import bucketed_minibatches

    rng = np.random.default_rng(0)
    lengths = torch.from_numpy(rng.integers(1, 60, size=1000))
    generator = torch.Generator().manual_seed(0)
    batches = list(bucketed_minibatches(lengths, 16, generator, pool=8))
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    # Padded positions: far fewer than with random batches of the same size.
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).split(16)
    assert padded < 0.7 * sum(int(lengths[b].max()) * len(b) for b in shuffled)
    # A new epoch groups the rows differently.
    again = list(bucketed_minibatches(lengths, 16, generator, pool=8))
    assert [b.tolist() for b in again] != [b.tolist() for b in batches]


def test_with_histories_reencodes_users_without_training() -> None:
    interactions, _ = successor_sequences()
    model = SASRecRecommender(**{**TINY, "epochs": 3}).fit(interactions)
    table = model.item_embeddings().copy()
    longer, _ = successor_sequences(seed=1)  # other sequences, the same catalog
    model.with_histories(longer)
    np.testing.assert_array_equal(model.item_embeddings(), table)
    for user, sequence in enumerate(longer.sequences()[:5]):
        np.testing.assert_allclose(
            model.user_embeddings()[user], model.fold_in(sequence), atol=1e-5
        )
    other = Interactions(
        np.array([0], np.int32), np.array([0], np.int32), np.ones(1, np.float32),
        np.zeros(1, np.int64), 1, 21,
    )  # fmt: skip
    with pytest.raises(ValidationError, match="21 items, the model has 20"):
        model.with_histories(other)
