"""The deep multi-task ranker: a DCN-v2 network (:mod:`~.dcn_net`) with one head per outcome.

Heads, for one impression (``s_w``, ``s_r``: the training means the regression heads are
expressed in):

* ``p(click) = sigmoid(h_click)`` — trained on ``y``;
* ``E[watch_seconds | click] = s_w * exp(h_watch)`` — on ``targets["watch_seconds"]``;
* ``p(purchase | click) = sigmoid(h_purchase)`` — on ``targets["purchased"]``;
* ``E[revenue | purchase] = s_r * exp(h_revenue)`` — on ``targets["revenue"]``.

**Score formula** (:meth:`DCNRanker.score`): the objective's expected value of the impression,
``sum_k value[k] * E[k]`` with ``value`` from
:func:`~feedforge.features.objectives.objective_value` and

* ``E[clicked] = p(click)``,
* ``E[watch_seconds] = p(click) * E[watch_seconds | click]``,
* ``E[revenue] = p(click) * p(purchase | click) * E[revenue | purchase]``;

so ``clicks`` ranks by ``p(click)``, ``watch_time`` by ``p(click) * E[watch | click]``
(expected watch seconds), ``revenue`` by expected revenue and ``mix`` by the weighted sum.
:meth:`DCNRanker.predict_proba` is ``p(click)``. After training, each head is calibrated on
the held-out requests (Platt scaling of the click logit; the watch, purchase and revenue
heads scaled so that their held-out expected totals match the observed ones); evaluation
measures every head's calibration on the test split.

Runs on a CUDA GPU when torch sees one (``device="auto"``; ``use_device`` or
``serving.ranker_device`` forces ``cpu`` or ``cuda``), and falls back to the CPU when the GPU
fails under ``auto``. Saved as safetensors weights plus JSON (:mod:`~.torch_utils`); no pickle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
import torch
from scipy.special import expit

from feedforge.errors import NotFittedError, ValidationError
from feedforge.features.objectives import check_value
from feedforge.models.base import Ranker
from feedforge.models.dcn_net import (
    HEADS,
    DCNv2,
    expectations,
    fit_calibration,
    init_buffers,
    loss_columns,
    target_scales,
)
from feedforge.models.dcn_train import check_targets, holdout_rows, train_early_stopped
from feedforge.models.distributed import Checkpoint, TrainContext
from feedforge.models.ranker_utils import check_features, check_fit_input, ranker_description
from feedforge.models.torch_params import DCNParams
from feedforge.models.torch_utils import TorchModel, resolve_device, seeded

_LOG = logging.getLogger(__name__)
# Value outcome -> the heads its expectation needs besides the click.
_NEEDS = {"clicked": (), "watch_seconds": ("watch",), "revenue": ("purchase", "revenue")}
_FORMULA = {
    "clicked": "p(click)",
    "watch_seconds": "p(click) x E[watch_seconds | click]",
    "revenue": "p(click) x p(purchase | click) x E[revenue | purchase]",
}


class DCNRanker(TorchModel, Ranker):
    """DCN-v2 multi-task ranker (see the module docs for the heads and the score formula).

    Args:
        value: ``{outcome: value per unit}`` of the objective the score ranks by
            (:func:`~feedforge.features.objectives.objective_value`); None ranks by
            ``p(click)``. ``feedforge train`` sets it from ``objective``.
        embedding_dim: Numbers per feature embedding.
        cross_layers: Cross layers.
        cross_rank: Rank of each cross layer's weight matrix.
        hidden_units: Width of the first MLP layer (each next one halves).
        hidden_layers: MLP layers.
        dropout: Dropout after each MLP layer.
        learning_rate: AdamW step size.
        weight_decay: AdamW decoupled weight decay.
        batch_size: Impressions per step.
        max_epochs: Most passes over the data.
        patience: Stop after this many epochs without a better held-out loss (the best
            epoch's weights are kept).
        validation_fraction: Share of the requests (rows without groups) held out for it.
        device: ``auto``, ``cpu`` or ``cuda`` for training and scoring.
        random_state: Seed of initialisation, shuffling and the holdout.

    Attributes:
        feature_names_: The ``F`` feature names, in the column order of ``X``.
        heads_: The trained heads (``click`` always; the others when their targets were given).
        attribution_: Feature name -> share of the mean ``|gradient x input|`` of the log score.
        epochs_: Epochs trained, and ``best_epoch_`` the one whose weights were kept.
        calibration_: Head -> ``[slope, shift]`` of its output, fitted on the held-out requests
            (:func:`~.dcn_net.fit_calibration`).
    """

    name: ClassVar[str] = "dcn"
    multi_task: ClassVar[bool] = True
    Params = DCNParams
    params: DCNParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.feature_names_: list[str] | None = None
        self.heads_: list[str] = []
        self.attribution_: dict[str, float] = {}
        self.epochs_ = 0
        self.best_epoch_ = 0
        self.calibration_: dict[str, list[float]] = {}
        self.net_: DCNv2 | None = None
        self._device: torch.device | None = None  # where it scores
        self._scoring: str = self.params.device  # the scoring device setting (use_device)

    def _value(self) -> dict[str, float]:
        return check_value(self.params.value or {"clicked": 1.0}, "DCNRanker value")

    def _new_net(self, n_features: int) -> DCNv2:
        p = self.params
        return DCNv2(
            n_features,
            p.embedding_dim,
            p.cross_layers,
            p.cross_rank,
            p.hidden_units,
            p.hidden_layers,
            p.dropout,
        )

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        feature_names: list[str],
        group: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> Self:
        """Train the network on ``(N, F)`` features, ``(N,)`` clicks and the outcome targets.

        Args:
            X: ``(N, F)`` float features, columns in the order of ``feature_names``.
            y: ``(N,)`` clicks in ``{0, 1}`` (the ``click`` head).
            feature_names: ``F`` distinct column names.
            group: ``(N,)`` request keys; the early-stopping holdout is whole requests.
            sample_weight: ``(N,)`` weights of each row's loss (None: all 1).
            targets: ``{"watch_seconds", "purchased", "revenue"}`` -> ``(N,)`` outcomes;
                each present one trains its head. Those the objective values are required.

        Raises:
            ValidationError: bad shapes, names, labels, NaN/inf features, or a target the
                objective needs is missing or invalid.
            DataError: no rows, a single class, or a valued outcome that never happens.
        """
        p = self.params
        where = "DCNRanker.fit"
        fit = check_fit_input(X, y, feature_names, group, sample_weight, where)
        n = len(fit.y)
        outcome = check_targets(targets, n, self._value(), where)
        device = resolve_device(p.device)
        weight = fit.weight if fit.weight is not None else np.ones(n)
        train_rows, held_rows = holdout_rows(fit.group, n, p.validation_fraction, p.random_state)
        scales = target_scales(fit.y, outcome)
        columns = loss_columns(fit.y, outcome, scales)
        with seeded(p.random_state, device) as generator:
            net = self._new_net(len(fit.names))
            init_buffers(net, fit.X, fit.y, weight, outcome, scales)
            net.to(device)
            data = {
                key: torch.tensor(value, dtype=torch.float32, device=device)
                for key, value in {"X": fit.X, "w": weight, **columns}.items()
            }
            curve: dict[str, list[float]] = {}
            epoch, best_epoch = train_early_stopped(
                net,
                data,
                train_rows,
                held_rows,
                generator,
                learning_rate=p.learning_rate,
                weight_decay=p.weight_decay,
                batch_size=p.batch_size,
                max_epochs=p.max_epochs,
                patience=p.patience,
                where=where,
                history=curve,
                checkpoint=Checkpoint(
                    self.checkpoint_dir, self.checkpoint_key(), TrainContext.current()
                ),
            )
            self.training_curve_ = {"x": "epoch", "series": curve}
            held_idx = torch.as_tensor(held_rows, device=device)
            self.calibration_ = fit_calibration(
                net,
                data["X"][held_idx],
                {k: data[k][held_idx] for k in columns},
                data["w"][held_idx],
            )
        self.feature_names_, self.net_, self._device = fit.names, net, device
        self._scoring = p.device
        self.heads_ = ["click", *(h for h in HEADS[1:] if h in columns)]
        self.epochs_, self.best_epoch_ = epoch, best_epoch
        self.attribution_ = self._attribution(fit.X[train_rows[:2048]])
        return self

    def _attribution(self, X: np.ndarray) -> dict[str, float]:
        """Each feature's share of the mean ``|d log score / d z_j * z_j|`` over ``X``
        (gradient x input on the standardised features): which inputs move the score."""
        names, net = self._fitted()
        x = torch.as_tensor(X, dtype=torch.float32, device=self._device)
        z = net.standardize(x).detach().requires_grad_(True)
        log_score = torch.log(self._expected_value(net.forward_z(z)).clamp(min=1e-12))
        (grad,) = torch.autograd.grad(log_score.sum(), z)
        share = (grad * z).abs().mean(dim=0).detach().cpu().numpy().astype(np.float64)
        share = share / share.sum() if share.sum() > 0 else share
        order = np.argsort(-share, kind="stable")
        return {names[j]: float(share[j]) for j in order}

    def _expected_value(self, out: torch.Tensor) -> torch.Tensor:
        """``(N,)`` objective value per impression from ``(N, 4)`` head outputs."""
        value = self._value()
        untrained = sorted({h for key in value for h in _NEEDS[key] if h not in self.heads_})
        if untrained:
            raise ValidationError(
                f"DCNRanker: the objective {value} needs the heads {untrained}, which this "
                "model was trained without (fit it with their targets)"
            )
        heads = expectations(out, self._scales_tensor())
        total = torch.zeros(out.shape[0], dtype=out.dtype, device=out.device)
        for key, weight in value.items():
            total = total + weight * heads[key]
        return total

    def _scales_tensor(self) -> torch.Tensor:
        assert self.net_ is not None
        return self.net_.target_scale

    def _fitted(self) -> tuple[list[str], DCNv2]:
        if self.feature_names_ is None or self.net_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.feature_names_, self.net_

    def _forward(self, X: np.ndarray) -> torch.Tensor:
        """``(N, 4)`` head outputs of checked features, on the scoring device (falling back to
        the CPU when the GPU fails and the device setting is ``auto``)."""
        names, net = self._fitted()
        X = check_features(X, names, "DCNRanker")
        device = self._device or torch.device("cpu")
        try:
            with torch.inference_mode():
                return net(torch.as_tensor(X, dtype=torch.float32, device=device))
        except RuntimeError:
            if device.type != "cuda" or self._scoring != "auto":
                raise
            _LOG.exception("DCNRanker: scoring on %s failed; falling back to the CPU", device)
            self.use_device("cpu")
            with torch.inference_mode():
                return net(torch.as_tensor(X, dtype=torch.float32))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 ``p(click)``.

        Raises:
            ValidationError: wrong number of columns, or NaN/inf (the message names columns).
        """
        out = self._forward(X)
        return expit(out[:, 0].double().cpu().numpy())

    def score(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 expected objective value per impression (the module's formula)."""
        with torch.inference_mode():
            return self._expected_value(self._forward(X)).double().cpu().numpy()

    def predict_heads(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """``(N,)`` float64 arrays: ``p_click`` and, per trained head, the conditional
        estimate and the unconditional expectation (``expected_watch_seconds``,
        ``p_purchase``, ``expected_revenue``)."""
        with torch.inference_mode():
            out = self._forward(X)
            heads = expectations(out, self._scales_tensor())

            def numpy(t: torch.Tensor) -> np.ndarray:
                return t.double().cpu().numpy()

            result = {"p_click": numpy(heads["clicked"])}
            if "watch" in self.heads_:
                result["watch_seconds_given_click"] = numpy(heads["watch_given_click"])
                result["expected_watch_seconds"] = numpy(heads["watch_seconds"])
            if "purchase" in self.heads_:
                result["p_purchase_given_click"] = numpy(heads["purchase_given_click"])
                result["p_purchase"] = numpy(heads["purchased"])
            if "revenue" in self.heads_:
                result["revenue_given_purchase"] = numpy(heads["revenue_given_purchase"])
                result["expected_revenue"] = numpy(heads["revenue"])
        return result

    def use_device(self, device: str) -> None:
        """Score on ``device`` (``auto``: CUDA when torch sees one).

        Raises:
            ValidationError: ``cuda`` without a CUDA device, or an unknown setting.
        """
        _, net = self._fitted()
        self._device = resolve_device(device)
        self._scoring = device
        net.to(self._device)

    @property
    def scoring_device(self) -> str:
        """Where :meth:`score` runs, e.g. ``cpu`` or ``cuda:0``."""
        return str(self._device or "cpu")

    def formula(self) -> str:
        """The score formula, e.g. ``1 x p(click) x E[watch_seconds | click]``."""
        return " + ".join(f"{w:g} x {_FORMULA[k]}" for k, w in self._value().items())

    def describe(self) -> str:
        """The architecture, the heads, the score formula and the feature attributions."""
        names, net = self._fitted()
        n_params = sum(p.numel() for p in net.parameters())
        p = self.params
        lines = [
            f"DCN-v2 multi-task ranker: {len(names)} features x {p.embedding_dim}-dim "
            f"embeddings, {p.cross_layers} cross layers (rank {p.cross_rank}), MLP "
            f"{p.hidden_layers} x {p.hidden_units} (halving), {n_params} parameters",
            f"  heads: {', '.join(self.heads_)}; trained {self.epochs_} epochs "
            f"(kept epoch {self.best_epoch_})",
            f"  score = {self.formula()}",
            "  calibration (slope, shift of each head's output, fitted on held-out requests): "
            + ", ".join(f"{h} {a:.3f}, {b:+.3f}" for h, (a, b) in self.calibration_.items()),
            "  attribution (mean |gradient x input| of log score):",
        ]
        lines += [f"  {share:6.1%}  {name}" for name, share in self.attribution_.items()]
        return "\n".join(lines)

    def _net(self) -> DCNv2:
        return self._fitted()[1]

    def _net_counts(self) -> dict[str, int]:
        names, net = self._fitted()
        counts, _ = ranker_description(names, {})
        return {**counts, "n_parameters": sum(p.numel() for p in net.parameters())}

    def _net_state(self) -> dict[str, Any]:
        names, _ = self._fitted()
        _, extra = ranker_description(names, {})
        return {
            **extra,
            "heads": self.heads_,
            "attribution": [[name, share] for name, share in self.attribution_.items()],
            "epochs": self.epochs_,
            "best_epoch": self.best_epoch_,
            "calibration": [[h, a, b] for h, (a, b) in self.calibration_.items()],
        }

    def _empty_net(self, counts: Mapping[str, int]) -> DCNv2:
        return self._new_net(int(counts["n_features"]))

    def _restore(self, net: torch.nn.Module, extra: Mapping[str, Any]) -> None:
        """Adopt the loaded network and fitted state; it scores on a CUDA GPU when torch sees
        one (``use_device`` changes that)."""
        assert isinstance(net, DCNv2)  # built by _empty_net
        names = [str(n) for n in extra["feature_names"]]
        heads = [str(h) for h in extra["heads"]]
        if not set(heads) <= set(HEADS) or "click" not in heads:
            raise ValueError(f"unknown heads {heads}")
        if len(names) != net.mean.shape[0]:
            raise ValueError(f"{len(names)} feature names for {net.mean.shape[0]} inputs")
        self.attribution_ = {str(k): float(v) for k, v in extra["attribution"]}
        self.epochs_, self.best_epoch_ = int(extra["epochs"]), int(extra["best_epoch"])
        self.calibration_ = {str(h): [float(a), float(b)] for h, a, b in extra["calibration"]}
        self.feature_names_, self.net_, self.heads_ = names, net.eval(), heads
        self.use_device("auto")
