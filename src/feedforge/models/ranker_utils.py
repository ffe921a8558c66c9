"""Input checks and artifact helpers shared by every ranker (:class:`~.base.Ranker`).

Every ranker validates its input here, so a bad call gets the same message whichever model is
configured: ``X`` must be a finite ``(N, F)`` matrix (the message names the offending feature
columns), labels are 0/1 with both classes present, and ``group`` (the request each row was
shown in) and the sample weights have one entry per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feedforge.errors import ArtifactError, DataError, ValidationError


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


def check_expected_features(
    saved: list[str], expected: list[str] | None, path: Path, build_command: str
) -> None:
    """ArtifactError listing the difference when ``expected`` is given and differs."""
    if expected is not None and list(expected) != list(saved):
        raise ArtifactError(path, feature_difference(saved, list(expected)), build_command)
