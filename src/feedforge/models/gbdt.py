"""The gradient-boosted-trees ranker (LightGBM), pointwise (``binary``) or listwise
(``lambdarank``).

* ``objective="binary"``: log loss on each impression's label; ``predict_proba`` is
  LightGBM's own probability.
* ``objective="lambdarank"``: LambdaRank on the impressions of each request (``group``),
  optimising NDCG of the order within a feed. Its raw scores are not probabilities, so a
  Platt calibrator ``p = sigmoid(a * score + b)`` is fitted on the training rows afterwards;
  ``predict_proba`` returns the calibrated probability (monotone in the score, so the ranking
  is the model's own).

Saved as LightGBM's text model format (``model.txt``, loaded with
``lightgbm.Booster(model_str=...)``) plus a JSON file of parameters and the calibrator; no
pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from feedforge.artifacts import Manifest, require_file
from feedforge.errors import ArtifactError, DataError, NotFittedError, ValidationError
from feedforge.models.base import Ranker
from feedforge.models.params import ModelParams
from feedforge.models.ranker_utils import (
    check_features,
    check_fit_input,
    ranker_description,
    write_ranker_files,
)

_MODEL_FILE = "model.txt"
_PARAMS_FILE = "params.json"
# Below this many rows one thread predicts faster than a pool (serving scores a few hundred).
_SINGLE_THREAD_ROWS = 20_000

GBDTObjective = Literal["binary", "lambdarank"]


def _group_order(group: np.ndarray) -> np.ndarray:
    """A stable row order that makes each group's rows contiguous."""
    _, codes = np.unique(group, return_inverse=True)
    return np.argsort(codes, kind="stable")


class LightGBMParams(ModelParams):
    """Hyper-parameters of :class:`LightGBMRanker` (documented there)."""

    objective: GBDTObjective = "binary"
    n_estimators: int = Field(300, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(100, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample: float = Field(0.9, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    early_stopping_rounds: Annotated[int, Field(ge=1)] | None = 30
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    num_threads: int = Field(0, ge=0)
    random_state: int = 0


class LightGBMRanker(Ranker):
    """LightGBM gradient-boosted trees over the ranking features.

    Args:
        objective: ``"binary"`` (pointwise log loss) or ``"lambdarank"`` (listwise, needs
            ``group`` at fit).
        n_estimators: Most boosting rounds.
        early_stopping_rounds: Choose the round count on a held-out ``validation_fraction`` of
            the requests (stop after this many rounds without improvement), then refit on all
            rows with it; None trains ``n_estimators`` rounds.
        validation_fraction: Share of the requests held out to choose the round count.
        learning_rate: Shrinkage per round.
        num_leaves: Leaves per tree.
        min_child_samples: Fewest rows per leaf.
        subsample: Row fraction bagged per round (every round when < 1).
        colsample: Feature fraction per tree.
        reg_lambda: L2 regularisation of the leaf values.
        num_threads: Training threads (0: LightGBM's default, all cores).
        random_state: Seed of bagging and feature sampling.

    Attributes:
        feature_names_: The ``F`` feature names, in the column order of ``X``.
        booster_: The trained ``lightgbm.Booster``.
        calibration_: ``(a, b)`` of the Platt calibrator (lambdarank), ``None`` for binary.
    """

    name: ClassVar[str] = "lightgbm"
    Params = LightGBMParams
    params: LightGBMParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.feature_names_: list[str] | None = None
        self.booster_: Any = None
        self.calibration_: tuple[float, float] | None = None

    def _lgb_params(self) -> dict[str, Any]:
        p = self.params
        params: dict[str, Any] = {
            "objective": p.objective,
            "learning_rate": p.learning_rate,
            "num_leaves": p.num_leaves,
            "min_child_samples": p.min_child_samples,
            "bagging_fraction": p.subsample,
            "bagging_freq": 1 if p.subsample < 1 else 0,
            "feature_fraction": p.colsample,
            "lambda_l2": p.reg_lambda,
            "seed": p.random_state,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        if p.num_threads:
            params["num_threads"] = p.num_threads
        if p.objective == "lambdarank":
            params["metric"] = "ndcg"
            params["eval_at"] = [10]
        else:
            params["metric"] = "binary_logloss"
        return params

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        feature_names: list[str],
        group: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> Self:
        """Boost trees on ``(N, F)`` features and ``(N,)`` binary labels.

        Args:
            X: ``(N, F)`` float features, columns in the order of ``feature_names``.
            y: ``(N,)`` labels in ``{0, 1}``.
            feature_names: ``F`` distinct column names.
            group: ``(N,)`` request key of each row; required by ``lambdarank`` (rows need
                not be contiguous), ignored by ``binary``.
            sample_weight: ``(N,)`` row weights. ``binary`` weights each row's log loss;
                ``lambdarank`` (whose LightGBM weights are per query) turns a weighted
                positive into the graded relevance ``clip(round(log2(1 + w)), 1, 30)``, so its
                NDCG gain ``2^rel - 1`` grows like the weight.
            targets: Ignored (a single-task ranker; see :class:`~.base.Ranker`).

        Raises:
            ValidationError: bad shapes, names, labels, NaN/inf features, or ``lambdarank``
                without ``group``.
            DataError: no rows, a single class, or non-finite predictions after training.
        """
        import lightgbm as lgb

        p = self.params
        where = "LightGBMRanker.fit"
        fit = check_fit_input(X, y, feature_names, group, sample_weight, where)
        names, X, y, group, weight = fit.names, fit.X, fit.y, fit.group, fit.weight
        if p.objective == "lambdarank":
            if group is None:
                raise ValidationError(
                    f"{where}: objective 'lambdarank' needs group (the request of each row)"
                )
            order = _group_order(group)
            X, y, group = X[order], y[order], group[order]
            label = y.astype(np.int64)
            if weight is not None:
                graded = np.clip(np.round(np.log2(1.0 + weight[order])), 1, 30)
                label = np.where(y == 1, graded, 0).astype(np.int64)
            weight = None
        else:
            label = y
        rounds = p.n_estimators
        if p.early_stopping_rounds is not None:
            rounds = self._early_stopped_rounds(X, label, weight, group, names)
        data = self._dataset(X, label, weight, group, names)
        booster = lgb.train(self._lgb_params(), data, num_boost_round=rounds)
        self.feature_names_, self.booster_, self.calibration_ = names, booster, None
        if p.objective == "lambdarank":
            raw = self._raw(X)
            platt = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
            self.calibration_ = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
        if not np.isfinite(self._raw(X[:1000])).all():
            raise DataError(f"{where}: non-finite predictions; lower learning_rate")
        return self

    def _dataset(
        self,
        X: np.ndarray,
        label: np.ndarray,
        weight: np.ndarray | None,
        group: np.ndarray | None,
        names: list[str],
    ) -> Any:
        """A LightGBM dataset; for lambdarank, ``group`` must already be contiguous."""
        import lightgbm as lgb

        sizes = None
        if self.params.objective == "lambdarank" and group is not None:
            starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
            sizes = np.diff(np.r_[starts, len(group)])
        return lgb.Dataset(
            X, label=label, weight=weight, group=sizes, feature_name=names, free_raw_data=True
        )

    def _early_stopped_rounds(
        self,
        X: np.ndarray,
        label: np.ndarray,
        weight: np.ndarray | None,
        group: np.ndarray | None,
        names: list[str],
    ) -> int:
        """Boosting rounds chosen on a held-out ``validation_fraction`` of the requests (of
        the rows when there are no groups): the best round of the holdout's weighted log loss
        (``binary``) or NDCG@10 (``lambdarank``), stopping after ``early_stopping_rounds``
        rounds without improvement; at most ``n_estimators``."""
        import lightgbm as lgb

        p = self.params
        rng = np.random.default_rng(p.random_state)
        keys = group if group is not None else np.arange(len(label))
        unique = np.unique(keys)
        held = rng.random(len(unique)) < p.validation_fraction
        holdout = np.isin(keys, unique[held])
        if holdout.all() or not holdout.any() or len(np.unique(label[~holdout])) < 2:
            return p.n_estimators  # too little data to hold any out

        def part(mask: np.ndarray) -> Any:
            sub_group = None if group is None else group[mask]
            sub_weight = None if weight is None else weight[mask]
            return self._dataset(X[mask], label[mask], sub_weight, sub_group, names)

        train, valid = part(~holdout), part(holdout)
        booster = lgb.train(
            self._lgb_params(),
            train,
            num_boost_round=p.n_estimators,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(p.early_stopping_rounds or 1, verbose=False)],
        )
        return max(1, int(booster.best_iteration or p.n_estimators))

    def _fitted(self) -> tuple[list[str], Any]:
        if self.feature_names_ is None or self.booster_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.feature_names_, self.booster_

    def _raw(self, X: np.ndarray) -> np.ndarray:
        _, booster = self._fitted()
        threads = 1 if len(X) < _SINGLE_THREAD_ROWS else 0
        return np.asarray(booster.predict(X, raw_score=True, num_threads=threads), dtype=np.float64)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 raw boosted scores (log-odds for ``binary``)."""
        names, _ = self._fitted()
        return self._raw(check_features(X, names, "LightGBMRanker"))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 probabilities (calibrated scores for ``lambdarank``).

        Raises:
            ValidationError: wrong number of columns, or NaN/inf (the message names columns).
        """
        raw = self.decision_function(X)
        if self.calibration_ is None:
            return expit(raw)
        a, b = self.calibration_
        return expit(a * raw + b)

    def feature_importance(self) -> dict[str, float]:
        """Feature name -> total split gain, largest first."""
        names, booster = self._fitted()
        gains = booster.feature_importance(importance_type="gain")
        order = np.argsort(-gains, kind="stable")
        return {names[j]: float(gains[j]) for j in order}

    def describe(self) -> str:
        """The objective, tree count and each feature's share of the total split gain."""
        _, booster = self._fitted()
        gains = self.feature_importance()
        total = sum(gains.values()) or 1.0
        lines = [f"LightGBM {self.params.objective}: {booster.num_trees()} trees"]
        if self.calibration_ is not None:
            a, b = self.calibration_
            lines.append(f"  calibration: p = sigmoid({a:.4f} * score + {b:+.4f})")
        lines += [f"  {gain / total:6.1%}  {name}" for name, gain in gains.items()]
        return "\n".join(lines)

    def _describe(self) -> tuple[dict[str, int], dict[str, Any]]:
        names, booster = self._fitted()
        return ranker_description(names, {"n_trees": int(booster.num_trees())})

    def _write_files(self, directory: Path) -> None:
        """Write ``model.txt`` (LightGBM's text format) and ``params.json``."""
        names, booster = self._fitted()
        payload = {
            "params": self.get_params(),
            "feature_names": names,
            "calibration": list(self.calibration_) if self.calibration_ else None,
        }
        write_ranker_files(
            directory, {_MODEL_FILE: booster.model_to_string(), _PARAMS_FILE: payload}
        )

    @classmethod
    def _read_files(cls, directory: Path, manifest: Manifest, build_command: str) -> Self:
        import lightgbm as lgb

        params_path = require_file(directory / _PARAMS_FILE, "LightGBM parameters", build_command)
        try:
            raw = json.loads(params_path.read_text(encoding="utf-8"))
            model = cls(**raw["params"])
            names = [str(n) for n in raw["feature_names"]]
            calibration = raw["calibration"]
            if calibration is not None:
                a, b = (float(v) for v in calibration)
                if not (np.isfinite(a) and np.isfinite(b)):
                    raise ValueError("non-finite calibration")
                calibration = (a, b)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, ValidationError) as exc:
            raise ArtifactError(
                params_path, f"corrupt LightGBM parameters ({exc})", build_command
            ) from exc
        path = require_file(directory / _MODEL_FILE, "LightGBM model", build_command)
        try:
            booster = lgb.Booster(model_str=path.read_text(encoding="utf-8"))
        except (lgb.basic.LightGBMError, ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(path, f"corrupt LightGBM model ({exc})", build_command) from exc
        if list(booster.feature_name()) != names:
            raise ArtifactError(
                path,
                f"corrupt LightGBM model: its features {booster.feature_name()} differ from "
                f"{_PARAMS_FILE}'s {names}",
                build_command,
            )
        model.feature_names_, model.booster_, model.calibration_ = names, booster, calibration
        return model
