"""The training task of the deep ranker (:mod:`feedforge.models.dcn`), apart from the network
(:mod:`~.dcn_net`): the outcome targets' checks, the held-out requests, and the AdamW loop that
stops early on the held-out loss.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch

from feedforge.errors import DataError, ValidationError
from feedforge.models.dcn_net import DCNv2, row_losses
from feedforge.models.distributed import Checkpoint, TrainContext

_TARGETS = ("watch_seconds", "purchased", "revenue")


def holdout_rows(
    group: np.ndarray | None, n: int, fraction: float, random_state: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out row indices: a ``fraction`` of the requests ``group`` (of the rows
    when there are no groups) is held out for early stopping and calibration."""
    rng = np.random.default_rng(random_state)
    keys = group if group is not None else np.arange(n)
    unique, codes = np.unique(keys, return_inverse=True)
    held = (rng.random(len(unique)) < fraction)[codes]
    if held.all() or not held.any():
        held = np.zeros(n, dtype=bool)
        held[rng.permutation(n)[: max(1, int(n * fraction))]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def weighted_loss(net: DCNv2, data: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """The weighted mean over ``rows`` of every head's loss (:func:`row_losses`).

    Args:
        net: The network.
        data: ``X`` ``(N, F)``, ``w`` ``(N,)`` and the :func:`loss_columns` (``(N,)`` each).
        rows: ``(B,)`` int64 row indices.
    """

    def part(key: str) -> torch.Tensor | None:
        return data[key][rows] if key in data else None

    w = data["w"][rows]
    losses = row_losses(
        net(data["X"][rows]), data["click"][rows], part("watch"), part("purchase"), part("revenue")
    )
    return (losses * w).sum() / w.sum().clamp(min=1e-12)


def train_early_stopped(
    net: DCNv2,
    data: dict[str, torch.Tensor],
    train_rows: np.ndarray,
    held_rows: np.ndarray,
    generator: torch.Generator,
    *,
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    max_epochs: int,
    patience: int,
    where: str,
    history: dict[str, list[float]] | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[int, int]:
    """AdamW over shuffled minibatches of ``train_rows`` until the held-out loss has not
    improved for ``patience`` epochs; ``net`` ends with the best epoch's weights, in eval mode.

    Args:
        net: The network, on the device of ``data``.
        data: What :func:`weighted_loss` reads, on the training device.
        train_rows: ``(N_train,)`` rows trained on; held_rows: ``(N_held,)`` rows measured.
        generator: CPU generator of the shuffles.
        where: Prefix of the error message.
        checkpoint: Written after every epoch and resumed from
            (:mod:`feedforge.models.distributed`); cleared at the end.

    Returns:
        The epochs trained and the best epoch (0: the initial weights were kept).

    Raises:
        DataError: the held-out loss is not finite (training diverged).
    """
    device = data["X"].device
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=weight_decay)
    best_loss, best_state, best_epoch, epoch = np.inf, copy.deepcopy(net.state_dict()), 0, 0
    context = checkpoint.context if checkpoint is not None else TrainContext.current()
    step = context.step(net, weighted_loss)
    curve: list[float] = []
    resumed = checkpoint.restore(net, optimizer, [generator]) if checkpoint else None
    if resumed is not None:
        loop, tensors = resumed
        epoch, best_epoch, curve = loop["epoch"], loop["best_epoch"], list(loop["curve"])
        best_loss = float(loop["best_loss"])
        best_state = {k: tensors[k] for k in best_state}
    train_idx = torch.as_tensor(train_rows, device=device)
    held_idx = torch.as_tensor(held_rows, device=device)
    stopped = resumed is not None and loop["stopped"]
    while not stopped and epoch < max_epochs:
        epoch += 1
        net.train()
        for batch in context.batches(len(train_rows), batch_size, generator):
            loss = step(data, train_idx[batch.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():  # the whole held-out set on every rank: the same decisions
            held = float(weighted_loss(net, data, held_idx))
        if not np.isfinite(held):
            raise DataError(f"{where}: the loss diverged; lower learning_rate")
        curve.append(held)
        if held < best_loss - 1e-6:
            best_loss, best_epoch = held, epoch
            best_state = copy.deepcopy(net.state_dict())
        stopped = epoch - best_epoch >= patience
        if checkpoint is not None:
            loop = {
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best_loss": best_loss,
                "curve": curve,
                "stopped": stopped,
            }
            checkpoint.save(net, optimizer, [generator], loop, extra=best_state)
    if history is not None:  # the training curve: the held-out loss per epoch
        history.setdefault("held-out loss", []).extend(curve)
    net.load_state_dict(best_state)
    net.eval()
    if checkpoint is not None:
        checkpoint.clear()
    return epoch, best_epoch


def check_targets(
    targets: Mapping[str, np.ndarray] | None, n: int, value: Mapping[str, float], where: str
) -> dict[str, np.ndarray]:
    """The given outcome targets (``(N,)`` each), checked against the objective's ``value``.

    Raises:
        ValidationError: a target of the wrong length, negative, non-finite, a ``purchased``
            other than 0/1, or a valued outcome without its target.
        DataError: the objective values an outcome no training impression has.
    """
    out: dict[str, np.ndarray] = {}
    for key, array in (targets or {}).items():
        if key not in _TARGETS:
            continue  # e.g. the click, which is y
        array = np.asarray(array, dtype=np.float64).reshape(-1)
        if len(array) != n:
            raise ValidationError(f"{where}: {n} rows of X but {len(array)} {key} targets")
        if not (np.isfinite(array).all() and (array >= 0).all()):
            raise ValidationError(f"{where}: {key} targets must be finite and >= 0")
        if key == "purchased" and not np.isin(array, (0, 1)).all():
            raise ValidationError(f"{where}: purchased targets must be 0 or 1")
        out[key] = array
    if "revenue" in out and "purchased" not in out:
        out["purchased"] = (out["revenue"] > 0).astype(np.float64)
    for outcome in value:
        column = "purchased" if outcome == "revenue" else outcome
        if outcome == "clicked":
            continue
        if outcome not in out:
            raise ValidationError(
                f"{where}: the objective values {outcome} but targets has no {outcome!r} "
                f"(give targets={{{outcome!r}: ...}}, e.g. from ranking_outcomes)"
            )
        if not out[column].any():
            raise DataError(
                f"{where}: the objective values {outcome} but no training impression has "
                f"any {column}; nothing to learn it from"
            )
    return out
