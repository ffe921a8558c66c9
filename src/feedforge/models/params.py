"""Typed hyper-parameters: every model declares its own as a :class:`ModelParams` subclass.

One declaration per model, next to its code (scikit-learn's ``_get_param_names`` with
pydantic): the constructor validates against it, :meth:`~feedforge.models.base.Model.get_params`
and the saved ``params.json`` are its dump, and ``load_settings`` checks
``models.params.<name>`` against it. The checks are strict, as the hand-written ones were: an
``int`` parameter refuses ``True`` and ``2.0``, a ``bool`` refuses ``"yes"``, floats must be
finite and unknown names are refused.

Example::

    class ALSParams(ModelParams):
        factors: int = Field(64, ge=1)

    ALSParams.parse({"factors": 0}, "ALSRecommender")
    # ValidationError: ALSRecommender: factors must be greater than or equal to 1, got 0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, model_validator

from feedforge.errors import ValidationError

_SHOULD_BE = "Input should be "
_VALUE_ERROR = "Value error, "


class ModelParams(BaseModel):
    """Base of every model's hyper-parameters: frozen, strict, finite, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numpy_scalars_to_python(cls, data: Any) -> Any:
        # Strict mode refuses numpy scalars (np.int64 is no int); a value read from an array,
        # e.g. in a parameter sweep, is still a legitimate parameter.
        if isinstance(data, Mapping):
            return {k: v.item() if isinstance(v, np.generic) else v for k, v in data.items()}
        return data

    @classmethod
    def parse(cls, raw: Mapping[str, Any], owner: str) -> Self:
        """Validate ``raw`` keyword arguments.

        Args:
            raw: Parameter name -> value; missing names take their defaults.
            owner: Prefix of the error message, e.g. the model's class name.

        Raises:
            feedforge.errors.ValidationError: one message listing every bad or unknown
                parameter by name, e.g. ``"factors must be greater than 0, got 0"``.
        """
        try:
            return cls.model_validate(dict(raw))
        except pydantic.ValidationError as exc:
            raise ValidationError(f"{owner}: " + "; ".join(describe_errors(exc))) from None


def describe_errors(exc: pydantic.ValidationError, prefix: str = "") -> list[str]:
    """One ``"<name> must be ..., got <value>"`` line per problem of a params validation.

    pydantic words its messages for a generic input ("Input should be greater than 0"); a
    hyper-parameter error should name the parameter and the value it got.

    Args:
        exc: The validation error of a :class:`ModelParams` class.
        prefix: Put before each parameter name, e.g. ``"models.params.als."``.
    """
    lines = []
    for error in exc.errors():
        key = prefix + ".".join(str(part) for part in error["loc"])
        message = str(error["msg"])
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown parameter {key!r}")
        elif message.startswith(_SHOULD_BE):
            lines.append(f"{key} must be {message[len(_SHOULD_BE) :]}, got {error['input']!r}")
        else:
            message = message.removeprefix(_VALUE_ERROR)
            lines.append(f"{key}: {message}" if error["loc"] else f"{prefix}{message}")
    return lines
