"""Typed hyper-parameters: one declaration per model, strict checks, messages naming the key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from feedforge.errors import ValidationError
from feedforge.models.als import ALSRecommender
from feedforge.models.registry import RANKERS, RECOMMENDERS, model_class

ALL = pytest.mark.parametrize("name", sorted([*RECOMMENDERS, *RANKERS]))

# The defaults every benchmark number was produced with; a change here changes the numbers.
DEFAULTS: dict[str, dict[str, Any]] = {
    "popularity": {"window_days": 7.0},
    "als": {"factors": 64, "regularization": 0.05, "iterations": 15, "alpha": 10.0,
            "random_state": 0},
    "ease": {"l2": 500.0, "implicit": True, "max_items": 20000},
    "rp3beta": {"alpha": 1.0, "beta": 0.5, "neighbors": 200},
    "multvae": {"hidden_dim": 600, "latent_dim": 200, "dropout": 0.5, "beta_max": 0.2,
                "anneal_steps": 20000, "epochs": 100, "batch_size": 500, "learning_rate": 0.001,
                "weight_decay": 0.0, "device": "auto", "random_state": 0},
    "bpr": {"factors": 64, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100,
            "random_state": 0, "num_threads": 1},
    "two_tower": {"embedding_dim": 64, "history_len": 50, "pooling": "mean",
                  "use_user_id": False, "hidden_dim": 128, "dropout": 0.1, "normalize": True,
                  "temperature": 0.05, "logq_correction": True, "epochs": 20,
                  "batch_size": 512, "learning_rate": 0.001, "weight_decay": 0.0,
                  "device": "auto", "random_state": 0},
    "sasrec": {"embedding_dim": 64, "num_blocks": 2, "num_heads": 1, "max_len": 50,
               "dropout": 0.2, "epochs": 200, "batch_size": 128, "learning_rate": 0.003,
               "weight_decay": 0.0, "negatives": None, "patience": 5, "validation_users": 4096,
               "device": "auto", "random_state": 0},
    "logistic": {"C": 1.0, "max_iter": 500},
    "tree": {"max_depth": 5, "min_samples_leaf": 200, "random_state": 0},
    "lightgbm": {"objective": "binary", "n_estimators": 300, "learning_rate": 0.05,
                 "num_leaves": 31, "min_child_samples": 100, "subsample": 0.8,
                 "colsample": 0.9, "reg_lambda": 1.0, "early_stopping_rounds": 30,
                 "validation_fraction": 0.2, "num_threads": 0, "random_state": 0},
    "dcn": {"value": None, "embedding_dim": 4, "cross_layers": 2, "cross_rank": 16,
            "hidden_units": 128, "hidden_layers": 2, "dropout": 0.1, "learning_rate": 0.002,
            "weight_decay": 1e-05, "batch_size": 512, "max_epochs": 40, "patience": 4,
            "validation_fraction": 0.1, "device": "auto", "random_state": 0},
}  # fmt: skip


@ALL
def test_get_params_is_the_declaration_with_its_defaults(name: str) -> None:
    cls = model_class(name)
    model = cls()
    assert model.get_params() == DEFAULTS[name]
    assert list(model.get_params()) == list(DEFAULTS[name])  # declaration order, as saved
    assert model.get_params() == cls.Params().model_dump(mode="json")
    assert isinstance(model.params, cls.Params)


@ALL
def test_unknown_parameters_are_refused_by_name(name: str) -> None:
    cls = model_class(name)
    with pytest.raises(ValidationError, match=rf"{cls.__name__}: unknown parameter 'bogus'"):
        cls(bogus=1)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"factors": True}, r"factors must be a valid integer, got True"),
        ({"factors": 2.0}, r"factors must be a valid integer, got 2\.0"),
        ({"alpha": float("inf")}, r"alpha must be a finite number, got inf"),
        ({"alpha": 0}, r"alpha must be greater than 0, got 0"),
        ({"factors": 0, "iterations": 0}, r"factors must be .* 1, got 0; iterations must"),
    ],
)
def test_checks_are_strict_and_name_the_parameter(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        ALSRecommender(**params)


def test_numpy_scalars_are_accepted_as_python_numbers() -> None:
    model = ALSRecommender(factors=np.int64(8), alpha=np.float32(2.0))
    assert model.get_params()["factors"] == 8 and type(model.params.factors) is int


def test_set_params_validates_and_keeps_the_rest() -> None:
    model = ALSRecommender(factors=8)
    assert model.set_params(alpha=3.0) is model
    assert model.params.alpha == 3.0 and model.params.factors == 8
    with pytest.raises(ValidationError, match="alpha"):
        model.set_params(alpha=-1.0)
    assert model.params.alpha == 3.0  # a refused change changes nothing


def test_params_are_frozen() -> None:
    model = ALSRecommender()
    with pytest.raises(Exception, match="frozen"):
        model.params.factors = 3  # type: ignore[misc]
