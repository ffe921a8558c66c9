"""Deterministic assignment of units to experiments and variants: no per-user state.

A unit (user) id is hashed twice, with BLAKE2b (stable across processes, hosts and Python
versions, unlike ``hash()``):

1. ``layer:<layer>:<unit>`` -> one of :data:`~feedforge.experiments.definition.LAYER_BUCKETS`
   buckets of each layer; the running experiment of that layer whose ``buckets`` range holds
   it takes the unit (at most one: ranges of one layer never overlap). Another layer hashes
   with another key, so layers are independent of each other.
2. ``<salt>:<unit>`` -> one of :data:`VARIANT_BUCKETS` buckets, split between the variants in
   order by their weights (a variant of weight ``w`` gets ``round(w * VARIANT_BUCKETS)``
   buckets, the last one the rest).

Every worker computes the same answer from the same definitions, and a unit keeps its
variant for as long as the definition does not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from feedforge.errors import ValidationError
from feedforge.experiments.definition import LAYER_BUCKETS, Experiment, Variant

VARIANT_BUCKETS = 10_000
"""Buckets split between an experiment's variants (weights resolve to 0.0001)."""


def bucket(key: str, n: int) -> int:
    """A uniform bucket in ``[0, n)`` of ``key`` (first 8 bytes of BLAKE2b, modulo ``n``)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def variant_bounds(experiment: Experiment) -> list[int]:
    """The exclusive upper bucket of each variant, in variant order (the last is
    :data:`VARIANT_BUCKETS`)."""
    bounds, acc = [], 0.0
    for variant in experiment.variants:
        acc += variant.weight
        bounds.append(round(acc * VARIANT_BUCKETS))
    bounds[-1] = VARIANT_BUCKETS
    return bounds


@dataclass(frozen=True)
class Assignment:
    """A unit's place in one running experiment."""

    experiment: Experiment
    variant: Variant

    def exposure(self, version: str) -> dict[str, str]:
        """The exposure record of a feed served under this assignment (feed log, API)."""
        return {"experiment": self.experiment.id, "variant": self.variant.name, "version": version}


class Assigner:
    """Assigns units to the running experiments given (checked to be compatible).

    Raises:
        ValidationError: see :func:`check_compatible`.
    """

    def __init__(self, running: Iterable[Experiment]) -> None:
        self.experiments = [e for e in running if e.status == "running"]
        check_compatible(self.experiments)
        self._bounds = {e.id: variant_bounds(e) for e in self.experiments}
        self._layers: dict[str, list[Experiment]] = {}
        for experiment in self.experiments:
            self._layers.setdefault(experiment.layer, []).append(experiment)

    def __bool__(self) -> bool:
        return bool(self.experiments)

    def assign(self, unit_id: str) -> list[Assignment]:
        """The unit's experiments and variants, one per layer at most (empty: the default)."""
        out: list[Assignment] = []
        for layer, experiments in self._layers.items():
            slot = bucket(f"layer:{layer}:{unit_id}", LAYER_BUCKETS)
            for experiment in experiments:
                start, end = experiment.buckets
                if start <= slot < end:
                    out.append(Assignment(experiment, self.variant_of(experiment, unit_id)))
                    break
        return out

    def variant_of(self, experiment: Experiment, unit_id: str) -> Variant:
        """The variant of ``experiment`` a unit falls in (whether or not the layer's bucket
        puts it in the experiment)."""
        slot = bucket(f"{experiment.hash_salt}:{unit_id}", VARIANT_BUCKETS)
        bounds = self._bounds.get(experiment.id) or variant_bounds(experiment)
        for variant, bound in zip(experiment.variants, bounds, strict=True):
            if slot < bound:
                return variant
        return experiment.variants[-1]


def check_compatible(running: Sequence[Experiment]) -> None:
    """Refuse running experiments that cannot run together: two of one layer sharing a
    bucket, or two of different layers changing the same serving field.

    Raises:
        ValidationError: naming both experiments and the layer or field.
    """
    for i, a in enumerate(running):
        for b in running[i + 1 :]:
            if a.id == b.id:
                raise ValidationError(f"experiment {a.id!r} is defined twice")
            if a.layer == b.layer:
                if a.buckets[0] < b.buckets[1] and b.buckets[0] < a.buckets[1]:
                    raise ValidationError(
                        f"experiment {b.id!r}: buckets [{b.buckets[0]}, {b.buckets[1]}) of "
                        f"layer {b.layer!r} overlap running experiment {a.id!r} "
                        f"([{a.buckets[0]}, {a.buckets[1]})); "
                        "experiments of one layer are mutually exclusive"
                    )
                continue
            shared = a.fields_set() & b.fields_set()
            if shared:
                raise ValidationError(
                    f"experiment {b.id!r} (layer {b.layer!r}) and running experiment {a.id!r} "
                    f"(layer {a.layer!r}) both change {sorted(shared)}; a unit can be in "
                    "both, so put them in one layer or change different settings"
                )
