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
  For large catalogs; use hundreds of negatives or more (``K >= n_items`` is the full softmax).

Sequences longer than ``max_len`` are cut, from their end, into windows of ``max_len`` targets
so every item is a training target once; scoring uses the last ``max_len`` items. Each batch
holds windows of similar length (sequences are mostly short on retail data, so padding every
batch to its longest window wasted most of a step).

**Early stopping** (``patience``): the last item of up to ``validation_users`` users (with
three or more items) is held out of training; after every epoch the model ranks the whole
catalog for them (their other items excluded, as leave-one-out does) and the epoch with the
best NDCG@10 is kept, stopping after ``patience`` epochs without improvement (``epochs`` is
then the maximum). The user vectors are computed on the full sequences. :attr:`fit_stats_`
reports epochs run, the best epoch, ms per step and the seconds to the best epoch.

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
from feedforge.errors import DataError, NotFittedError, ValidationError
from feedforge.models.arrays import ArraySpec
from feedforge.models.base import EmbeddingRecommender, checked_indices
from feedforge.models.distributed import Checkpoint, EarlyStopping, TrainContext, train_epochs
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


class _HeldOut:
    """The held-out last items of early stopping and their full-catalog NDCG@K.

    Args:
        sequences: The held-out users' whole sequences (the last item is the target).
        max_len: The model's input length.
        n_items: Catalog size.
    """

    K = 10

    def __init__(self, sequences: list[np.ndarray], max_len: int, n_items: int) -> None:
        prefixes = [s[:-1] for s in sequences]
        self.tokens = torch.from_numpy(pad_sequences(prefixes, max_len))
        self.targets = torch.from_numpy(np.array([s[-1] for s in sequences], dtype=np.int64))
        rows = np.repeat(np.arange(len(prefixes)), [len(p) for p in prefixes])
        cols = np.concatenate(prefixes).astype(np.int64)
        keep = cols != self.targets.numpy()[rows]  # the target itself is never excluded
        self.seen_rows = torch.from_numpy(rows[keep])
        self.seen_cols = torch.from_numpy(cols[keep])
        self.n_items = n_items

    @torch.no_grad()
    def ndcg(self, net: SASRecNet, device: torch.device, batch_size: int = 1024) -> float:
        """Mean NDCG@K of the targets ranked among all items, the users' other items out."""
        table = net.item_table()
        total = 0.0
        for start in range(0, len(self.targets), batch_size):
            stop = start + batch_size
            scores = net.last_states(self.tokens[start:stop].to(device)) @ table.T
            in_batch = (self.seen_rows >= start) & (self.seen_rows < stop)
            rows = (self.seen_rows[in_batch] - start).to(device)
            scores[rows, self.seen_cols[in_batch].to(device)] = -torch.inf
            targets = self.targets[start:stop].to(device)
            target_scores = scores.gather(1, targets.unsqueeze(1))
            rank = (scores > target_scores).sum(dim=1).to(torch.float64)
            gain = torch.where(rank < self.K, 1.0 / torch.log2(rank + 2.0), 0.0)
            total += float(gain.sum())
        return total / len(self.targets)


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
        epochs: Passes over the training windows (the most, with early stopping).
        batch_size: Windows per step (of similar length: see the module docs). 128 with
            learning rate 3e-3 converged in 20-40 epochs on Amazon Toys and MovieLens (the
            quality tables' fit_stats).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        negatives: ``None`` for the full softmax; else uniform sampled negatives per batch.
        patience: Early stopping on held-out NDCG@10 after this many epochs without
            improvement (default 5; ``epochs`` is the maximum); ``None``: train ``epochs``
            epochs, holding nothing out.
        validation_users: Users whose last item early stopping holds out.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        random_state: Seed of the initialisation, dropout, shuffling and sampling.

    Attributes:
        net_: The trained :class:`SASRecNet` (on CPU, eval mode).
        user_embeddings_: ``(n_users, D)`` float32.
        item_embeddings_: ``(n_items, D)`` float32.
        fit_stats_: The last fit's epochs run, best epoch, steps, ms per step, seconds to
            the best epoch and in all (:meth:`~feedforge.models.distributed.TrainHistory.summary`).
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
        self.fit_stats_: dict[str, Any] | None = None

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
        held_out = self._held_out(sequences) if self.params.patience is not None else None
        fitted = sequences
        if held_out is not None:
            fitted = list(sequences)
            for user in held_out:
                fitted[user] = sequences[user][:-1]
        windows = training_windows(fitted, self.params.max_len)
        if not windows:
            raise DataError("SASRecRecommender.fit: no user has two or more interactions")
        with seeded(self.params.random_state, device) as generator:
            net = self._new_net(interactions.n_items).to(device)
            validation = None
            if held_out is not None and len(held_out):
                validation = _HeldOut(
                    [sequences[u] for u in held_out], self.params.max_len, interactions.n_items
                )
            self._train(net, windows, generator, device, validation)
        self.net_ = net.to("cpu").eval()
        self.item_embeddings_ = self.net_.item_table().detach().numpy().copy()
        self.user_embeddings_ = self._encode(sequences)
        if not np.isfinite(self.user_embeddings_).all():
            raise DataError("SASRecRecommender.fit: training diverged; lower learning_rate")
        return self

    def _held_out(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Users whose last item early stopping holds out: up to ``validation_users`` of
        those with three or more items, drawn with ``random_state``."""
        eligible = np.flatnonzero(np.array([len(s) >= 3 for s in sequences], dtype=bool))
        n = min(self.params.validation_users, len(eligible))
        rng = np.random.default_rng(self.params.random_state)
        return np.sort(rng.choice(eligible, n, replace=False)) if n else eligible

    def _train(
        self,
        net: SASRecNet,
        windows: list[np.ndarray],
        generator: torch.Generator,
        device: torch.device,
        validation: _HeldOut | None = None,
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

        early = None
        if validation is not None and p.patience is not None:
            early = EarlyStopping(lambda: validation.ndcg(net, device), p.patience)
        history = train_epochs(
            net,
            optimizer,
            p.epochs,
            lambda: context.batches(len(tokens), p.batch_size, generator, lengths),
            loss_of,
            Checkpoint(self.checkpoint_dir, self.checkpoint_key(), context),
            generator,
            "SASRecRecommender.fit",
            early,
        )
        series = {"train loss": history.losses}
        if history.scores:
            series[f"held-out ndcg@{_HeldOut.K}"] = history.scores
        self.training_curve_ = {"x": "epoch", "series": series}
        self.fit_stats_ = history.summary()

    def with_histories(self, interactions: Interactions) -> Self:
        """Recompute every user's vector from these interactions' sequences, without
        training: the trained network reads the longer histories. This is the SASRec paper's
        test step (the model trained once, the test input including the validation item).

        Raises:
            NotFittedError: the model is not fitted.
            ValidationError: the interactions' catalog is not the model's.
        """
        n_items = self.item_embeddings().shape[0]
        if interactions.n_items != n_items:
            raise ValidationError(
                f"SASRecRecommender.with_histories: {interactions.n_items} items, the model "
                f"has {n_items}"
            )
        self.user_embeddings_ = self._encode(interactions.sequences())
        return self

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
