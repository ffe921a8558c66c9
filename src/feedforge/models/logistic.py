"""The logistic-regression ranker: standardised features, one linear layer, a sigmoid.

Trained with scikit-learn (``StandardScaler`` + ``LogisticRegression``) but stored and applied
as plain numbers: ``p = sigmoid(((x - mean) / scale) . coef + intercept)``. The saved JSON is
the whole model, so a loaded ranker predicts exactly what the trained one did, without pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import Field
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from feedforge.artifacts import Manifest, require_file
from feedforge.errors import ArtifactError, NotFittedError
from feedforge.models.base import Ranker
from feedforge.models.params import ModelParams
from feedforge.models.ranker_utils import (
    check_features,
    check_fit_input,
    ranker_description,
    write_ranker_files,
)

_MODEL_FILE = "model.json"


class LogisticParams(ModelParams):
    """Hyper-parameters of :class:`LogisticRanker` (documented there)."""

    C: float = Field(1.0, gt=0, description="Inverse L2 strength of the logistic regression")
    max_iter: int = Field(500, ge=10)


class LogisticRanker(Ranker):
    """Logistic regression on standardised features.

    Args:
        C: Inverse L2 regularisation strength (scikit-learn's ``C``).
        max_iter: Iteration cap of the lbfgs solver.

    Attributes:
        feature_names_: The ``F`` feature names, in the column order of ``X``.
        mean_: ``(F,)`` float64 feature means of the training data.
        scale_: ``(F,)`` float64 feature standard deviations (1.0 for constant features).
        coef_: ``(F,)`` float64 weights on the standardised features.
        intercept_: The bias.
    """

    name: ClassVar[str] = "logistic"
    Params = LogisticParams
    params: LogisticParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.feature_names_: list[str] | None = None
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: float | None = None

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        feature_names: list[str],
        group: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> Self:
        """Learn from ``(N, F)`` features and ``(N,)`` binary labels.

        Args:
            X: ``(N, F)`` float features, columns in the order of ``feature_names``.
            y: ``(N,)`` labels in ``{0, 1}`` (bool accepted).
            feature_names: ``F`` distinct column names.
            group: ``(N,)`` request keys; a pointwise model ignores them.
            sample_weight: ``(N,)`` weights of the rows' log loss (None: all 1).
            targets: Ignored (a single-task ranker; see :class:`~.base.Ranker`).

        Raises:
            ValidationError: shapes disagree, names repeat, labels are not 0/1, or ``X`` holds
                NaN/inf (the message names the columns).
            DataError: there are no rows, or ``y`` has a single class.
        """
        fit = check_fit_input(X, y, feature_names, group, sample_weight, "LogisticRanker.fit")
        names, X, y, weight = fit.names, fit.X, fit.y, fit.weight
        scaler = StandardScaler().fit(X)
        p = self.params
        model = LogisticRegression(C=p.C, max_iter=p.max_iter, class_weight=None)
        model.fit(scaler.transform(X), y, sample_weight=weight)
        self.feature_names_ = names
        self.mean_ = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale_ = np.asarray(scaler.scale_, dtype=np.float64)
        self.coef_ = np.asarray(model.coef_, dtype=np.float64).reshape(-1)
        self.intercept_ = float(model.intercept_[0])
        return self

    def _fitted(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, float]:
        if (
            self.feature_names_ is None
            or self.mean_ is None
            or self.scale_ is None
            or self.coef_ is None
            or self.intercept_ is None
        ):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.feature_names_, self.mean_, self.scale_, self.coef_, self.intercept_

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 log-odds of the positive label for ``(N, F)`` features."""
        names, mean, scale, coef, intercept = self._fitted()
        X = check_features(X, names, "LogisticRanker")
        return ((X - mean) / scale) @ coef + intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 probabilities of the positive label for ``(N, F)`` features.

        Raises:
            ValidationError: wrong number of columns, or NaN/inf (the message names columns).
        """
        return expit(self.decision_function(X))

    def coefficients(self) -> dict[str, float]:
        """Feature name -> weight, in standardised units (log-odds per standard deviation)."""
        names, _, _, coef, _ = self._fitted()
        return {name: float(c) for name, c in zip(names, coef, strict=True)}

    def describe(self) -> str:
        """The intercept and each standardised coefficient, largest magnitude first."""
        names, mean, scale, coef, intercept = self._fitted()
        lines = [f"logistic regression: log-odds = {intercept:+.4f}"]
        for j in np.argsort(-np.abs(coef), kind="stable"):
            lines.append(f"  {coef[j]:+.4f} * ({names[j]} - {mean[j]:.4g}) / {scale[j]:.4g}")
        return "\n".join(lines)

    def _describe(self) -> tuple[dict[str, int], dict[str, Any]]:
        return ranker_description(self._fitted()[0], {})

    def _write_files(self, directory: Path) -> None:
        """Write ``model.json``: every parameter, as JSON numbers."""
        names, mean, scale, coef, intercept = self._fitted()
        # json writes floats with repr(), which round-trips float64 exactly.
        payload = {
            "feature_names": names,
            "mean": mean.tolist(),
            "scale": scale.tolist(),
            "coef": coef.tolist(),
            "intercept": intercept,
            "params": self.get_params(),
        }
        write_ranker_files(directory, {_MODEL_FILE: payload})

    @classmethod
    def _read_files(cls, directory: Path, manifest: Manifest, build_command: str) -> Self:
        path = require_file(directory / _MODEL_FILE, "logistic ranker parameters", build_command)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            params = raw["params"]
            names = [str(n) for n in raw["feature_names"]]
            arrays = [np.asarray(raw[k], dtype=np.float64) for k in ("mean", "scale", "coef")]
            intercept = float(raw["intercept"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                path, f"corrupt logistic ranker parameters ({exc})", build_command
            ) from exc
        model = cls._from_saved_params(params, path, build_command)
        if any(a.shape != (len(names),) or not np.isfinite(a).all() for a in arrays) or not (
            np.isfinite(intercept) and (arrays[1] > 0).all()
        ):
            raise ArtifactError(
                path,
                f"corrupt logistic ranker parameters: expected {len(names)} finite values each",
                build_command,
            )
        model.feature_names_ = names
        model.mean_, model.scale_, model.coef_ = arrays
        model.intercept_ = intercept
        return model
