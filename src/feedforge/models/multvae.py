"""Mult-VAE: a variational autoencoder of each user's item set with a multinomial likelihood
(Liang et al., "Variational Autoencoders for Collaborative Filtering", WWW 2018).

A user's binary history row ``x`` (L2-normalised, with dropout on its entries in training) is
encoded by an MLP into the mean and log-variance of a Gaussian latent ``z``; an MLP decodes
``z`` into logits over every item. Training maximises the multinomial log-likelihood
``sum_i x_i log softmax(f(z))_i`` minus ``beta`` times the KL divergence to the standard
normal, with ``beta`` annealed linearly from 0 to ``beta_max`` over ``anneal_steps`` updates
(the paper's KL annealing). Scoring decodes the latent mean of the user's training row: the
model keeps each training user's mean (``user_latent``) and the network; it is not an
embedding model (the decoder is non-linear).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from feedforge.datasets.interactions import Interactions
from feedforge.errors import DataError, NotFittedError
from feedforge.models.arrays import ArraySpec
from feedforge.models.base import Recommender, checked_indices
from feedforge.models.distributed import Checkpoint, TrainContext, train_epochs
from feedforge.models.params import ModelParams
from feedforge.models.torch_params import Device
from feedforge.models.torch_utils import TorchModel, resolve_device, seeded


class MultVAEParams(ModelParams):
    """Hyper-parameters of :class:`MultVAERecommender` (documented there)."""

    hidden_dim: int = Field(600, ge=1)
    latent_dim: int = Field(200, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    beta_max: float = Field(0.2, ge=0)
    anneal_steps: int = Field(20_000, ge=1)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(500, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    device: Device = "auto"
    random_state: int = 0


class MultVAENet(nn.Module):
    """Encoder ``n_items -> hidden -> 2 x latent`` and decoder ``latent -> hidden -> n_items``
    (tanh hidden layers, as in the paper)."""

    def __init__(self, n_items: int, hidden: int, latent: int, dropout: float) -> None:
        super().__init__()
        self.latent = latent
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Sequential(nn.Linear(n_items, hidden), nn.Tanh())
        self.to_stats = nn.Linear(hidden, 2 * latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, n_items)
        )

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``z`` for ``(B, n_items)`` history rows."""
        normed = F.normalize(rows, dim=1)
        stats = self.to_stats(self.encoder(self.drop(normed)))
        return stats[:, : self.latent], stats[:, self.latent :]

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits over items, and the latent mean and log-variance, of history rows (a
        sampled ``z`` in training, the mean otherwise)."""
        mean, logvar = self.encode(rows)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
        return self.decoder(z), mean, logvar


def _vae_loss(net: MultVAENet, rows: torch.Tensor, beta: float) -> torch.Tensor:
    """The negative ELBO of a batch: multinomial log-likelihood and ``beta`` x KL."""
    logits, mean, logvar = net(rows)
    likelihood = (F.log_softmax(logits, dim=1) * rows).sum(dim=1).mean()
    kl = (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)).mean()
    return -likelihood + beta * kl


class MultVAERecommender(TorchModel, Recommender):
    """Mult-VAE (see the module docs).

    Args:
        hidden_dim: Width of the encoder's and decoder's hidden layer (600 in the paper).
        latent_dim: Size of ``z`` (200 in the paper).
        dropout: Input dropout in training (0.5).
        beta_max: Weight of the KL term after annealing (the paper picks ~0.2 on validation).
        anneal_steps: Updates over which ``beta`` grows from 0 to ``beta_max``.
        epochs, batch_size, learning_rate, weight_decay: Adam over user rows.
        device: ``auto``, ``cpu`` or ``cuda``.
        random_state: Seed of the initialisation, shuffles, dropout and sampling.

    Attributes:
        user_latent_: ``(n_users, latent_dim)`` float32 latent means of the training rows.
    """

    name: ClassVar[str] = "multvae"
    Params = MultVAEParams
    params: MultVAEParams
    ARRAYS = (ArraySpec("user_latent", ("n_users", "latent_dim")),)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.net_: MultVAENet | None = None
        self.user_latent_: np.ndarray | None = None

    def _new_net(self, n_items: int) -> MultVAENet:
        p = self.params
        return MultVAENet(n_items, p.hidden_dim, p.latent_dim, p.dropout)

    def fit(self, interactions: Interactions) -> Self:
        """Train on the binarised user rows, then keep each user's latent mean.

        Raises:
            DataError: there are no interactions, or training diverged.
            ValidationError: ``device="cuda"`` without a CUDA device.
        """
        if len(interactions) == 0:
            raise DataError("MultVAERecommender.fit: no interactions to learn from")
        p = self.params
        device = resolve_device(p.device)
        rows = sp.csr_matrix(interactions.to_csr(), dtype=np.float32, copy=True)
        rows.sum_duplicates()
        rows.data[:] = 1.0
        active = np.flatnonzero(np.diff(rows.indptr) > 0)  # users with a history
        with seeded(p.random_state, device) as generator:
            net = self._new_net(interactions.n_items).to(device)
            self._train(net, rows, active, generator, device)
        self.net_ = net.to("cpu").eval()
        self.user_latent_ = self._latent(rows)
        return self

    def _train(
        self,
        net: MultVAENet,
        rows: sp.csr_matrix,
        active: np.ndarray,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        p = self.params
        optimizer = torch.optim.Adam(
            net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay
        )
        context = TrainContext.current()
        step = context.step(net, _vae_loss, find_unused=False)

        def loss_of(batch: torch.Tensor, update: int) -> torch.Tensor:
            dense = torch.from_numpy(rows[active[batch.numpy()]].toarray()).to(device)
            return step(dense, p.beta_max * min(1.0, update / p.anneal_steps))

        history = train_epochs(
            net,
            optimizer,
            p.epochs,
            lambda: context.batches(len(active), p.batch_size, generator),
            loss_of,
            Checkpoint(self.checkpoint_dir, self.checkpoint_key(), context),
            generator,
            "MultVAERecommender.fit",
        )
        self.training_curve_ = {"x": "epoch", "series": {"train loss": history.losses}}

    @torch.no_grad()
    def _latent(self, rows: sp.csr_matrix, batch_size: int = 1024) -> np.ndarray:
        """``(n_users, latent_dim)`` latent means of history rows (eval mode, on CPU)."""
        net = self._net()
        out = np.zeros((rows.shape[0], self.params.latent_dim), dtype=np.float32)
        for start in range(0, rows.shape[0], batch_size):
            dense = torch.from_numpy(rows[start : start + batch_size].toarray())
            out[start : start + len(dense)] = net.encode(dense)[0].numpy()
        return out

    def _net(self) -> MultVAENet:
        if self.net_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.net_

    @torch.no_grad()
    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(B, n_items)`` float32 decoder logits of training users' latent means.

        Raises:
            ValidationError: a user index is not an integer in ``[0, n_users)``.
        """
        net = self._net()
        self._check_fitted("user_latent_")
        latent = self.user_latent_
        assert latent is not None
        users = checked_indices(user_idx, latent.shape[0], "MultVAE score", "user")
        return net.decoder(torch.from_numpy(latent[users])).numpy().astype(np.float32)

    def _net_counts(self) -> dict[str, int]:
        first = self._net().encoder[0]
        assert isinstance(first, nn.Linear)
        return {"n_items": first.in_features}

    def _empty_net(self, counts: Mapping[str, int]) -> MultVAENet:
        return self._new_net(int(counts["n_items"]))

    def _restore(self, net: torch.nn.Module, extra: Mapping[str, Any]) -> None:
        assert isinstance(net, MultVAENet)  # built by _empty_net
        self.net_ = net.eval()
