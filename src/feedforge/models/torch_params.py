"""The hyper-parameters of the torch models (two-tower, SASRec, DCN), apart from their code.

Every other model declares its parameters in its own module. These three live here because
their modules import torch: ``load_settings`` validates ``models.params.<name>`` against the
declaration (:func:`feedforge.models.registry.params_class`), and a configuration that merely
holds parameters for a torch model it does not use must not pay for importing torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from feedforge.errors import ConfigError
from feedforge.features.objectives import check_value
from feedforge.models.params import ModelParams

Device = Literal["auto", "cpu", "cuda"]
"""Where a torch model runs: ``auto`` picks CUDA when torch sees it."""
Pooling = Literal["mean", "attention"]
"""How the two-tower user tower pools the history."""


class TwoTowerParams(ModelParams):
    """Hyper-parameters of :class:`~feedforge.models.two_tower.TwoTowerRecommender`."""

    embedding_dim: int = Field(64, ge=1)
    history_len: int = Field(50, ge=1)
    pooling: Pooling = "mean"
    use_user_id: bool = False
    hidden_dim: int = Field(128, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    normalize: bool = True
    temperature: float = Field(0.05, gt=0)
    logq_correction: bool = True
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(512, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    device: Device = "auto"
    random_state: int = 0


class SASRecParams(ModelParams):
    """Hyper-parameters of :class:`~feedforge.models.sasrec.SASRecRecommender`."""

    embedding_dim: int = Field(64, ge=1)
    num_blocks: int = Field(2, ge=1)
    num_heads: int = Field(1, ge=1)
    max_len: int = Field(50, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(200, ge=0)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    negatives: Annotated[int, Field(ge=1)] | None = None
    patience: Annotated[int, Field(ge=0)] | None = 5
    validation_users: int = Field(4096, ge=1)
    device: Device = "auto"
    random_state: int = 0

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecParams:
        if self.embedding_dim % self.num_heads:
            raise ValueError("num_heads must divide embedding_dim")
        return self


class DCNParams(ModelParams):
    """Hyper-parameters of :class:`~feedforge.models.dcn.DCNRanker`."""

    value: dict[str, float] | None = None
    embedding_dim: int = Field(4, ge=1)
    cross_layers: int = Field(2, ge=0)
    cross_rank: int = Field(16, ge=1)
    hidden_units: int = Field(128, ge=1)
    hidden_layers: int = Field(2, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    batch_size: int = Field(512, ge=1)
    max_epochs: int = Field(40, ge=1)
    patience: int = Field(4, ge=0)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    device: Device = "auto"
    random_state: int = 0

    @field_validator("value")
    @classmethod
    def _known_outcomes(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            try:
                check_value(value, "DCNRanker value")
            except ConfigError as exc:  # pydantic reports ValueErrors, with the parameter
                raise ValueError(exc.message) from exc
        return value
