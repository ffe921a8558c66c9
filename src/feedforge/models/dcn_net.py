"""The network and the losses of the deep multi-task ranker (:mod:`feedforge.models.dcn`).

DCN-v2 (Wang et al., "DCN V2: Improved Deep & Cross Network", WWW 2021), stacked form, over
dense features:

1. **standardise** each feature with the training mean and deviation (clipped to +-8 sd, so an
   unseen extreme value cannot blow up a score);
2. **embed** each feature ``j`` as ``z_j * W_j + B_j`` (``embedding_dim`` numbers: the numeric
   embeddings of Gorishniy et al., NeurIPS 2022) and concatenate them into ``x0``;
3. **cross**: ``cross_layers`` low-rank cross layers ``x_{l+1} = x0 * (U_l V_l^T x_l + b_l) +
   x_l``, explicit feature interactions of growing degree;
4. **deep**: an MLP (ReLU, dropout) of ``hidden_layers`` layers, ``hidden_units`` wide and
   halving;
5. **heads**: one linear output per task (:data:`HEADS`), then a per-head calibration
   (:func:`fit_calibration`).

The losses train every head on every impression (the entire-space multi-task model, ESMM: Ma
et al., SIGIR 2018), so the conditional heads are never fit on the clicked rows alone, whose
features are a biased sample of what serving scores.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HEADS: tuple[str, ...] = ("click", "watch", "purchase", "revenue")
"""Outputs, in column order: ``p(click)`` logit, ``log E[watch_seconds | click] / s_w``,
``p(purchase | click)`` logit, ``log E[revenue | purchase] / s_r``."""

_CLIP_SD = 8.0


class _Cross(nn.Module):
    """One low-rank cross layer: ``x0 * (U V^T x + b) + x``."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width)
        nn.init.normal_(self.up.weight, std=0.1 / math.sqrt(rank))
        nn.init.zeros_(self.up.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.up(self.down(x)) + x


class DCNv2(nn.Module):
    """Standardise, embed, cross, MLP, heads; ``forward`` maps ``(N, F)`` float32 features to
    ``(N, len(HEADS))`` head outputs (see :data:`HEADS`).

    The standardisation and the target scales are buffers, saved with the weights.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor
    target_scale: torch.Tensor
    calibration: torch.Tensor

    def __init__(
        self,
        n_features: int,
        embedding_dim: int,
        cross_layers: int,
        cross_rank: int,
        hidden_units: int,
        hidden_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("inv_std", torch.ones(n_features))
        # E[watch | click] and E[revenue | purchase] are predicted in units of these.
        self.register_buffer("target_scale", torch.ones(2))
        # Per head: outputs become slope * output + shift (identity until fit_calibration).
        self.register_buffer("calibration", torch.tensor([[1.0] * len(HEADS), [0.0] * len(HEADS)]))
        self.embed_weight = nn.Parameter(torch.randn(n_features, embedding_dim))
        self.embed_bias = nn.Parameter(torch.zeros(n_features, embedding_dim))
        width = n_features * embedding_dim
        self.cross = nn.ModuleList(_Cross(width, cross_rank) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        size = width
        for layer in range(hidden_layers):
            out = max(8, hidden_units // (2**layer))
            layers += [nn.Linear(size, out), nn.ReLU(), nn.Dropout(dropout)]
            size = out
        self.deep = nn.Sequential(*layers)
        self.heads = nn.Linear(size, len(HEADS))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, F)`` standardised, clipped features."""
        return ((x - self.mean) * self.inv_std).clamp(-_CLIP_SD, _CLIP_SD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_z(self.standardize(x))

    def forward_z(self, z: torch.Tensor) -> torch.Tensor:
        """Head outputs of standardised features."""
        x0 = (z.unsqueeze(-1) * self.embed_weight + self.embed_bias).flatten(1)
        xl = x0
        for layer in self.cross:
            xl = layer(x0, xl)
        out: torch.Tensor = self.heads(self.deep(xl))
        return out * self.calibration[0] + self.calibration[1]


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(a))`` for ``a < 0``, accurate at both ends (Maechler 2012)."""
    a = a.clamp(max=-1e-7)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _poisson(log_mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Poisson deviance up to a constant, ``mu - t log mu``: minimised by ``mu = E[t]``, so a
    head trained with it estimates a mean (of a non-negative, possibly fractional target)."""
    return torch.exp(log_mean) - target * log_mean


def row_losses(
    out: torch.Tensor,
    click: torch.Tensor,
    watch: torch.Tensor | None,
    purchase: torch.Tensor | None,
    revenue: torch.Tensor | None,
) -> torch.Tensor:
    """``(N,)`` summed loss of the active heads on each impression (entire space).

    Args:
        out: ``(N, 4)`` :class:`DCNv2` outputs.
        click: ``(N,)`` 0/1 clicks.
        watch: ``(N,)`` watch seconds over their scale, or None (head off).
        purchase: ``(N,)`` 0/1 purchases, or None (head off, and the revenue head with it).
        revenue: ``(N,)`` revenue over its scale, or None (head off).

    The click head is the log loss of ``p_c``; the watch head the Poisson deviance of the
    expected watch ``p_c * E[w | c]``; the purchase head the log loss of
    ``p_c * p(purchase | c)``; the revenue head the Poisson deviance of
    ``p_c * p(purchase | c) * E[r | purchase]``.
    """
    c, w, p, r = out.unbind(dim=1)
    loss = F.binary_cross_entropy_with_logits(c, click, reduction="none")
    log_click = F.logsigmoid(c)
    if watch is not None:
        loss = loss + _poisson(log_click + w, watch)
    if purchase is not None:
        log_buy = log_click + F.logsigmoid(p)
        loss = loss - (purchase * log_buy + (1.0 - purchase) * _log1mexp(log_buy))
        if revenue is not None:
            loss = loss + _poisson(log_buy + r, revenue)
    return loss


def target_scales(y: np.ndarray, outcome: dict[str, np.ndarray]) -> tuple[float, float]:
    """``(s_w, s_r)``: mean watch seconds of the clicked rows and mean revenue of the
    purchases (1.0 where there is none), the units of the regression heads."""
    clicks = y == 1
    s_w = s_r = 1.0
    if "watch_seconds" in outcome and clicks.any():
        s_w = float(outcome["watch_seconds"][clicks].mean()) or 1.0
    if "revenue" in outcome and "purchased" in outcome:
        bought = outcome["purchased"] == 1
        if bought.any():
            s_r = float(outcome["revenue"][bought].mean()) or 1.0
    return s_w, s_r


def loss_columns(
    y: np.ndarray, outcome: dict[str, np.ndarray], scales: tuple[float, float]
) -> dict[str, np.ndarray]:
    """The loss's target columns of the active heads (regression targets over their scales)."""
    columns = {"click": y.astype(np.float64)}
    if "watch_seconds" in outcome:
        columns["watch"] = outcome["watch_seconds"] / scales[0]
    if "purchased" in outcome:
        columns["purchase"] = outcome["purchased"]
        if "revenue" in outcome:
            columns["revenue"] = outcome["revenue"] / scales[1]
    return columns


def init_buffers(
    net: DCNv2,
    X: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    outcome: dict[str, np.ndarray],
    scales: tuple[float, float],
) -> None:
    """Standardisation and target scales from the data; the click and purchase heads start
    at the observed rates (the regression heads at their scale)."""
    std = X.std(axis=0)
    net.mean.copy_(torch.as_tensor(X.mean(axis=0), dtype=torch.float32))
    net.inv_std.copy_(torch.as_tensor(1.0 / np.where(std > 1e-12, std, 1.0), dtype=torch.float32))
    net.target_scale.copy_(torch.tensor(scales, dtype=torch.float32))
    rate = float(np.clip(np.average(y, weights=weight), 1e-4, 1 - 1e-4))
    buy = 0.5
    if "purchased" in outcome and y.any():
        buy = float(np.clip(outcome["purchased"].sum() / y.sum(), 1e-4, 1 - 1e-4))
    with torch.no_grad():
        bias = [np.log(rate / (1 - rate)), 0.0, np.log(buy / (1 - buy)), 0.0]
        net.heads.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def expectations(out: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-impression estimates from ``(N, 4)`` head outputs: the conditionals and the
    expectations of each outcome (keys ``clicked``, ``watch_seconds``, ``purchased``,
    ``revenue``)."""
    c, w, p, r = out.float().unbind(dim=1)
    p_click = torch.sigmoid(c)
    watch = scales[0] * torch.exp(w.clamp(max=30.0))
    buy = torch.sigmoid(p)
    rev = scales[1] * torch.exp(r.clamp(max=30.0))
    return {
        "clicked": p_click,
        "watch_given_click": watch,
        "watch_seconds": p_click * watch,
        "purchase_given_click": buy,
        "purchased": p_click * buy,
        "revenue_given_purchase": rev,
        "revenue": p_click * buy * rev,
    }


MIN_CALIBRATION_EVENTS = 100
"""Fewest held-out positives (clicks, purchases) a head's calibration is fitted on; below it
the head keeps its training calibration rather than trade it for the noise of a few events."""


def fit_calibration(
    net: DCNv2, X: torch.Tensor, columns: dict[str, torch.Tensor], weight: torch.Tensor
) -> dict[str, list[float]]:
    """Calibrate the heads on held-out impressions and store it in ``net.calibration``.

    * click: Platt scaling of the logit (``a * h + b``, weighted log loss);
    * watch, revenue: a factor making the held-out expected total equal the observed one;
    * purchase: a logit shift with the same property (solved by bisection).

    Heads with fewer than :data:`MIN_CALIBRATION_EVENTS` held-out positives are left as
    trained. Returns the ``{head: [slope, shift]}`` applied.
    """
    from sklearn.linear_model import LogisticRegression

    net.calibration.copy_(torch.tensor([[1.0] * len(HEADS), [0.0] * len(HEADS)]))
    with torch.no_grad():
        c, w, p, r = (t.double().cpu().numpy() for t in net(X).unbind(dim=1))
    cols = {k: v.double().cpu().numpy() for k, v in columns.items()}
    wt = weight.double().cpu().numpy()
    cal = np.array([[1.0] * len(HEADS), [0.0] * len(HEADS)])
    click = cols["click"]
    if min(click.sum(), (1 - click).sum()) >= MIN_CALIBRATION_EVENTS:
        platt = LogisticRegression(C=1e6, max_iter=1000)
        platt.fit(c.reshape(-1, 1), click.astype(np.int64), sample_weight=wt)
        if platt.coef_[0, 0] > 0:
            cal[:, 0] = (platt.coef_[0, 0], platt.intercept_[0])
    p_click = 1.0 / (1.0 + np.exp(-(cal[0, 0] * c + cal[1, 0])))
    enough_clicks = click.sum() >= MIN_CALIBRATION_EVENTS
    if "watch" in cols and enough_clicks:
        predicted = (wt * p_click * np.exp(w)).sum()
        if predicted > 0 and (wt * cols["watch"]).sum() > 0:
            cal[1, 1] = np.log((wt * cols["watch"]).sum() / predicted)
    if "purchase" in cols and cols["purchase"].sum() >= MIN_CALIBRATION_EVENTS:
        target = (wt * cols["purchase"]).sum()
        low, high = -10.0, 10.0
        for _ in range(60):  # the expected total grows with the shift
            mid = (low + high) / 2
            total = (wt * p_click / (1.0 + np.exp(-(p + mid)))).sum()
            low, high = (mid, high) if total < target else (low, mid)
        cal[1, 2] = (low + high) / 2
        if "revenue" in cols:
            p_buy = p_click / (1.0 + np.exp(-(p + cal[1, 2])))
            predicted = (wt * p_buy * np.exp(r)).sum()
            if predicted > 0 and (wt * cols["revenue"]).sum() > 0:
                cal[1, 3] = np.log((wt * cols["revenue"]).sum() / predicted)
    net.calibration.copy_(torch.as_tensor(cal, dtype=torch.float32))
    return {head: [float(cal[0, j]), float(cal[1, j])] for j, head in enumerate(HEADS)}
