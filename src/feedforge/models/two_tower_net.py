"""The two-tower network and its training loss (:mod:`feedforge.models.two_tower`).

* **User tower**: pools the item-id embeddings of the user's last ``history_len`` items (mean,
  or attention with a learned query and recency embeddings), optionally concatenates a
  user-id embedding, then an MLP to ``D``.
* **Item tower**: the item-id embedding (shared with the user tower's history lookup)
  concatenated with a bag of the item's content features, then an MLP to ``D``.
* The loss is the in-batch sampled softmax with logQ correction of Yi et al. (RecSys 2019).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from feedforge.models.torch_params import Pooling


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
