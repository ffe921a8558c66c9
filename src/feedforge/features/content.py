"""Item attributes and the content map: catalog attributes -> a retrieval embedding.

:func:`encode_attributes` turns catalog rows into a fixed attribute vector: the categories
multi-hot over a vocabulary, then ``log1p`` of the duration, of the price and of the age in
days, each standardised with given means and standard deviations (0, the mean, where
unknown). :class:`ContentMap` is a fitted linear map from those attributes to an embedding
(the publisher fits it by ridge regression on the items the retrieval model learned,
:mod:`feedforge.publish.coldstart`) with the vocabulary and scaling it was fitted with, so
the service maps an item posted after the publish exactly as the publish mapped the cold
items of the catalog. It is saved as JSON in the version's bundle (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from feedforge.errors import ArtifactError, ValidationError

NUMERIC_ATTRIBUTES = ("duration", "price", "age")
CONTENT_MAP_FILE = "content_map.json"


def _numeric(items: pl.DataFrame, snapshot_time: datetime) -> np.ndarray:
    for name in ("item_id", "categories", "created_at", "duration_seconds", "price"):
        if name not in items.columns:
            raise ValidationError(f"item catalog: missing column {name!r}")
    age_days = ((pl.lit(snapshot_time) - pl.col("created_at")).dt.total_seconds() / 86_400.0).clip(
        lower_bound=0.0
    )
    frame = items.select(
        pl.col("duration_seconds").cast(pl.Float64).clip(lower_bound=0.0).log1p(),
        pl.col("price").cast(pl.Float64).clip(lower_bound=0.0).log1p(),
        age_days.log1p().alias("age"),
    )
    return np.asarray(frame.to_numpy(), dtype=np.float64).reshape(items.height, 3)


def attribute_scaling(
    items: pl.DataFrame, snapshot_time: datetime
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The category vocabulary (sorted) and the numeric attributes' means and standard
    deviations (1 where constant, 0 and 1 where never known) over ``items``."""
    numeric = _numeric(items, snapshot_time)
    mean, std = np.zeros(3), np.ones(3)
    for j in range(3):
        column = numeric[:, j]
        known = np.isfinite(column)
        if known.any():
            mean[j] = column[known].mean()
            spread = column[known].std()
            std[j] = spread if spread > 0 else 1.0
    categories = items.get_column("categories").explode(empty_as_null=False).drop_nulls()
    return sorted(set(categories.to_list())), mean, std


def encode_attributes(
    items: pl.DataFrame,
    snapshot_time: datetime,
    vocabulary: Sequence[str],
    mean: np.ndarray,
    std: np.ndarray,
) -> np.ndarray:
    """``(n_items, len(vocabulary) + 3)`` float32 attributes of catalog rows, in their order
    (see the module docs); categories outside ``vocabulary`` are ignored."""
    n = items.height
    multi_hot = np.zeros((n, len(vocabulary)), dtype=np.float32)
    lookup = pl.DataFrame(
        {"categories": list(vocabulary), "_col": np.arange(len(vocabulary), dtype=np.int64)},
        schema={"categories": pl.String, "_col": pl.Int64},
    )
    pairs = (
        items.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"), "categories")
        .explode("categories", empty_as_null=False, keep_nulls=False)
        .join(lookup, on="categories", how="inner")
    )
    if pairs.height:
        multi_hot[pairs.get_column("_row").to_numpy(), pairs.get_column("_col").to_numpy()] = 1.0
    numeric = _numeric(items, snapshot_time)
    known = np.isfinite(numeric)
    scaled = np.where(known, (numeric - mean) / std, 0.0)
    return np.hstack([multi_hot, scaled.astype(np.float32)])


@dataclass(frozen=True)
class ContentMap:
    """A fitted attributes -> embedding map (see the module docs).

    Attributes:
        vocabulary: The categories of the multi-hot part, in column order.
        mean: ``(3,)`` means of the numeric attributes (duration, price, age).
        std: ``(3,)`` their standard deviations.
        coef: ``(D, len(vocabulary) + 3)`` the linear map.
        intercept: ``(D,)``.
        r2: The fit's R^2 on the items it was fitted on.
    """

    vocabulary: list[str]
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    r2: float

    def vectors(self, items: pl.DataFrame, now: datetime) -> np.ndarray:
        """``(n_items, D)`` float32 embeddings of catalog rows, their ages taken at ``now``."""
        x = encode_attributes(items, now, self.vocabulary, self.mean, self.std)
        return (x @ self.coef.T + self.intercept).astype(np.float32)

    def unknown_categories(self, categories: Sequence[str]) -> list[str]:
        """The categories of ``categories`` the map was not fitted with."""
        known = set(self.vocabulary)
        return [c for c in categories if c not in known]

    def save(self, path: Path) -> None:
        body = {
            "vocabulary": self.vocabulary,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "r2": self.r2,
        }
        path.write_text(json.dumps(body), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, build_command: str) -> ContentMap:
        """Read a saved map.

        Raises:
            ArtifactError: the file is missing or malformed.
        """
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            coef = np.asarray(body["coef"], dtype=np.float64)
            out = cls(
                vocabulary=[str(c) for c in body["vocabulary"]],
                mean=np.asarray(body["mean"], dtype=np.float64),
                std=np.asarray(body["std"], dtype=np.float64),
                coef=coef,
                intercept=np.asarray(body["intercept"], dtype=np.float64),
                r2=float(body["r2"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(path, f"unreadable content map ({exc})", build_command) from exc
        width = len(out.vocabulary) + len(NUMERIC_ATTRIBUTES)
        if coef.ndim != 2 or coef.shape[1] != width or out.intercept.shape != (coef.shape[0],):
            raise ArtifactError(
                path, f"content map of shape {coef.shape} for {width} attributes", build_command
            )
        return out
