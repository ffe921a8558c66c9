"""What an experiment is: its variants, traffic, metrics and lifecycle, as validated data.

An experiment is stored as JSON in the online store (:mod:`feedforge.experiments.registry`)
and read by every serving worker; this module is its schema. Every check names the
experiment and the field, e.g. ``experiment 'ranker-v2': variants: weights sum to 0.9, not
1``.

* **Unit**: the user (``unit: user``), the only randomisation unit a feed has today.
* **Traffic**: an experiment lives in a **layer** (experiments of one layer are mutually
  exclusive, layers are orthogonal) and takes the layer's buckets ``[start, end)`` of
  :data:`~feedforge.experiments.assignment.LAYER_BUCKETS`; two running experiments of one
  layer may not share a bucket, and two running experiments of different layers may not set
  the same serving field (one user can be in both).
* **Variants**: each has a weight (the weights sum to 1), and a published ``version`` (an id,
  or the alias ``current``, resolved when the experiment starts) and/or serving
  ``overrides``: retrieval ``candidates``, ``history_weight``, ``ranker`` (false: the
  retrieval order, no ranker), and the whole ``reranking`` section. The objective and the
  ranker model are properties of a published version: compare them by publishing both and
  naming each variant's version. The first variant is the control unless ``control`` says
  otherwise.
* **Mode**: ``ab`` serves each unit its variant's feed; ``interleave`` (exactly two variants)
  serves every unit one team-draft interleaving of both feeds.
* **Lifecycle**: ``draft`` -> ``running`` -> ``stopped``; each change bumps ``revision``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedforge.config import ReRankConfig
from feedforge.errors import ValidationError

LAYER_BUCKETS = 1000
"""Buckets of a layer's traffic (an experiment takes a range of them)."""
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""Experiment, variant and layer names: safe in keys, file names and metric labels."""

Name = Annotated[str, Field(pattern=NAME_PATTERN)]

METRICS = ("feeds", "impressions", "clicks", "ctr", "watch_minutes", "revenue", "objective")
"""Unit metrics an experiment may name as primary or guardrail (see
:mod:`feedforge.experiments.online`)."""
SERVICE_METRICS = ("latency_p99_ms", "error_rate", "degraded_rate")
"""Guardrails from the service's own records, per variant."""
Metric = Literal[
    "feeds",
    "impressions",
    "clicks",
    "ctr",
    "watch_minutes",
    "revenue",
    "objective",
    "latency_p99_ms",
    "error_rate",
    "degraded_rate",
]
_DEFAULT_GUARDRAILS: tuple[Metric, ...] = ("latency_p99_ms", "error_rate", "degraded_rate")
OVERRIDE_FIELDS = ("version", "candidates", "history_weight", "ranker", "reranking")
"""What a variant may change; two running experiments of different layers may not both
change the same one."""


class Overrides(BaseModel):
    """Serving settings a variant changes (None: the service's own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates: int | None = Field(None, ge=1, le=10_000)
    history_weight: float | None = Field(None, ge=0)
    ranker: bool | None = Field(
        None, description="false: candidates in retrieval order (the version's ranker unused)"
    )
    reranking: ReRankConfig | None = None

    def fields_set(self) -> set[str]:
        """The fields this override changes."""
        return {name for name in type(self).model_fields if getattr(self, name) is not None}


class Variant(BaseModel):
    """One arm of an experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    weight: float = Field(gt=0, le=1)
    version: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        None, description="A published version id, or 'current' (resolved at start)"
    )
    overrides: Overrides = Overrides()

    def fields_set(self) -> set[str]:
        """The serving fields this variant changes."""
        return self.overrides.fields_set() | ({"version"} if self.version else set())


Status = Literal["draft", "running", "stopped"]


class Experiment(BaseModel):
    """One experiment (see the module docs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Name
    unit: Literal["user"] = "user"
    salt: str = Field("", max_length=128, description="Hash salt (default: the id)")
    layer: Name = "default"
    buckets: tuple[int, int] = Field(
        (0, LAYER_BUCKETS), description="The layer's buckets [start, end) it takes"
    )
    mode: Literal["ab", "interleave"] = "ab"
    variants: list[Variant] = Field(min_length=2)
    control: Name | None = None
    primary_metric: Metric = "watch_minutes"
    guardrails: list[Metric] = Field(default_factory=lambda: list(_DEFAULT_GUARDRAILS))
    attribution_window_s: float = Field(
        86_400.0, gt=0, description="Events this long after a feed count towards it"
    )
    status: Status = "draft"
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    revision: int = 0

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names repeat ({names})")
        total = math.fsum(v.weight for v in self.variants)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"variants: weights sum to {total:g}, not 1")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control: {self.control!r} is not a variant ({names})")
        start, end = self.buckets
        if not 0 <= start < end <= LAYER_BUCKETS:
            raise ValueError(f"buckets: [{start}, {end}) is not within [0, {LAYER_BUCKETS})")
        if self.mode == "interleave" and len(self.variants) != 2:
            raise ValueError(f"mode: interleave needs exactly 2 variants, not {len(names)}")
        if self.primary_metric in SERVICE_METRICS:
            raise ValueError(
                f"primary_metric: {self.primary_metric} is a guardrail of the service, "
                f"not a unit metric ({', '.join(METRICS)})"
            )
        return self

    @property
    def hash_salt(self) -> str:
        """The salt of the variant hash (the id unless set)."""
        return self.salt or self.id

    @property
    def control_variant(self) -> str:
        """The control's name."""
        return self.control or self.variants[0].name

    def variant(self, name: str) -> Variant:
        """The variant called ``name``.

        Raises:
            ValidationError: no such variant.
        """
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise ValidationError(f"experiment {self.id!r}: no variant {name!r}")

    def fields_set(self) -> set[str]:
        """Serving fields any variant changes."""
        return set().union(*(v.fields_set() for v in self.variants))

    def versions(self) -> set[str]:
        """Published versions the variants pin."""
        return {v.version for v in self.variants if v.version}


def parse_experiment(data: Any, where: str = "experiment") -> Experiment:
    """Validate an experiment definition (a dict from YAML, JSON or the store).

    Raises:
        ValidationError: naming the experiment (when its id could be read) and each wrong
            field.
    """
    try:
        return Experiment.model_validate(data)
    except pydantic.ValidationError as exc:
        name = data.get("id") if isinstance(data, dict) else None
        label = f"experiment {name!r}" if isinstance(name, str) else where
        problems = "; ".join(
            ": ".join(filter(None, [".".join(str(p) for p in err["loc"]), _message(err)]))
            for err in exc.errors()
        )
        raise ValidationError(f"{label}: {problems}") from None


def _message(err: Any) -> str:
    message = str(err["msg"])
    return message.removeprefix("Value error, ")
