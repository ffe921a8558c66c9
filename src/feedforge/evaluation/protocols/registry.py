"""The registered protocols by name, and :func:`build_protocol` to apply one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from feedforge.errors import ConfigError
from feedforge.evaluation.protocols.base import ProtocolSplit
from feedforge.evaluation.protocols.heldout_users import strong_generalization
from feedforge.evaluation.protocols.msr import msr_stratified
from feedforge.evaluation.protocols.next_item import leave_one_out
from feedforge.evaluation.protocols.time_split import temporal

PROTOCOLS: dict[str, Callable[..., ProtocolSplit]] = {
    "msr-stratified": msr_stratified,
    "leave-one-out": leave_one_out,
    "temporal": temporal,
    "strong-generalization": strong_generalization,
}


def build_protocol(name: str, frame: pl.DataFrame, **params: Any) -> ProtocolSplit:
    """Apply the registered protocol ``name`` to ``frame`` with its keyword ``params``.

    Raises:
        ConfigError: unknown protocol name.
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name](frame, **params)
