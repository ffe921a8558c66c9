"""Two-tower retrieval model trained with in-batch sampled softmax and logQ correction.

* **User tower**: pools the item-id embeddings of the user's last ``history_len`` items (mean,
  or attention with a learned query and recency embeddings), optionally concatenates a
  user-id embedding, then an MLP to ``D``.
* **Item tower**: the item-id embedding (shared with the user tower's history lookup)
  concatenated with a bag of the item's content features (``Interactions.item_features``, e.g.
  multi-hot genres, summed with their weights), then an MLP to ``D``.
* Both outputs are L2-normalised when ``normalize=True`` (the default): scores are cosines,
  the softmax logits are ``cos / temperature``. With ``normalize=False`` scores are raw dot
  products.

Training pairs are **(history up to t -> item at t)** for every position ``t >= 1`` of every
user's time-ordered fitted sequence: the tower learns to predict the next item from the
recent past, exactly what it is asked at serving time, and the target is never inside its own
input. The task (kept apart from the network) is the in-batch sampled softmax of Yi et al.
(RecSys 2019): the other targets of the batch are the negatives, and the log of each item's
sampling probability (its frequency among the training targets) is subtracted from its logit
so popular items are not over-penalised; in-batch duplicates of the positive are masked. The
correction is for training only: serving scores are the plain dot products.

After fit, ``user_embeddings()`` (each user's tower over their last fitted items) and
``item_embeddings()`` are precomputed; serving publishes them.

Example::

    model = TwoTowerRecommender(embedding_dim=64, epochs=20).fit(train)
    ids, scores = model.recommend(np.array([0, 1]), k=10, exclude=train.to_csr())
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
from feedforge.models.torch_params import TwoTowerParams
from feedforge.models.torch_utils import TorchModel, resolve_device, seeded
from feedforge.models.two_tower_net import (
    TwoTowerNet,
    in_batch_softmax_loss,
    padded_features,
    recent_history,
)


def _pair_loss(
    net: TwoTowerNet,
    history: torch.Tensor,
    uid: torch.Tensor | None,
    item: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The in-batch softmax loss of (history -> next item) pairs; with several ranks each
    rank's negatives are its own shard's items."""
    return in_batch_softmax_loss(
        net.user_tower(history, uid), net.item_tower(item), item, log_q, temperature
    )


class TwoTowerRecommender(TorchModel, EmbeddingRecommender):
    """Two-tower model: ``score(u, i) = user_embeddings()[u] . item_embeddings()[i]``.

    Args:
        embedding_dim: Output size ``D`` (and of every embedding table).
        history_len: Most recent items the user tower reads.
        pooling: ``"mean"`` or ``"attention"`` over the history.
        use_user_id: Add a learned user-id embedding to the user tower.
        hidden_dim: Hidden width of the towers' MLPs.
        dropout: Dropout in the MLPs.
        normalize: L2-normalise both towers (cosine scores).
        temperature: Softmax temperature of the training logits.
        logq_correction: Subtract log item frequency from the in-batch logits.
        epochs: Passes over the training pairs.
        batch_size: Pairs per step (= in-batch negatives + 1).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        random_state: Seed of the initialisation, dropout and shuffling.

    Attributes:
        net_: The trained :class:`TwoTowerNet` (on CPU, eval mode).
        user_embeddings_: ``(n_users, D)`` float32.
        item_embeddings_: ``(n_items, D)`` float32.
    """

    name: ClassVar[str] = "two_tower"
    Params = TwoTowerParams
    params: TwoTowerParams
    ARRAYS = (
        ArraySpec("user_embeddings", ("n_users", "dim")),
        ArraySpec("item_embeddings", ("n_items", "dim")),
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.net_: TwoTowerNet | None = None
        self.user_embeddings_: np.ndarray | None = None
        self.item_embeddings_: np.ndarray | None = None

    def _new_net(
        self, n_users: int, n_items: int, index: np.ndarray, weight: np.ndarray, n_features: int
    ) -> TwoTowerNet:
        p = self.params
        return TwoTowerNet(
            n_users,
            n_items,
            torch.from_numpy(index),
            torch.from_numpy(weight),
            n_features,
            p.embedding_dim,
            p.history_len,
            p.pooling,
            p.use_user_id,
            p.hidden_dim,
            p.dropout,
            p.normalize,
        )

    def fit(self, interactions: Interactions) -> Self:
        """Train on (recent history -> next item) pairs, then precompute the embeddings.

        Raises:
            DataError: no user has two or more interactions, or training diverged.
            ValidationError: ``device="cuda"`` without a CUDA device.
        """
        device = resolve_device(self.params.device)
        sequences = interactions.sequences()
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        if not (lengths >= 2).any():
            raise DataError("TwoTowerRecommender.fit: no user has two or more interactions")
        features = interactions.item_features
        n_features = 0 if features is None else int(features.shape[1])
        index, weight = padded_features(features, interactions.n_items)
        with seeded(self.params.random_state, device) as generator:
            net = self._new_net(
                interactions.n_users, interactions.n_items, index, weight, n_features
            )
            net = net.to(device)
            self._train(net, sequences, lengths, generator, device)
        self.net_ = net.to("cpu").eval()
        self._precompute(sequences)
        return self

    def _train(
        self,
        net: TwoTowerNet,
        sequences: list[np.ndarray],
        lengths: np.ndarray,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        n_items = net.item_embedding.num_embeddings - 1
        flat = torch.from_numpy(np.concatenate(sequences))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        # One pair per position t >= 1: history flat[start:t] -> target flat[t].
        position = torch.arange(len(flat))
        user = torch.from_numpy(np.repeat(np.arange(len(sequences)), lengths))
        start = torch.from_numpy(offsets[:-1])[user]
        keep = position > start
        position, user, start = position[keep], user[keep], start[keep]
        targets = flat[position]
        p = self.params
        if p.logq_correction:
            counts = torch.bincount(targets, minlength=n_items).to(torch.float32)
            log_q = torch.log(counts.clamp(min=1.0) / len(targets)).to(device)
        else:
            log_q = torch.zeros(n_items, device=device)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay
        )
        context = TrainContext.current()
        step = context.step(net, _pair_loss)

        def loss_of(batch: torch.Tensor, _update: int) -> torch.Tensor:
            history = recent_history(flat, start[batch], position[batch], p.history_len)
            uid = user[batch].to(device) if p.use_user_id else None
            return step(history.to(device), uid, targets[batch].to(device), log_q, p.temperature)

        history = train_epochs(
            net,
            optimizer,
            p.epochs,
            lambda: context.batches(len(targets), p.batch_size, generator),
            loss_of,
            Checkpoint(self.checkpoint_dir, self.checkpoint_key(), context),
            generator,
            "TwoTowerRecommender.fit",
        )
        self.training_curve_ = {"x": "epoch", "series": {"train loss": history.losses}}

    @torch.no_grad()
    def _precompute(self, sequences: list[np.ndarray]) -> None:
        net = self._net()
        n_items = net.item_embedding.num_embeddings - 1
        items = net.item_tower(torch.arange(n_items)).numpy()
        users = self._encode(sequences, np.arange(len(sequences)))
        if not (np.isfinite(items).all() and np.isfinite(users).all()):
            raise DataError("TwoTowerRecommender.fit: training diverged; lower learning_rate")
        self.item_embeddings_ = np.ascontiguousarray(items, dtype=np.float32)
        self.user_embeddings_ = users

    @torch.no_grad()
    def _encode(self, sequences: list[np.ndarray], user_idx: np.ndarray | None) -> np.ndarray:
        """``(len(sequences), D)`` float32 user-tower outputs over each last ``history_len``."""
        net = self._net()
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        flat = torch.from_numpy(np.concatenate([np.zeros(0, np.int64), *sequences]))
        ends = torch.from_numpy(np.cumsum(lengths))
        history = recent_history(
            flat, ends - torch.from_numpy(lengths), ends, self.params.history_len
        )
        uid = None if user_idx is None else torch.from_numpy(user_idx)
        return net.user_tower(history, uid).numpy().astype(np.float32)

    def _net(self) -> TwoTowerNet:
        if self.net_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.net_

    def user_embeddings(self) -> np.ndarray:
        """``(n_users, D)`` float32 user-tower outputs over the fitted histories."""
        self._check_fitted("user_embeddings_")
        return self.user_embeddings_  # type: ignore[return-value]

    def item_embeddings(self) -> np.ndarray:
        """``(n_items, D)`` float32 item-tower outputs."""
        self._check_fitted("item_embeddings_")
        return self.item_embeddings_  # type: ignore[return-value]

    def fold_in(self, item_idx_history: np.ndarray) -> np.ndarray:
        """The ``(D,)`` float32 user vector of a user known only from a time-ordered history.

        The user-id embedding (if any) is zero for such a user.

        Raises:
            ValidationError: an index is not an integer in ``[0, n_items)``.
        """
        n_items = self.item_embeddings().shape[0]
        items = checked_indices(item_idx_history, n_items, "fold_in", "item")
        return self._encode([items.astype(np.int64)], None)[0]

    def _net_counts(self) -> dict[str, int]:
        net = self._net()
        return {
            "n_features": net.feature_bag.num_embeddings - 1,
            "feature_width": int(net.feature_index.shape[1]),
        }

    def _empty_net(self, counts: Mapping[str, int]) -> TwoTowerNet:
        n_users, n_items = int(counts["n_users"]), int(counts["n_items"])
        n_features, width = int(counts["n_features"]), int(counts["feature_width"])
        if n_features < 0 or width < 1:
            raise ValueError(f"n_features {n_features}, feature_width {width}")
        # The feature bags are buffers: load_state_dict fills these zeros with the saved ones.
        index = np.zeros((n_items, width), np.int64)
        weight = np.zeros((n_items, width), np.float32)
        return self._new_net(n_users, n_items, index, weight, n_features)

    def _restore(self, net: torch.nn.Module, extra: Mapping[str, Any]) -> None:
        assert isinstance(net, TwoTowerNet)  # built by _empty_net
        self.net_ = net.eval()
