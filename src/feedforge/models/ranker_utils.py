"""Input checks and artifact helpers shared by every ranker (:class:`~.base.Ranker`).

Every ranker validates its input here, so a bad call gets the same message whichever model is
configured: ``X`` must be a finite ``(N, F)`` matrix (the message names the offending feature
columns), labels are 0/1 with both classes present, and ``group`` (the request each row was
shown in) and the sample weights have one entry per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feedforge.artifacts import write_json_atomic
from feedforge.errors import DataError, ValidationError


def check_feature_names(feature_names: list[str], where: str) -> list[str]:
    """The names as strings; ValidationError when one repeats."""
    names = [str(name) for name in feature_names]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValidationError(f"{where}: repeated feature names {repeated}")
    return names


def check_features(X: np.ndarray, feature_names: list[str], where: str) -> np.ndarray:
    """``X`` as a ``(N, F)`` float64 array, or ValidationError naming the bad columns."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValidationError(f"{where}: X must be 2-D (N, F), got shape {X.shape}")
    if X.shape[1] != len(feature_names):
        raise ValidationError(
            f"{where}: X has {X.shape[1]} columns but there are {len(feature_names)} features"
        )
    bad = ~np.isfinite(X).all(axis=0)
    if bad.any():
        names = [name for name, is_bad in zip(feature_names, bad, strict=True) if is_bad]
        raise ValidationError(f"{where}: NaN or infinite values in feature columns {names}")
    return X


def check_labels(y: np.ndarray, n_rows: int, where: str) -> np.ndarray:
    """``(N,)`` int64 labels in ``{0, 1}`` with both classes present.

    Raises:
        ValidationError: wrong length or a label other than 0/1.
        DataError: no rows, or a single class.
    """
    y = np.asarray(y).reshape(-1)
    if len(y) != n_rows:
        raise ValidationError(f"{where}: {n_rows} rows of X but {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{where}: no training rows")
    if not np.isin(y, (0, 1)).all():
        raise ValidationError(f"{where}: labels must be 0 or 1")
    y = y.astype(np.int64)
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(
            f"{where}: every label is {int(classes[0])}; a ranker needs both positive and "
            "negative examples (check the label definition and the split)"
        )
    return y


def check_group(group: np.ndarray | None, n_rows: int, where: str) -> np.ndarray | None:
    """``(N,)`` request keys (any hashable dtype) or None; ValidationError on a length mismatch."""
    if group is None:
        return None
    group = np.asarray(group).reshape(-1)
    if len(group) != n_rows:
        raise ValidationError(f"{where}: {n_rows} rows of X but {len(group)} group keys")
    return group


def check_weight(weight: np.ndarray | None, n_rows: int, where: str) -> np.ndarray | None:
    """``(N,)`` float64 sample weights or None; ValidationError unless finite, >= 0 and not
    all 0."""
    if weight is None:
        return None
    weight = np.asarray(weight, dtype=np.float64).reshape(-1)
    if len(weight) != n_rows:
        raise ValidationError(f"{where}: {n_rows} rows of X but {len(weight)} sample weights")
    if not (np.isfinite(weight).all() and (weight >= 0).all() and weight.sum() > 0):
        raise ValidationError(f"{where}: sample weights must be finite, >= 0 and not all 0")
    return weight


def feature_difference(saved: list[str], expected: list[str]) -> str:
    """The message refusing a ranker trained on other features than the configured ones."""
    missing = [name for name in expected if name not in saved]
    extra = [name for name in saved if name not in expected]
    if not missing and not extra:
        return (
            "the ranker was trained with the expected features in another order or with repeats "
            f"(saved {saved}, expected {list(expected)})"
        )
    return (
        "the ranker's features differ from the expected ones: "
        f"missing from the model {missing}, extra in the model {extra}"
    )


@dataclass(frozen=True)
class FitInput:
    """The checked arguments of a ranker's ``fit``."""

    names: list[str]
    X: np.ndarray  # (N, F) float64
    y: np.ndarray  # (N,) int64 in {0, 1}, both present
    group: np.ndarray | None  # (N,)
    weight: np.ndarray | None  # (N,) float64 >= 0


def check_fit_input(
    X: np.ndarray,
    y: np.ndarray,
    feature_names: list[str],
    group: np.ndarray | None,
    sample_weight: np.ndarray | None,
    where: str,
) -> FitInput:
    """Every check of a ranker's ``fit`` arguments, in one place (see the module docs).

    Raises:
        ValidationError: repeated names, a bad shape, NaN/inf features (named), labels other
            than 0/1, or mismatched or invalid groups or weights.
        DataError: no rows, or a single class.
    """
    names = check_feature_names(feature_names, where)
    X = check_features(X, names, where)
    y = check_labels(y, X.shape[0], where)
    return FitInput(
        names,
        X,
        y,
        check_group(group, X.shape[0], where),
        check_weight(sample_weight, X.shape[0], where),
    )


def write_ranker_files(directory: Path, files: dict[str, str | dict[str, Any]]) -> None:
    """Write a ranker's files into ``directory``: text as is, a dict as JSON, each through a
    temporary file and a rename (the manifest is :meth:`~.base.Model.save`'s)."""
    for filename, content in files.items():
        if isinstance(content, dict):
            write_json_atomic(directory / filename, content)
        else:
            tmp = directory / f".{filename}.tmp"
            tmp.write_text(content, encoding="utf-8")
            tmp.replace(directory / filename)


def ranker_description(
    names: list[str], counts: dict[str, int]
) -> tuple[dict[str, int], dict[str, Any]]:
    """A ranker's manifest ``counts`` and ``extra``: its feature count and names first."""
    return {"n_features": len(names), **counts}, {"feature_names": names}
