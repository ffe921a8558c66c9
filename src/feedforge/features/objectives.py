"""The business objective as numbers: what one impression is worth, and the labels that follow.

Every objective is a linear value over an impression's attributed outcomes (columns of the
``ranking_<split>`` files, :data:`OUTCOMES`):

* ``clicks``: ``clicked`` (1 per click);
* ``watch_time``: ``watch_seconds``;
* ``revenue``: ``revenue``;
* ``mix``: ``w_clicks * clicked + w_watch_minutes * watch_seconds / 60 + w_revenue * revenue``
  with the weights of ``objective_weights``.

:func:`objective_value` gives that value as ``{outcome column: value per unit}``; the rankers'
labels (:func:`ranking_target`), the deep ranker's score formula, the retrieval relevance
(:func:`positive_flags`) and the benchmarks' ground truth are all derived from it, so the
objective is defined once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from feedforge.config import ObjectiveWeights, Settings
from feedforge.errors import ConfigError

OUTCOMES: tuple[str, ...] = ("clicked", "watch_seconds", "purchased", "revenue")
"""Per-impression outcomes attributed from later events (see :mod:`feedforge.datasets.build`):
a click (0/1), the seconds watched, a purchase (0/1) and its revenue."""

VALUED_OUTCOMES: tuple[str, ...] = ("clicked", "watch_seconds", "revenue")
"""The outcomes an objective can put a value on."""

_FLAG: dict[str, str] = {"clicked": "click", "watch_seconds": "watch", "revenue": "purchase"}
"""The positive flag (of the ``positives_<split>`` files) of each valued outcome."""


def objective_value(objective: str, weights: ObjectiveWeights | None = None) -> dict[str, float]:
    """``{outcome column: value per unit}`` of a business objective (only non-zero entries).

    Args:
        objective: ``clicks``, ``watch_time``, ``revenue`` or ``mix``.
        weights: The ``mix`` weights (ignored by the other objectives).

    Raises:
        ConfigError: an unknown objective, or ``mix`` without a positive weight.
    """
    if objective == "clicks":
        return {"clicked": 1.0}
    if objective == "watch_time":
        return {"watch_seconds": 1.0}
    if objective == "revenue":
        return {"revenue": 1.0}
    if objective == "mix":
        w = weights or ObjectiveWeights()
        value = {
            "clicked": float(w.clicks),
            "watch_seconds": float(w.watch_minutes) / 60.0,
            "revenue": float(w.revenue),
        }
        value = {k: v for k, v in value.items() if v > 0}
        if not value:
            raise ConfigError("objective 'mix' needs at least one objective_weights entry above 0")
        return value
    raise ConfigError(f"unknown objective {objective!r}; known: clicks, watch_time, revenue, mix")


def settings_value(settings: Settings) -> dict[str, float]:
    """:func:`objective_value` of the configured objective."""
    return objective_value(settings.objective, settings.objective_weights)


def check_value(value: Mapping[str, float], where: str) -> dict[str, float]:
    """``value`` as a dict of valued outcomes with finite weights >= 0, one above 0.

    Raises:
        ConfigError: an unknown outcome or a bad weight.
    """
    out: dict[str, float] = {}
    for key, weight in value.items():
        if key not in VALUED_OUTCOMES:
            raise ConfigError(f"{where}: unknown outcome {key!r}; known: {list(VALUED_OUTCOMES)}")
        weight = float(weight)
        if not np.isfinite(weight) or weight < 0:
            raise ConfigError(f"{where}: the value of {key!r} must be finite and >= 0")
        if weight > 0:
            out[key] = weight
    if not out:
        raise ConfigError(f"{where}: the objective values no outcome (every weight is 0)")
    return out


def positive_flags(value: Mapping[str, float]) -> tuple[str, ...]:
    """The positive flags whose union is an objective's retrieval relevance (e.g. ``watch``)."""
    return tuple(_FLAG[key] for key in VALUED_OUTCOMES if value.get(key, 0.0) > 0)


def ranking_outcomes(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """``{outcome: (N,) float64}`` of a ranking frame's impressions (missing values are 0)."""
    return {
        name: frame.get_column(name).cast(pl.Float64).fill_null(0.0).to_numpy() for name in OUTCOMES
    }


def impression_value(outcomes: Mapping[str, np.ndarray], value: Mapping[str, float]) -> np.ndarray:
    """``(N,)`` float64 value of each impression: ``sum(value[k] * outcomes[k])``."""
    total: np.ndarray | None = None
    for key, weight in value.items():
        part = weight * np.asarray(outcomes[key], dtype=np.float64)
        total = part if total is None else total + part
    if total is None:
        raise ConfigError("the objective values no outcome")
    return total


def ranking_target(
    frame: pl.DataFrame, value: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The single-task rankers' label and sample weight of each impression.

    Value-weighted logistic regression (Covington et al., RecSys 2016, "Deep Neural Networks
    for YouTube Recommendations"): label ``value > 0``, a positive weighted by its value over
    the mean positive value, a negative by 1. The learned odds ``p / (1 - p)`` then estimate
    the impression's expected value (in units of the mean positive value) rather than the
    chance of any engagement, so ranking by ``p`` ranks by expected watch time, revenue or mix.
    For ``clicks`` (value = the click) this is the plain click label with weight 1.

    Returns:
        ``(N,)`` int8 labels and ``(N,)`` float64 weights (all > 0 when any value is).
    """
    columns = {
        key: frame.get_column(key).cast(pl.Float64).fill_null(0.0).to_numpy() for key in value
    }
    worth = impression_value(columns, value)
    y = (worth > 0).astype(np.int8)
    mean = worth[y == 1].mean() if y.any() else 1.0
    return y, np.where(y == 1, worth / mean, 1.0)
