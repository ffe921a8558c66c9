"""The objective as one value definition: labels, weights, relevance flags and config checks."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from feedforge.config import ObjectiveWeights, load_settings
from feedforge.errors import ConfigError
from feedforge.features.objectives import (
    check_value,
    impression_value,
    objective_value,
    positive_flags,
    ranking_outcomes,
    ranking_target,
    settings_value,
)

FRAME = pl.DataFrame(
    {
        "clicked": [True, True, False, True],
        "watch_seconds": [600.0, 0.0, 0.0, 1800.0],
        "purchased": [False, True, False, False],
        "revenue": [0.0, 4.99, 0.0, 0.0],
    }
)


def test_ranking_target_per_objective() -> None:
    y, w = ranking_target(FRAME, objective_value("clicks"))
    assert y.tolist() == [1, 1, 0, 1] and w.tolist() == [1.0] * 4
    # watch_time: positives weighted by watch seconds over the mean positive value
    y, w = ranking_target(FRAME, objective_value("watch_time"))
    assert y.tolist() == [1, 0, 0, 1]
    np.testing.assert_allclose(w, [0.5, 1.0, 1.0, 1.5])
    y, w = ranking_target(FRAME, objective_value("revenue"))
    assert y.tolist() == [0, 1, 0, 0] and w.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_mix_values_every_weighted_outcome() -> None:
    weights = ObjectiveWeights(clicks=1.0, watch_minutes=0.1, revenue=2.0)
    value = objective_value("mix", weights)
    assert value == pytest.approx({"clicked": 1.0, "watch_seconds": 0.1 / 60, "revenue": 2.0})
    worth = impression_value(ranking_outcomes(FRAME), value)
    # 1 click + 10 min * 0.1; 1 click + 2 * 4.99; nothing; 1 click + 30 min * 0.1
    np.testing.assert_allclose(worth, [2.0, 10.98, 0.0, 4.0])
    y, w = ranking_target(FRAME, value)
    assert y.tolist() == [1, 1, 0, 1]
    mean = np.mean([2.0, 10.98, 4.0])  # positives by value over the mean; negatives weigh 1
    np.testing.assert_allclose(w, [2.0 / mean, 10.98 / mean, 1.0, 4.0 / mean])
    assert positive_flags(value) == ("click", "watch", "purchase")
    # A weight of 0 drops the outcome.
    only = objective_value("mix", ObjectiveWeights(watch_minutes=1.0))
    assert only == {"watch_seconds": pytest.approx(1 / 60)}
    assert positive_flags(only) == ("watch",)


def test_objective_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="needs at least one objective_weights"):
        load_settings(objective="mix")
    settings = load_settings(objective="mix", objective_weights={"revenue": 3.0})
    assert settings_value(settings) == {"revenue": 3.0}
    with pytest.raises(ConfigError, match="objective_weights"):
        load_settings(objective_weights={"revenue": -1.0})
    with pytest.raises(ConfigError, match="unknown objective"):
        objective_value("likes")
    with pytest.raises(ConfigError, match="unknown outcome 'liked'"):
        check_value({"liked": 1.0}, "test")
    with pytest.raises(ConfigError, match="every weight is 0"):
        check_value({"clicked": 0.0}, "test")
    assert positive_flags(objective_value("watch_time")) == ("watch",)
