"""Sharding and checkpoints of the torch models' training (feedforge.models.distributed).

A training stopped mid-way resumes from its last epoch's checkpoint and ends with exactly the
weights of a training that never stopped (CPU, same thread count: bitwise). The multi-process
runs are in tests/integration/test_ddp_train.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from feedforge.datasets.interactions import Interactions
from feedforge.models import dcn_train, multvae, sasrec, two_tower
from feedforge.models.dcn import DCNRanker
from feedforge.models.distributed import CHECKPOINT_STATE, Checkpoint, TrainContext
from feedforge.models.multvae import MultVAERecommender
from feedforge.models.sasrec import SASRecRecommender
from feedforge.models.torch_utils import TorchModel
from feedforge.models.two_tower import TwoTowerRecommender


def _sequences(n_users: int = 30, n_items: int = 25, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        length = int(rng.integers(4, 10))
        users += [u] * length
        items += rng.integers(0, n_items, length).tolist()
        times += (1000 * np.arange(length)).tolist()
    n = len(users)
    return Interactions(
        np.array(users, np.int32),
        np.array(items, np.int32),
        np.ones(n, np.float32),
        np.array(times, np.int64),
        n_users,
        n_items,
    )


def _ranking_data(n: int = 600, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] + rng.normal(size=n) > 0).astype(np.int8)
    watch = np.where(y == 1, rng.exponential(300, n), 0.0)
    return {
        "X": X,
        "y": y,
        "feature_names": [f"f{j}" for j in range(5)],
        "group": np.arange(n) // 6,
        "targets": {"watch_seconds": watch},
    }


MODELS: dict[str, tuple[Callable[[], TorchModel], Any, str]] = {
    "sasrec": (
        lambda: SASRecRecommender(
            embedding_dim=8, num_blocks=1, max_len=6, epochs=4, batch_size=8, dropout=0.2,
            device="cpu",
        ),
        sasrec,
        "_window_loss",
    ),
    # Early stopping's scores, best epoch and best weights are checkpointed too.
    "sasrec_early_stopping": (
        lambda: SASRecRecommender(
            embedding_dim=8, num_blocks=1, max_len=6, epochs=4, batch_size=8, dropout=0.2,
            patience=10, validation_users=10, device="cpu",
        ),
        sasrec,
        "_window_loss",
    ),
    "two_tower": (
        lambda: TwoTowerRecommender(
            embedding_dim=8, hidden_dim=16, epochs=4, batch_size=16, device="cpu"
        ),
        two_tower,
        "_pair_loss",
    ),
    "multvae": (
        lambda: MultVAERecommender(
            hidden_dim=16, latent_dim=4, epochs=4, batch_size=8, anneal_steps=10, device="cpu"
        ),
        multvae,
        "_vae_loss",
    ),
    "dcn": (
        lambda: DCNRanker(max_epochs=4, patience=10, batch_size=64, device="cpu"),
        dcn_train,
        "weighted_loss",
    ),
}  # fmt: skip


def _fit(model: TorchModel) -> TorchModel:
    if isinstance(model, DCNRanker):
        data = _ranking_data()
        return model.fit(
            data["X"], data["y"], data["feature_names"], data["group"], targets=data["targets"]
        )
    return model.fit(_sequences())  # type: ignore[attr-defined,no-any-return]


def _weights(model: TorchModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model._net().state_dict().items()}


class Stop(Exception):
    """Raised by the patched loss: the training process 'dies'."""


@pytest.mark.parametrize("name", list(MODELS))
def test_a_stopped_training_resumes_to_the_same_weights(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, module, loss_name = MODELS[name]
    straight = _fit(make())

    loss = getattr(module, loss_name)
    calls = {"n": 0}

    def dying(*args: Any) -> torch.Tensor:
        if torch.is_grad_enabled():  # a training step, not the held-out measurement
            calls["n"] += 1
            if calls["n"] == steps_per_epoch * 2 + 1:  # the first step of epoch 3
                raise Stop
        return loss(*args)

    # Steps per epoch: count them on an uninterrupted run of one epoch.
    counter = {"n": 0}

    def counting(*args: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            counter["n"] += 1
        return loss(*args)

    one_epoch = make()
    one_epoch.set_params(**({"max_epochs": 1} if name == "dcn" else {"epochs": 1}))
    monkeypatch.setattr(module, loss_name, counting)
    _fit(one_epoch)
    steps_per_epoch = counter["n"]
    assert steps_per_epoch > 1

    directory = tmp_path / "checkpoint"
    first = make()
    first.checkpoint_to(directory, "dataset-1")
    monkeypatch.setattr(module, loss_name, dying)
    with pytest.raises(Stop):
        _fit(first)
    state = json.loads((directory / CHECKPOINT_STATE).read_text())
    assert state["key"]["data"] == "dataset-1"

    monkeypatch.setattr(module, loss_name, loss)
    resumed = make()
    resumed.checkpoint_to(directory, "dataset-1")
    _fit(resumed)
    for key, value in _weights(straight).items():
        assert torch.equal(value, _weights(resumed)[key]), f"{name}: {key} differs"
    assert resumed.training_curve_ == straight.training_curve_
    assert not directory.exists()  # a finished training removes its checkpoint


def test_a_checkpoint_of_other_data_or_a_torn_one_is_not_resumed(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(0)
    checkpoint = Checkpoint(tmp_path, {"data": "a"}, TrainContext())
    checkpoint.save(net, optimizer, [generator], {"losses": [1.0]})
    fresh = torch.nn.Linear(3, 2)
    assert (
        Checkpoint(tmp_path, {"data": "b"}, TrainContext()).restore(
            fresh, torch.optim.AdamW(fresh.parameters()), [generator]
        )
        is None
    )
    restored = checkpoint.restore(fresh, torch.optim.AdamW(fresh.parameters()), [generator])
    assert restored is not None and restored[0] == {"losses": [1.0]}
    assert torch.equal(fresh.weight, net.weight)
    with (tmp_path / "checkpoint.safetensors").open("ab") as fh:
        fh.write(b"torn")
    assert checkpoint.restore(fresh, torch.optim.AdamW(fresh.parameters()), [generator]) is None
    # Only the main rank writes.
    Checkpoint(tmp_path / "other", {}, TrainContext(rank=1, world=2)).save(
        net, optimizer, [generator], {}
    )
    assert not (tmp_path / "other").exists()


def test_ranks_take_disjoint_shards_of_the_same_global_batches() -> None:
    n, batch = 103, 10
    shards = [
        list(TrainContext(rank, 2).batches(n, batch, torch.Generator().manual_seed(3)))
        for rank in range(2)
    ]
    whole = list(TrainContext().batches(n, batch, torch.Generator().manual_seed(3)))
    assert len(shards[0]) == len(shards[1]) == len(whole)  # the last batch has 3 >= 2 rows
    for a, b, full in zip(shards[0], shards[1], whole, strict=True):
        assert set(a.tolist()).isdisjoint(b.tolist())
        assert sorted(a.tolist() + b.tolist()) == sorted(full.tolist())
    # A last global batch with fewer rows than ranks is left out on every rank.
    counts = [len(list(TrainContext(r, 4).batches(21, 10, torch.Generator()))) for r in range(4)]
    assert counts == [2, 2, 2, 2]


def test_ranks_sample_their_own_negatives_and_one_process_keeps_its_generator() -> None:
    generator = torch.Generator().manual_seed(0)
    assert TrainContext().sampler(generator, 7) is generator
    draws = [
        torch.randint(100, (5,), generator=TrainContext(r, 2).sampler(generator, 7)).tolist()
        for r in range(2)
    ]
    assert draws[0] != draws[1]
