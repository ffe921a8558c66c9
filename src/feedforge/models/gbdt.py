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
from typing import Any, ClassVar, Literal, Self

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from feedforge.artifacts import (
    read_manifest,
    require_file,
)
from feedforge.errors import ArtifactError, DataError, NotFittedError, ValidationError
from feedforge.models.base import Ranker
from feedforge.models.ranker_utils import (
    check_expected_features,
    check_features,
    check_fit_input,
    write_ranker,
)

TRAIN_COMMAND = "feedforge train"
_SCHEMA_VERSION = 1
_MODEL_FILE = "model.txt"
_PARAMS_FILE = "params.json"
# Below this many rows one thread predicts faster than a pool (serving scores a few hundred).
_SINGLE_THREAD_ROWS = 20_000

GBDTObjective = Literal["binary", "lambdarank"]


def _group_order(group: np.ndarray) -> np.ndarray:
    """A stable row order that makes each group's rows contiguous."""
    _, codes = np.unique(group, return_inverse=True)
    return np.argsort(codes, kind="stable")


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

    def __init__(
        self,
        objective: GBDTObjective = "binary",
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 100,
        subsample: float = 0.8,
        colsample: float = 0.9,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int | None = 30,
        validation_fraction: float = 0.2,
        num_threads: int = 0,
        random_state: int = 0,
    ) -> None:
        self.objective = objective
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample = colsample
        self.reg_lambda = reg_lambda
        self.num_threads = num_threads
        self.random_state = random_state
        self.feature_names_: list[str] | None = None
        self.booster_: Any = None
        self.calibration_: tuple[float, float] | None = None

    def get_params(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "subsample": self.subsample,
            "colsample": self.colsample,
            "reg_lambda": self.reg_lambda,
            "early_stopping_rounds": self.early_stopping_rounds,
            "validation_fraction": self.validation_fraction,
            "num_threads": self.num_threads,
            "random_state": self.random_state,
        }

    def _check_params(self) -> None:
        problems = []
        if self.objective not in ("binary", "lambdarank"):
            problems.append(f"objective must be 'binary' or 'lambdarank', got {self.objective!r}")
        for key, low in (("n_estimators", 1), ("num_leaves", 2), ("min_child_samples", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                problems.append(f"{key} must be an int >= {low}, got {value!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        for key in ("subsample", "colsample"):
            if not 0 < getattr(self, key) <= 1:
                problems.append(f"{key} must be in (0, 1], got {getattr(self, key)!r}")
        if self.early_stopping_rounds is not None and (
            isinstance(self.early_stopping_rounds, bool)
            or not isinstance(self.early_stopping_rounds, int | np.integer)
            or self.early_stopping_rounds < 1
        ):
            problems.append(
                "early_stopping_rounds must be an int >= 1 or None, "
                f"got {self.early_stopping_rounds!r}"
            )
        if not 0 < self.validation_fraction < 1:
            problems.append(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        if not self.reg_lambda >= 0:
            problems.append(f"reg_lambda must be >= 0, got {self.reg_lambda!r}")
        if problems:
            raise ValidationError("LightGBMRanker: " + "; ".join(problems))

    def _lgb_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": self.objective,
            "learning_rate": float(self.learning_rate),
            "num_leaves": int(self.num_leaves),
            "min_child_samples": int(self.min_child_samples),
            "bagging_fraction": float(self.subsample),
            "bagging_freq": 1 if self.subsample < 1 else 0,
            "feature_fraction": float(self.colsample),
            "lambda_l2": float(self.reg_lambda),
            "seed": int(self.random_state),
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        if self.num_threads:
            params["num_threads"] = int(self.num_threads)
        if self.objective == "lambdarank":
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
            ValidationError: bad hyper-parameters, shapes, names, labels, NaN/inf features,
                or ``lambdarank`` without ``group``.
            DataError: no rows, a single class, or non-finite predictions after training.
        """
        import lightgbm as lgb

        self._check_params()
        where = "LightGBMRanker.fit"
        fit = check_fit_input(X, y, feature_names, group, sample_weight, where)
        names, X, y, group, weight = fit.names, fit.X, fit.y, fit.group, fit.weight
        if self.objective == "lambdarank":
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
        rounds = int(self.n_estimators)
        if self.early_stopping_rounds is not None:
            rounds = self._early_stopped_rounds(X, label, weight, group, names)
        data = self._dataset(X, label, weight, group, names)
        booster = lgb.train(self._lgb_params(), data, num_boost_round=rounds)
        self.feature_names_, self.booster_, self.calibration_ = names, booster, None
        if self.objective == "lambdarank":
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
        if self.objective == "lambdarank" and group is not None:
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

        rng = np.random.default_rng(self.random_state)
        keys = group if group is not None else np.arange(len(label))
        unique = np.unique(keys)
        held = rng.random(len(unique)) < self.validation_fraction
        holdout = np.isin(keys, unique[held])
        if holdout.all() or not holdout.any() or len(np.unique(label[~holdout])) < 2:
            return int(self.n_estimators)  # too little data to hold any out

        def part(mask: np.ndarray) -> Any:
            sub_group = None if group is None else group[mask]
            sub_weight = None if weight is None else weight[mask]
            return self._dataset(X[mask], label[mask], sub_weight, sub_group, names)

        train, valid = part(~holdout), part(holdout)
        booster = lgb.train(
            self._lgb_params(),
            train,
            num_boost_round=int(self.n_estimators),
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(int(self.early_stopping_rounds or 1), verbose=False)],
        )
        return max(1, int(booster.best_iteration or self.n_estimators))

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
        lines = [f"LightGBM {self.objective}: {booster.num_trees()} trees"]
        if self.calibration_ is not None:
            a, b = self.calibration_
            lines.append(f"  calibration: p = sigmoid({a:.4f} * score + {b:+.4f})")
        lines += [f"  {gain / total:6.1%}  {name}" for name, gain in gains.items()]
        return "\n".join(lines)

    def save(self, directory: Path) -> None:
        """Write ``model.txt`` (LightGBM's text format), ``params.json`` and the manifest."""
        names, booster = self._fitted()
        directory = Path(directory)
        payload = {
            "params": self.get_params(),
            "feature_names": names,
            "calibration": list(self.calibration_) if self.calibration_ else None,
        }
        files = {_MODEL_FILE: booster.model_to_string(), _PARAMS_FILE: payload}
        counts = {"n_trees": int(booster.num_trees())}
        write_ranker(directory, self.name, _SCHEMA_VERSION, files, names, self.get_params(), counts)

    @classmethod
    def load(
        cls,
        directory: Path,
        build_command: str = TRAIN_COMMAND,
        expected_features: list[str] | None = None,
    ) -> Self:
        """Load a ranker written by :meth:`save` (no pickle).

        Raises:
            ArtifactError: the directory or a file is missing or corrupt, or the saved
                features differ from ``expected_features``.
        """
        import lightgbm as lgb

        directory = Path(directory)
        read_manifest(directory, f"model/{cls.name}", (_SCHEMA_VERSION,), build_command)
        params_path = require_file(directory / _PARAMS_FILE, "LightGBM parameters", build_command)
        try:
            raw = json.loads(params_path.read_text(encoding="utf-8"))
            model = cls(**raw["params"])
            model._check_params()
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
        check_expected_features(names, expected_features, path, build_command)
        model.feature_names_, model.booster_, model.calibration_ = names, booster, calibration
        return model
