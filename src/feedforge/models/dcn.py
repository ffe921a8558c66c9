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

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from scipy.special import expit

from feedforge.artifacts import MANIFEST
from feedforge.errors import ArtifactError, ConfigError, DataError, NotFittedError, ValidationError
from feedforge.features.objectives import check_value
from feedforge.models.base import Ranker
from feedforge.models.dcn_net import (
    HEADS,
    DCNv2,
    expectations,
    fit_calibration,
    init_buffers,
    loss_columns,
    row_losses,
    target_scales,
)
from feedforge.models.ranker_utils import check_expected_features, check_features, check_fit_input
from feedforge.models.torch_utils import (
    WEIGHTS,
    check_positive_int,
    minibatches,
    read_torch_model,
    resolve_device,
    restore_net,
    save_torch_model,
    seeded,
)

TRAIN_COMMAND = "feedforge train"
_LOG = logging.getLogger(__name__)
_TARGETS = ("watch_seconds", "purchased", "revenue")
# Value outcome -> the heads its expectation needs besides the click.
_NEEDS = {"clicked": (), "watch_seconds": ("watch",), "revenue": ("purchase", "revenue")}
_FORMULA = {
    "clicked": "p(click)",
    "watch_seconds": "p(click) x E[watch_seconds | click]",
    "revenue": "p(click) x p(purchase | click) x E[revenue | purchase]",
}


class DCNRanker(Ranker):
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

    def __init__(
        self,
        value: Mapping[str, float] | None = None,
        embedding_dim: int = 4,
        cross_layers: int = 2,
        cross_rank: int = 16,
        hidden_units: int = 128,
        hidden_layers: int = 2,
        dropout: float = 0.1,
        learning_rate: float = 2e-3,
        weight_decay: float = 1e-5,
        batch_size: int = 512,
        max_epochs: int = 40,
        patience: int = 4,
        validation_fraction: float = 0.1,
        device: str = "auto",
        random_state: int = 0,
    ) -> None:
        self.value = None if value is None else dict(value)
        self.embedding_dim = embedding_dim
        self.cross_layers = cross_layers
        self.cross_rank = cross_rank
        self.hidden_units = hidden_units
        self.hidden_layers = hidden_layers
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state
        self.feature_names_: list[str] | None = None
        self.heads_: list[str] = []
        self.attribution_: dict[str, float] = {}
        self.epochs_ = 0
        self.best_epoch_ = 0
        self.calibration_: dict[str, list[float]] = {}
        self.net_: DCNv2 | None = None
        self._device: torch.device | None = None  # where it scores
        self._scoring = device  # the scoring device setting (use_device)

    def get_params(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "embedding_dim": self.embedding_dim,
            "cross_layers": self.cross_layers,
            "cross_rank": self.cross_rank,
            "hidden_units": self.hidden_units,
            "hidden_layers": self.hidden_layers,
            "dropout": self.dropout,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
            "validation_fraction": self.validation_fraction,
            "device": self.device,
            "random_state": self.random_state,
        }

    def _value(self) -> dict[str, float]:
        return check_value(self.value or {"clicked": 1.0}, "DCNRanker value")

    def _check_params(self) -> None:
        problems: list[str] = []
        for key in ("embedding_dim", "cross_rank", "hidden_units", "batch_size", "max_epochs"):
            check_positive_int(problems, key, getattr(self, key))
        for key in ("cross_layers", "hidden_layers", "patience"):
            check_positive_int(problems, key, getattr(self, key), minimum=0)
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 < self.validation_fraction < 1:
            problems.append(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        try:
            self._value()
        except ConfigError as exc:
            problems.append(str(exc))
        if problems:
            raise ValidationError("DCNRanker: " + "; ".join(problems))

    def _new_net(self, n_features: int) -> DCNv2:
        return DCNv2(
            n_features,
            int(self.embedding_dim),
            int(self.cross_layers),
            int(self.cross_rank),
            int(self.hidden_units),
            int(self.hidden_layers),
            float(self.dropout),
        )

    def _targets(
        self, targets: Mapping[str, np.ndarray] | None, n: int, where: str
    ) -> dict[str, np.ndarray]:
        """The given outcome targets, checked; a DataError when the objective values an
        outcome the targets cannot teach."""
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
        for outcome in self._value():
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
            ValidationError: bad hyper-parameters, shapes, names, labels, NaN/inf features,
                or a target the objective needs is missing or invalid.
            DataError: no rows, a single class, or a valued outcome that never happens.
        """
        self._check_params()
        where = "DCNRanker.fit"
        fit = check_fit_input(X, y, feature_names, group, sample_weight, where)
        n = len(fit.y)
        outcome = self._targets(targets, n, where)
        device = resolve_device(self.device)
        weight = fit.weight if fit.weight is not None else np.ones(n)
        train_rows, held_rows = self._holdout(fit.group, n)
        scales = target_scales(fit.y, outcome)
        columns = loss_columns(fit.y, outcome, scales)
        with seeded(int(self.random_state), device) as generator:
            net = self._new_net(len(fit.names))
            init_buffers(net, fit.X, fit.y, weight, outcome, scales)
            net.to(device)
            data = {
                key: torch.tensor(value, dtype=torch.float32, device=device)
                for key, value in {"X": fit.X, "w": weight, **columns}.items()
            }
            optimizer = torch.optim.AdamW(
                net.parameters(),
                lr=float(self.learning_rate),
                weight_decay=float(self.weight_decay),
            )
            best_loss, best_state, best_epoch, epoch = np.inf, copy.deepcopy(net.state_dict()), 0, 0
            train_idx = torch.as_tensor(train_rows, device=device)
            held_idx = torch.as_tensor(held_rows, device=device)
            for epoch in range(1, int(self.max_epochs) + 1):
                net.train()
                for batch in minibatches(len(train_rows), int(self.batch_size), generator):
                    rows = train_idx[batch.to(device)]
                    loss = self._loss(net, data, rows)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                net.eval()
                with torch.no_grad():
                    held = float(self._loss(net, data, held_idx))
                if not np.isfinite(held):
                    raise DataError(f"{where}: the loss diverged; lower learning_rate")
                if held < best_loss - 1e-6:
                    best_loss, best_epoch = held, epoch
                    best_state = copy.deepcopy(net.state_dict())
                elif epoch - best_epoch >= int(self.patience):
                    break
            net.load_state_dict(best_state)
            net.eval()
            self.calibration_ = fit_calibration(
                net,
                data["X"][held_idx],
                {k: data[k][held_idx] for k in columns},
                data["w"][held_idx],
            )
        self.feature_names_, self.net_, self._device = fit.names, net, device
        self._scoring = self.device
        self.heads_ = ["click", *(h for h in HEADS[1:] if h in columns)]
        self.epochs_, self.best_epoch_ = epoch, best_epoch
        self.attribution_ = self._attribution(fit.X[train_rows[:2048]])
        return self

    def _holdout(self, group: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Train and held-out row indices: a ``validation_fraction`` of the requests (rows)."""
        rng = np.random.default_rng(self.random_state)
        keys = group if group is not None else np.arange(n)
        unique, codes = np.unique(keys, return_inverse=True)
        held = (rng.random(len(unique)) < self.validation_fraction)[codes]
        if held.all() or not held.any():
            held = np.zeros(n, dtype=bool)
            held[rng.permutation(n)[: max(1, int(n * self.validation_fraction))]] = True
        return np.flatnonzero(~held), np.flatnonzero(held)

    @staticmethod
    def _loss(net: DCNv2, data: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        def part(key: str) -> torch.Tensor | None:
            return data[key][rows] if key in data else None

        w = data["w"][rows]
        losses = row_losses(
            net(data["X"][rows]),
            data["click"][rows],
            part("watch"),
            part("purchase"),
            part("revenue"),
        )
        return (losses * w).sum() / w.sum().clamp(min=1e-12)

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
        lines = [
            f"DCN-v2 multi-task ranker: {len(names)} features x {self.embedding_dim}-dim "
            f"embeddings, {self.cross_layers} cross layers (rank {self.cross_rank}), MLP "
            f"{self.hidden_layers} x {self.hidden_units} (halving), {n_params} parameters",
            f"  heads: {', '.join(self.heads_)}; trained {self.epochs_} epochs "
            f"(kept epoch {self.best_epoch_})",
            f"  score = {self.formula()}",
            "  calibration (slope, shift of each head's output, fitted on held-out requests): "
            + ", ".join(f"{h} {a:.3f}, {b:+.3f}" for h, (a, b) in self.calibration_.items()),
            "  attribution (mean |gradient x input| of log score):",
        ]
        lines += [f"  {share:6.1%}  {name}" for name, share in self.attribution_.items()]
        return "\n".join(lines)

    def save(self, directory: Path) -> None:
        """Write ``weights.safetensors``, ``params.json`` and the manifest (no pickle)."""
        names, net = self._fitted()
        extra = {
            "feature_names": names,
            "heads": self.heads_,
            "attribution": [[name, share] for name, share in self.attribution_.items()],
            "epochs": self.epochs_,
            "best_epoch": self.best_epoch_,
            "calibration": [[h, a, b] for h, (a, b) in self.calibration_.items()],
        }
        counts = {
            "n_features": len(names),
            "n_parameters": sum(p.numel() for p in net.parameters()),
        }
        save_torch_model(directory, self.name, self.get_params(), net, {}, counts, extra)

    @classmethod
    def load(
        cls,
        directory: Path,
        build_command: str = TRAIN_COMMAND,
        expected_features: list[str] | None = None,
    ) -> Self:
        """Load a ranker written by :meth:`save`; it scores on a CUDA GPU when torch sees one
        (``use_device`` changes that).

        Raises:
            ArtifactError: the directory or a file is missing or corrupt, or the saved
                features differ from ``expected_features``.
        """
        directory = Path(directory)
        manifest, params, tensors = read_torch_model(directory, cls.name, build_command)
        try:
            model = cls(**params)
            model._check_params()
            extra = manifest.extra
            names = [str(n) for n in extra["feature_names"]]
            heads = [str(h) for h in extra["heads"]]
            if not set(heads) <= set(HEADS) or "click" not in heads:
                raise ValueError(f"unknown heads {heads}")
            attribution = {str(k): float(v) for k, v in extra["attribution"]}
            epochs, best = int(extra["epochs"]), int(extra["best_epoch"])
            calibration = {str(h): [float(a), float(b)] for h, a, b in extra["calibration"]}
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise ArtifactError(
                directory / MANIFEST, f"corrupt dcn ranker description ({exc})", build_command
            ) from exc
        net = model._new_net(len(names))
        restore_net(net, tensors, directory / WEIGHTS, build_command)
        net.eval()
        check_expected_features(names, expected_features, directory, build_command)
        model.feature_names_, model.net_, model.heads_ = names, net, heads
        model.attribution_, model.epochs_, model.best_epoch_ = attribution, epochs, best
        model.calibration_ = calibration
        model.use_device("auto")
        return model
