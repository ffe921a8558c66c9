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

import math
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from feedforge.artifacts import MANIFEST
from feedforge.datasets.interactions import Interactions
from feedforge.errors import ArtifactError, DataError, NotFittedError, ValidationError
from feedforge.models.base import EmbeddingRecommender
from feedforge.models.torch_utils import (
    PARAMS,
    WEIGHTS,
    Device,
    check_positive_int,
    embedding_tensor,
    manifest_sizes,
    minibatches,
    read_torch_model,
    resolve_device,
    restore_net,
    save_torch_model,
    seeded,
)

TRAIN_COMMAND = "feedforge train"
Pooling = Literal["mean", "attention"]


def padded_features(features: sp.csr_matrix | None, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """An item-feature CSR as fixed-width bags for :class:`torch.nn.EmbeddingBag`.

    Returns:
        ``(n_items, W)`` int64 feature index ``+ 1`` (0 = padding) and ``(n_items, W)``
        float32 weights, ``W`` the most non-zeros of any item (at least 1).
    """
    if features is None or features.nnz == 0:
        return np.zeros((n_items, 1), np.int64), np.zeros((n_items, 1), np.float32)
    csr = sp.csr_matrix(features, dtype=np.float32)
    csr.sum_duplicates()
    counts = np.diff(csr.indptr)
    width = max(1, int(counts.max()))
    rows = np.repeat(np.arange(n_items), counts)
    cols = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], counts)
    index = np.zeros((n_items, width), np.int64)
    weight = np.zeros((n_items, width), np.float32)
    index[rows, cols] = csr.indices + 1
    weight[rows, cols] = csr.data
    return index, weight


class TwoTowerNet(nn.Module):
    """User and item towers mapping to the same ``D``-dim space.

    Args:
        n_users: Users known at training time (for the optional user-id embedding).
        n_items: Catalog size.
        feature_index: ``(n_items, W)`` int64 content-feature bags (see :func:`padded_features`).
        feature_weight: ``(n_items, W)`` float32 weights of the bags.
        n_features: Number of content features ``F`` (0 for none).
        dim: Output and embedding size ``D``.
        history_len: Items ``N`` of history the user tower reads.
        pooling: ``"mean"`` or ``"attention"``.
        use_user_id: Add a user-id embedding to the user tower.
        hidden_dim: Width of the towers' hidden layer.
        dropout: Dropout before each tower's output layer.
        normalize: L2-normalise the tower outputs.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        feature_index: torch.Tensor,
        feature_weight: torch.Tensor,
        n_features: int,
        dim: int,
        history_len: int,
        pooling: Pooling,
        use_user_id: bool,
        hidden_dim: int,
        dropout: float,
        normalize: bool,
    ) -> None:
        super().__init__()
        self.pooling, self.use_user_id, self.normalize = pooling, use_user_id, normalize
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.feature_bag = nn.EmbeddingBag(n_features + 1, dim, mode="sum", padding_idx=0)
        self.feature_index: torch.Tensor
        self.feature_weight: torch.Tensor
        self.register_buffer("feature_index", feature_index)
        self.register_buffer("feature_weight", feature_weight)
        self.user_embedding = nn.Embedding(n_users if use_user_id else 0, dim)
        self.recency_embedding = nn.Embedding(history_len, dim)
        self.query = nn.Parameter(torch.zeros(dim))
        user_in = 2 * dim if use_user_id else dim
        self.user_mlp = self._mlp(user_in, hidden_dim, dim, dropout)
        self.item_mlp = self._mlp(2 * dim, hidden_dim, dim, dropout)
        std = dim**-0.5
        for table in (self.item_embedding, self.feature_bag, self.user_embedding):
            nn.init.normal_(table.weight, std=std)
        nn.init.normal_(self.recency_embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            self.feature_bag.weight[0].zero_()

    @staticmethod
    def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
        )

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def user_tower(self, history: torch.Tensor, user_idx: torch.Tensor | None) -> torch.Tensor:
        """User vectors.

        Args:
            history: ``(B, N)`` int64 item tokens (``item + 1``; 0 = padding), right-aligned:
                column ``N - 1`` is the most recent item.
            user_idx: ``(B,)`` int64 user indices, or ``None`` for unknown users (the
                user-id part is then zeros).

        Returns:
            ``(B, D)``.
        """
        emb = self.item_embedding(history)  # (B, N, D)
        valid = (history != 0).unsqueeze(-1).to(emb.dtype)  # (B, N, 1)
        if self.pooling == "mean":
            pooled = (emb * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
        else:
            # Recency position 0 is the newest item (the last column).
            keys = emb + self.recency_embedding.weight.flip(0)[-history.shape[1] :]
            logits = keys @ self.query / math.sqrt(emb.shape[-1])  # (B, N)
            logits = logits.masked_fill(history == 0, -1e9)
            weights = torch.softmax(logits, dim=1).unsqueeze(-1) * valid
            pooled = (weights * emb).sum(dim=1)
        if self.use_user_id:
            unknown = user_idx is None
            ids = torch.zeros_like(pooled) if unknown else self.user_embedding(user_idx)
            pooled = torch.cat([pooled, ids], dim=-1)
        return self._out(self.user_mlp(pooled))

    def item_tower(self, item_idx: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` item vectors of ``(B,)`` int64 item indices."""
        bags = self.feature_bag(
            self.feature_index[item_idx], per_sample_weights=self.feature_weight[item_idx]
        )
        x = torch.cat([self.item_embedding(item_idx + 1), bags], dim=-1)
        return self._out(self.item_mlp(x))


def in_batch_softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    item_idx: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """In-batch sampled softmax with logQ correction (Yi et al. 2019).

    Args:
        users: ``(B, D)`` user-tower outputs.
        items: ``(B, D)`` item-tower outputs of each row's positive item.
        item_idx: ``(B,)`` the positive item indices.
        log_q: ``(n_items,)`` log sampling probability of each item; zeros disable the
            correction.
        temperature: Logits are divided by it.

    Returns:
        The mean cross-entropy of each row's positive against the batch's other positives.
    """
    logits = users @ items.T / temperature - log_q[item_idx].unsqueeze(0)  # (B, B)
    duplicate = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    duplicate.fill_diagonal_(False)
    logits = logits.masked_fill(duplicate, -torch.inf)
    return F.cross_entropy(logits, torch.arange(len(users), device=users.device))


def recent_history(
    flat: torch.Tensor, start: torch.Tensor, end: torch.Tensor, length: int
) -> torch.Tensor:
    """Right-aligned windows ``flat[max(start, end - length):end]`` as tokens.

    Args:
        flat: ``(S,)`` int64 concatenated item sequences.
        start: ``(B,)`` first offset of each row's sequence in ``flat``.
        end: ``(B,)`` one past the last history item.
        length: Window width ``N``.

    Returns:
        ``(B, N)`` int64 tokens (``item + 1``, 0 = padding on the left).
    """
    idx = end.unsqueeze(1) - length + torch.arange(length)  # (B, N)
    valid = idx >= start.unsqueeze(1)
    return torch.where(valid, flat[idx.clamp(min=0)] + 1, 0)


class TwoTowerRecommender(EmbeddingRecommender):
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

    def __init__(
        self,
        embedding_dim: int = 64,
        history_len: int = 50,
        pooling: Pooling = "mean",
        use_user_id: bool = False,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        normalize: bool = True,
        temperature: float = 0.05,
        logq_correction: bool = True,
        epochs: int = 20,
        batch_size: int = 512,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        device: Device = "auto",
        random_state: int = 0,
    ) -> None:
        self.embedding_dim = embedding_dim
        self.history_len = history_len
        self.pooling = pooling
        self.use_user_id = use_user_id
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.normalize = normalize
        self.temperature = temperature
        self.logq_correction = logq_correction
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.device = device
        self.random_state = random_state
        self.net_: TwoTowerNet | None = None
        self.user_embeddings_: np.ndarray | None = None
        self.item_embeddings_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {
            "embedding_dim": self.embedding_dim,
            "history_len": self.history_len,
            "pooling": self.pooling,
            "use_user_id": self.use_user_id,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "normalize": self.normalize,
            "temperature": self.temperature,
            "logq_correction": self.logq_correction,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "device": self.device,
            "random_state": self.random_state,
        }

    def _check_params(self) -> None:
        problems: list[str] = []
        for key in ("embedding_dim", "history_len", "hidden_dim"):
            check_positive_int(problems, key, getattr(self, key))
        check_positive_int(problems, "batch_size", self.batch_size, minimum=2)
        check_positive_int(problems, "epochs", self.epochs, minimum=0)
        if self.pooling not in ("mean", "attention"):
            problems.append(f"pooling must be 'mean' or 'attention', got {self.pooling!r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for key in ("use_user_id", "normalize", "logq_correction"):
            if not isinstance(getattr(self, key), bool):
                problems.append(f"{key} must be a bool, got {getattr(self, key)!r}")
        if problems:
            raise ValidationError("TwoTowerRecommender: " + "; ".join(problems))

    def _new_net(
        self, n_users: int, n_items: int, index: np.ndarray, weight: np.ndarray, n_features: int
    ) -> TwoTowerNet:
        return TwoTowerNet(
            n_users,
            n_items,
            torch.from_numpy(index),
            torch.from_numpy(weight),
            n_features,
            self.embedding_dim,
            self.history_len,
            self.pooling,
            self.use_user_id,
            self.hidden_dim,
            self.dropout,
            self.normalize,
        )

    def fit(self, interactions: Interactions) -> Self:
        """Train on (recent history -> next item) pairs, then precompute the embeddings.

        Raises:
            DataError: no user has two or more interactions, or training diverged.
            ValidationError: a hyper-parameter is out of range.
        """
        self._check_params()
        device = resolve_device(self.device)
        sequences = interactions.sequences()
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        if not (lengths >= 2).any():
            raise DataError("TwoTowerRecommender.fit: no user has two or more interactions")
        features = interactions.item_features
        n_features = 0 if features is None else int(features.shape[1])
        index, weight = padded_features(features, interactions.n_items)
        with seeded(self.random_state, device) as generator:
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
        if self.logq_correction:
            counts = torch.bincount(targets, minlength=n_items).to(torch.float32)
            log_q = torch.log(counts.clamp(min=1.0) / len(targets)).to(device)
        else:
            log_q = torch.zeros(n_items, device=device)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        net.train()
        for _ in range(self.epochs):
            total = torch.zeros((), device=device)
            for batch in minibatches(len(targets), self.batch_size, generator):
                history = recent_history(flat, start[batch], position[batch], self.history_len)
                uid = user[batch].to(device) if self.use_user_id else None
                item = targets[batch].to(device)
                loss = in_batch_softmax_loss(
                    net.user_tower(history.to(device), uid),
                    net.item_tower(item),
                    item,
                    log_q,
                    self.temperature,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
            if not math.isfinite(float(total)):
                raise DataError("TwoTowerRecommender.fit: training diverged; lower learning_rate")

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
        history = recent_history(flat, ends - torch.from_numpy(lengths), ends, self.history_len)
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
        items = np.asarray(item_idx_history).reshape(-1)
        if items.size and not np.issubdtype(items.dtype, np.integer):
            raise ValidationError(f"fold_in: item indices must be integers, got {items.dtype}")
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise ValidationError(f"fold_in: item indices outside [0, {n_items})")
        return self._encode([items.astype(np.int64)], None)[0]

    def save(self, directory: Path) -> None:
        """Write ``weights.safetensors`` (network + embeddings), ``params.json``, manifest."""
        users, items, net = self.user_embeddings(), self.item_embeddings(), self._net()
        counts = {
            "n_users": users.shape[0],
            "n_items": items.shape[0],
            "dim": items.shape[1],
            "n_features": net.feature_bag.num_embeddings - 1,
            "feature_width": int(net.feature_index.shape[1]),
        }
        save_torch_model(
            directory,
            self.name,
            self.get_params(),
            net,
            {"user_embeddings": users, "item_embeddings": items},
            counts,
        )

    @classmethod
    def load(cls, directory: Path, build_command: str = TRAIN_COMMAND) -> Self:
        """Load a model written by :meth:`save` (no pickle).

        Raises:
            ArtifactError: the directory or a file is missing or corrupt.
        """
        directory = Path(directory)
        manifest, params, tensors = read_torch_model(directory, cls.name, build_command)
        path = directory / WEIGHTS
        try:
            model = cls(**params)
            model._check_params()
        except (TypeError, ValidationError) as exc:
            raise ArtifactError(
                directory / PARAMS, f"corrupt two_tower parameters ({exc})", build_command
            ) from exc
        n_users, n_items = manifest_sizes(manifest, directory, build_command)
        n_features = int(manifest.counts.get("n_features", -1))
        width = int(manifest.counts.get("feature_width", -1))
        if n_features < 0 or width < 1:
            raise ArtifactError(directory / MANIFEST, "corrupt manifest counts", build_command)
        index = np.zeros((n_items, width), np.int64)
        weight = np.zeros((n_items, width), np.float32)
        net = model._new_net(n_users, n_items, index, weight, n_features)
        restore_net(net, tensors, path, build_command)
        model.net_ = net.eval()
        dim = model.embedding_dim
        model.user_embeddings_ = embedding_tensor(
            tensors, "user_embeddings", (n_users, dim), path, build_command
        )
        model.item_embeddings_ = embedding_tensor(
            tensors, "item_embeddings", (n_items, dim), path, build_command
        )
        return model
