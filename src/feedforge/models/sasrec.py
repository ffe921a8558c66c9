"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A user is the sequence of items they interacted with, in time order. Item embeddings plus
learned position embeddings go through ``L`` causal self-attention blocks; the hidden state at
position ``t`` predicts the item at ``t + 1``. The score of item ``i`` after a sequence is
``h_last . E_i``, with ``E`` the (tied) input item embedding table, so the model is an
:class:`~feedforge.models.base.EmbeddingRecommender`: serving publishes each user's last hidden
state and the item table.

Training (the task, kept apart from the network, torchrec-style) predicts the next item at
every position of every user's fitted sequence:

* ``negatives=None`` (default): full softmax cross-entropy over the whole catalog. Best for
  catalogs up to ~10k items (gSASRec, Petrov & Macdonald 2023, shows that few negatives is what
  makes the original BCE SASRec look weak).
* ``negatives=K``: sampled softmax over the positive and ``K`` items drawn uniformly (shared
  by the batch; accidental hits masked), with the logQ correction of uniform sampling
  (``+ log(n_items / K)`` on the negatives' logits, so the loss estimates the full softmax).
  For large catalogs; use hundreds of negatives or more.

Sequences longer than ``max_len`` are cut, from their end, into windows of ``max_len`` targets
so every item is a training target once; scoring uses the last ``max_len`` items.

Example::

    model = SASRecRecommender(max_len=50, epochs=20).fit(train)
    ids, scores = model.recommend(np.array([0, 1]), k=10, exclude=train.to_csr())
    vector = model.fold_in(np.array([3, 17, 42]))  # a user known only from live history
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
import torch

from feedforge.datasets.interactions import Interactions
from feedforge.errors import DataError, NotFittedError
from feedforge.models.arrays import ArraySpec
from feedforge.models.base import EmbeddingRecommender, checked_indices
from feedforge.models.distributed import Checkpoint, TrainContext, train_epochs
from feedforge.models.sasrec_net import SASRecNet, next_item_loss, training_windows
from feedforge.models.torch_params import SASRecParams
from feedforge.models.torch_utils import (
    TorchModel,
    pad_sequences,
    resolve_device,
    seeded,
)


def _window_loss(
    net: SASRecNet, rows: torch.Tensor, negatives: int | None, generator: torch.Generator
) -> torch.Tensor:
    """The next-item loss of a batch of token windows ``(B, W)`` (0 = padding): every real
    position predicts the token after it."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    hidden = net(inputs)
    real = targets != 0
    return next_item_loss(hidden[real], targets[real] - 1, net.item_table(), negatives, generator)


class SASRecRecommender(TorchModel, EmbeddingRecommender):
    """SASRec next-item recommender.

    ``score(u, i) = user_embeddings()[u] . item_embeddings()[i]`` where the user embedding is
    the last hidden state over the user's last ``max_len`` fitted items (zeros for users
    without any) and the item embeddings are the item table.

    Args:
        embedding_dim: Hidden size ``D``.
        num_blocks: Self-attention blocks.
        num_heads: Attention heads (must divide ``embedding_dim``).
        max_len: Longest sequence the model reads. 50 beat 200 on MovieLens leave-one-out
            validation (the next item depends mostly on the recent session) and trains faster.
        dropout: Dropout rate.
        epochs: Passes over the training windows.
        batch_size: Windows per step. Small batches (many steps) converge in few epochs.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        negatives: ``None`` for the full softmax; else uniform sampled negatives per batch.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        random_state: Seed of the initialisation, dropout, shuffling and sampling.

    Attributes:
        net_: The trained :class:`SASRecNet` (on CPU, eval mode).
        user_embeddings_: ``(n_users, D)`` float32.
        item_embeddings_: ``(n_items, D)`` float32.
    """

    name: ClassVar[str] = "sasrec"
    Params = SASRecParams
    params: SASRecParams
    ARRAYS = (
        ArraySpec("user_embeddings", ("n_users", "dim")),
        ArraySpec("item_embeddings", ("n_items", "dim")),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.net_: SASRecNet | None = None
        self.user_embeddings_: np.ndarray | None = None
        self.item_embeddings_: np.ndarray | None = None

    def _new_net(self, n_items: int) -> SASRecNet:
        p = self.params
        return SASRecNet(n_items, p.embedding_dim, p.num_blocks, p.num_heads, p.max_len, p.dropout)

    def fit(self, interactions: Interactions) -> Self:
        """Train on every user's time-ordered sequence, then precompute the embeddings.

        Raises:
            DataError: no user has two or more interactions, or training diverged.
            ValidationError: ``device="cuda"`` without a CUDA device.
        """
        device = resolve_device(self.params.device)
        sequences = interactions.sequences()
        windows = training_windows(sequences, self.params.max_len)
        if not windows:
            raise DataError("SASRecRecommender.fit: no user has two or more interactions")
        with seeded(self.params.random_state, device) as generator:
            net = self._new_net(interactions.n_items).to(device)
            self._train(net, windows, generator, device)
        self.net_ = net.to("cpu").eval()
        self.item_embeddings_ = self.net_.item_table().detach().numpy().copy()
        self.user_embeddings_ = self._encode(sequences)
        if not np.isfinite(self.user_embeddings_).all():
            raise DataError("SASRecRecommender.fit: training diverged; lower learning_rate")
        return self

    def _train(
        self,
        net: SASRecNet,
        windows: list[np.ndarray],
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        p = self.params
        tokens = torch.from_numpy(pad_sequences(windows, p.max_len + 1))
        lengths = (tokens != 0).sum(dim=1)
        optimizer = torch.optim.AdamW(
            net.parameters(),
            lr=p.learning_rate,
            betas=(0.9, 0.98),
            weight_decay=p.weight_decay,
        )
        context = TrainContext.current()
        step = context.step(net, _window_loss, find_unused=False)
        sampler = context.sampler(generator, p.random_state)

        def loss_of(batch: torch.Tensor, _update: int) -> torch.Tensor:
            width = int(lengths[batch].max())
            return step(tokens[batch, :width].to(device), p.negatives, sampler)

        losses = train_epochs(
            net,
            optimizer,
            p.epochs,
            lambda: context.batches(len(tokens), p.batch_size, generator),
            loss_of,
            Checkpoint(self.checkpoint_dir, self.checkpoint_key(), context),
            generator,
            "SASRecRecommender.fit",
        )
        self.training_curve_ = {"x": "epoch", "series": {"train loss": losses}}

    @torch.no_grad()
    def _encode(self, sequences: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """``(len(sequences), D)`` float32 last hidden states (eval mode, on CPU)."""
        net = self._net()
        max_len = self.params.max_len
        out = np.zeros((len(sequences), self.params.embedding_dim), dtype=np.float32)
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(1, min(max_len, max(len(s) for s in chunk)))
            tokens = torch.from_numpy(pad_sequences(chunk, width))
            out[start : start + len(chunk)] = net.last_states(tokens).numpy()
        return out

    def _net(self) -> SASRecNet:
        if self.net_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.net_

    def user_embeddings(self) -> np.ndarray:
        """``(n_users, D)`` float32 last hidden states of the fitted sequences."""
        self._check_fitted("user_embeddings_")
        return self.user_embeddings_  # type: ignore[return-value]

    def item_embeddings(self) -> np.ndarray:
        """``(n_items, D)`` float32 item table."""
        self._check_fitted("item_embeddings_")
        return self.item_embeddings_  # type: ignore[return-value]

    def fold_in(self, item_idx_history: np.ndarray) -> np.ndarray:
        """The ``(D,)`` float32 user vector after a time-ordered history (zeros if empty).

        Raises:
            ValidationError: an index is not an integer in ``[0, n_items)``.
        """
        n_items = self.item_embeddings().shape[0]
        items = checked_indices(item_idx_history, n_items, "fold_in", "item")
        return self._encode([items.astype(np.int64)])[0]

    def _empty_net(self, counts: Mapping[str, int]) -> SASRecNet:
        return self._new_net(int(counts["n_items"]))

    def _restore(self, net: torch.nn.Module, extra: Mapping[str, Any]) -> None:
        assert isinstance(net, SASRecNet)  # built by _empty_net
        self.net_ = net.eval()
