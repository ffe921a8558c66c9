"""The deep multi-task ranker beyond the shared contract: its heads learn their outcomes, the
score follows the objective's formula, and bad targets or devices are refused clearly."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from feedforge.config import ModelsConfig, ObjectiveWeights
from feedforge.errors import DataError, ValidationError
from feedforge.features.objectives import objective_value
from feedforge.models.dcn import DCNRanker
from feedforge.models.dcn_net import fit_calibration
from feedforge.models.registry import create_ranker, load_ranker

INPUTS = {"dataset": "test-dataset"}  # the lineage every saved model records

NAMES = ["appeal", "length", "price"]


def world(n: int = 8000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Clicks follow ``appeal``; watch seconds given a click follow ``length`` (mean 100 s
    or 400 s); priced items (``price`` > 0) are bought after 30 % of clicks, for the price."""
    rng = np.random.default_rng(seed)
    appeal = rng.normal(0, 1, n)
    long = rng.random(n) < 0.5
    price = np.where(rng.random(n) < 0.3, rng.choice([2.0, 8.0], n), 0.0)
    X = np.column_stack([appeal, long.astype(float), price])
    click = (rng.random(n) < 1 / (1 + np.exp(-(appeal - 1.0)))).astype(np.int8)
    watch = np.where(click == 1, rng.exponential(np.where(long, 400.0, 100.0)), 0.0)
    bought = (click == 1) & (price > 0) & (rng.random(n) < 0.3)
    targets = {
        "watch_seconds": watch,
        "purchased": bought.astype(float),
        "revenue": np.where(bought, price, 0.0),
    }
    return X, click, targets


def fit(value: dict[str, float] | None, **params: object) -> DCNRanker:
    X, y, targets = world()
    ranker = DCNRanker(value=value, max_epochs=25, device="cpu", **params)  # type: ignore[arg-type]
    return ranker.fit(X, y, NAMES, targets=targets)


@pytest.fixture(scope="module")
def watch_ranker() -> DCNRanker:
    return fit(objective_value("watch_time"))


def test_heads_learn_their_outcomes(watch_ranker: DCNRanker) -> None:
    X, y, targets = world(seed=1)
    heads = watch_ranker.predict_heads(X)
    assert watch_ranker.heads_ == ["click", "watch", "purchase", "revenue"]
    assert abs(heads["p_click"].mean() - y.mean()) < 0.02
    long = X[:, 1] == 1
    watch_given_click = heads["watch_seconds_given_click"]
    # E[watch | click] is about 400 s for long items and 100 s for short ones.
    assert 300 < watch_given_click[long].mean() < 500
    assert 70 < watch_given_click[~long].mean() < 140
    assert abs(heads["p_purchase"].mean() - targets["purchased"].mean()) < 0.01
    priced = X[:, 2] > 0
    assert heads["p_purchase"][~priced].mean() < 0.2 * heads["p_purchase"][priced].mean()
    ratio = heads["expected_revenue"].sum() / targets["revenue"].sum()
    assert 0.7 < ratio < 1.3


def test_score_is_the_objectives_expected_value(watch_ranker: DCNRanker) -> None:
    X, _, _ = world(n=500, seed=2)
    heads = watch_ranker.predict_heads(X)
    np.testing.assert_allclose(
        watch_ranker.score(X), heads["p_click"] * heads["watch_seconds_given_click"], rtol=1e-5
    )
    np.testing.assert_allclose(heads["expected_watch_seconds"], watch_ranker.score(X), rtol=1e-5)
    assert "score = 1 x p(click) x E[watch_seconds | click]" in watch_ranker.describe()
    # The same trained heads under another formula: a mix weighs the expectations.
    mix = objective_value("mix", ObjectiveWeights(clicks=2.0, watch_minutes=1.0, revenue=5.0))
    watch_ranker_mix = copy.copy(watch_ranker)  # the formula is read when scoring
    watch_ranker_mix.set_params(value=mix)
    expected = (
        2.0 * heads["p_click"]
        + heads["expected_watch_seconds"] / 60.0
        + 5.0 * heads["expected_revenue"]
    )
    np.testing.assert_allclose(watch_ranker_mix.score(X), expected, rtol=1e-5)


def test_objective_changes_the_order() -> None:
    X, _, _ = world(n=2000, seed=3)
    clicks = fit(objective_value("clicks"))
    watch = fit(objective_value("watch_time"))
    revenue = fit(objective_value("revenue"))
    top = {
        name: set(np.argsort(-r.score(X))[:200])
        for name, r in (("clicks", clicks), ("watch", watch), ("revenue", revenue))
    }
    # Watch time prefers long items, revenue priced ones, more than clicks does.
    assert X[list(top["watch"]), 1].mean() > X[list(top["clicks"]), 1].mean() + 0.1
    assert (X[list(top["revenue"]), 2] > 0).mean() > (X[list(top["clicks"]), 2] > 0).mean() + 0.2


def test_save_load_keeps_heads_and_scores(watch_ranker: DCNRanker, tmp_path: Path) -> None:
    watch_ranker.save(tmp_path / "dcn", inputs=INPUTS)
    loaded = load_ranker("dcn", tmp_path / "dcn", expected_features=NAMES)
    X, _, _ = world(n=300, seed=4)
    np.testing.assert_allclose(loaded.score(X), watch_ranker.score(X), rtol=0, atol=1e-9)
    assert loaded.heads_ == watch_ranker.heads_  # type: ignore[attr-defined]
    for name, values in watch_ranker.predict_heads(X).items():
        np.testing.assert_allclose(loaded.predict_heads(X)[name], values, atol=1e-9)


def test_targets_the_objective_needs_are_required() -> None:
    X, y, targets = world(n=1000)
    ranker = DCNRanker(value=objective_value("watch_time"), max_epochs=2)
    with pytest.raises(ValidationError, match="no 'watch_seconds'"):
        ranker.fit(X, y, NAMES)
    with pytest.raises(ValidationError, match="1000 rows of X but 10 watch_seconds"):
        ranker.fit(X, y, NAMES, targets={"watch_seconds": targets["watch_seconds"][:10]})
    with pytest.raises(ValidationError, match="finite and >= 0"):
        ranker.fit(X, y, NAMES, targets={"watch_seconds": -targets["watch_seconds"]})
    with pytest.raises(ValidationError, match="purchased targets must be 0 or 1"):
        ranker.fit(X, y, NAMES, targets={**targets, "purchased": 2 * targets["purchased"]})
    no_sales = {**targets, "purchased": 0 * targets["purchased"], "revenue": 0 * y}
    with pytest.raises(DataError, match="no training impression has any purchased"):
        DCNRanker(value=objective_value("revenue")).fit(X, y, NAMES, targets=no_sales)
    with pytest.raises(ValidationError, match="unknown outcome"):
        DCNRanker(value={"likes": 1.0}).fit(X, y, NAMES, targets=targets)
    with pytest.raises(ValidationError, match="device must be"):
        DCNRanker(device="tpu").fit(X, y, NAMES)


def test_registry_gives_the_objective_to_multi_task_rankers_only() -> None:
    value = objective_value("revenue")
    config = ModelsConfig(params={"dcn": {"hidden_units": 32}})
    ranker = create_ranker("dcn", config, value=value)
    assert isinstance(ranker, DCNRanker)
    assert ranker.params.value == value and ranker.params.hidden_units == 32
    assert "value" not in create_ranker("lightgbm", config, value=value).get_params()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_forced_cuda_without_a_gpu_is_refused(watch_ranker: DCNRanker) -> None:
    with pytest.raises(ValidationError, match="no CUDA device"):
        watch_ranker.use_device("cuda")
    watch_ranker.use_device("auto")  # falls back to the CPU
    X, _, _ = world(n=10)
    assert watch_ranker.score(X).shape == (10,)


def test_calibration_corrects_a_biased_head(watch_ranker: DCNRanker) -> None:
    X, y, targets = world(seed=5)
    biased = copy.deepcopy(watch_ranker)
    net = biased.net_
    assert net is not None
    with torch.no_grad():  # every click logit 1 too high, every watch 2x too long
        net.heads.bias += torch.tensor([1.0, float(np.log(2.0)), 0.0, 0.0])
    assert biased.predict_proba(X).mean() > 1.5 * y.mean()
    scale = float(net.target_scale[0])
    columns = {
        "click": torch.tensor(y, dtype=torch.float32),
        "watch": torch.tensor(targets["watch_seconds"] / scale, dtype=torch.float32),
    }
    applied = fit_calibration(
        net, torch.tensor(X, dtype=torch.float32), columns, torch.ones(len(y))
    )
    assert applied["click"][0] > 0 and applied["watch"][1] < 0
    heads = biased.predict_heads(X)
    assert abs(heads["p_click"].mean() - y.mean()) < 0.005
    ratio = heads["expected_watch_seconds"].sum() / targets["watch_seconds"].sum()
    assert abs(ratio - 1.0) < 0.01
    assert applied["purchase"] == [1.0, 0.0]  # no purchases given: left as trained


def test_scoring_an_objective_without_its_heads_is_refused() -> None:
    X, y, _ = world(n=2000)
    ranker = DCNRanker(max_epochs=2, device="cpu").fit(X, y, NAMES)  # clicks only
    assert ranker.heads_ == ["click"]
    assert ranker.score(X[:5]).shape == (5,)  # p(click)
    ranker.set_params(value=objective_value("watch_time"))
    with pytest.raises(ValidationError, match=r"needs the heads \['watch'\]"):
        ranker.score(X[:5])
