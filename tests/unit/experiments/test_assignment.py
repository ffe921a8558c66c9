"""Experiment definitions, deterministic assignment and the store registry."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from feedforge.errors import ValidationError
from feedforge.experiments.assignment import Assigner, bucket, check_compatible
from feedforge.experiments.definition import parse_experiment
from feedforge.experiments.registry import ExperimentRegistry
from feedforge.store.embedded import EmbeddedStore


def definition(exp_id: str = "e1", **changes: object) -> dict:
    base: dict = {
        "id": exp_id,
        "variants": [{"name": "control", "weight": 0.5}, {"name": "treat", "weight": 0.5}],
    }
    base.update(changes)
    return base


def running(exp_id: str = "e1", **changes: object):
    return parse_experiment({**definition(exp_id, **changes), "status": "running"})


# -- definitions ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.4}]},
            r"experiment 'e1': variants: weights sum to 0.9, not 1",
        ),
        (
            {"variants": [{"name": "a", "weight": 0.5}, {"name": "a", "weight": 0.5}]},
            "names repeat",
        ),
        ({"buckets": [500, 1200]}, r"buckets: \[500, 1200\) is not within"),
        ({"control": "nope"}, "control: 'nope' is not a variant"),
        (
            {
                "variants": [
                    {"name": "a", "weight": 0.5},
                    {"name": "b", "weight": 0.5, "overrides": {"candidates": 0}},
                ]
            },
            r"variants.1.overrides.candidates: Input should be greater than or equal to 1",
        ),
        (
            {
                "variants": [
                    {"name": "a", "weight": 0.5},
                    {"name": "b", "weight": 0.5, "overrides": {"rerank": {}}},
                ]
            },
            r"variants.1.overrides.rerank: Extra inputs are not permitted",
        ),
        ({"primary_metric": "latency_p99_ms"}, "guardrail of the service"),
        ({"mode": "interleave", "variants": [{"name": "a", "weight": 1.0}]}, "at least 2"),
    ],
)
def test_bad_definitions_name_the_experiment_and_field(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_experiment(definition(**changes))


# -- assignment -------------------------------------------------------------------------------
def test_assignment_is_sticky_and_split_by_the_weights() -> None:
    exp = running(variants=[{"name": "a", "weight": 0.2}, {"name": "b", "weight": 0.8}])
    assigner = Assigner([exp])
    users = [f"u{n}" for n in range(20_000)]
    first = [assigner.assign(u)[0].variant.name for u in users]
    again = [Assigner([exp]).assign(u)[0].variant.name for u in users]
    assert first == again
    share = Counter(first)["a"] / len(users)
    assert abs(share - 0.2) < 4 * np.sqrt(0.2 * 0.8 / len(users))


def test_assignment_is_the_same_in_another_process() -> None:
    # No per-process hash seed: a fresh interpreter (another worker) assigns identically.
    code = (
        "from feedforge.experiments.assignment import bucket;"
        "print([bucket(f'x:u{n}', 1000) for n in range(50)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == str([bucket(f"x:u{n}", 1000) for n in range(50)])


def test_layers_are_independent_and_exclusive_within() -> None:
    a = running("a", layer="ranking", buckets=[0, 500])
    b = running("b", layer="ranking", buckets=[500, 1000])
    c = running(
        "c",
        layer="rerank",
        variants=[
            {"name": "x", "weight": 0.5},
            {"name": "y", "weight": 0.5, "overrides": {"candidates": 50}},
        ],
    )
    assigner = Assigner([a, b, c])
    joint: Counter = Counter()
    for n in range(20_000):
        got = {s.experiment.id: s.variant.name for s in assigner.assign(f"u{n}")}
        assert ("a" in got) != ("b" in got)  # exactly one of the ranking layer
        assert "c" in got  # the other layer takes everyone
        joint[(got.get("a", "-"), got["c"])] += 1
    # Orthogonal: c's split is the same inside and outside experiment a.
    in_a = joint[("control", "y")] + joint[("treat", "y")]
    total_a = sum(v for (k, _), v in joint.items() if k != "-")
    assert abs(in_a / total_a - 0.5) < 0.03


def test_overlapping_experiments_of_one_layer_are_refused() -> None:
    with pytest.raises(ValidationError, match="'b': buckets \\[400, 1000\\) of layer 'default'"):
        check_compatible([running("a", buckets=[0, 500]), running("b", buckets=[400, 1000])])


def test_two_layers_changing_the_same_setting_are_refused() -> None:
    over = [
        {"name": "x", "weight": 0.5},
        {"name": "y", "weight": 0.5, "overrides": {"candidates": 50}},
    ]
    with pytest.raises(ValidationError, match=r"both change \['candidates'\]"):
        check_compatible([running("a", variants=over), running("b", layer="l2", variants=over)])


def test_bucket_is_uniform() -> None:
    counts = np.bincount([bucket(f"s:{n}", 10) for n in range(50_000)], minlength=10)
    assert counts.min() > 4_700 and counts.max() < 5_300


# -- registry ---------------------------------------------------------------------------------
@pytest.fixture
def registry(tmp_path: Path) -> ExperimentRegistry:
    store = EmbeddedStore(tmp_path / "store.sqlite3")
    store.put_meta("v1", {"version": "v1"})
    store.set_current("v1")
    return ExperimentRegistry(store)


def test_lifecycle_create_start_stop(registry: ExperimentRegistry) -> None:
    created = registry.create(
        definition(
            variants=[
                {"name": "a", "weight": 0.5, "version": "current"},
                {"name": "b", "weight": 0.5},
            ]
        )
    )
    assert (created.status, created.revision) == ("draft", 1)
    started = registry.start("e1")
    assert started.status == "running" and started.started_at is not None
    assert started.variants[0].version == "v1"  # the alias is resolved at start
    assert registry.pinned_versions() == {"v1"}
    stopped = registry.stop("e1")
    assert (stopped.status, stopped.revision) == ("stopped", 3)
    assert [e.status for e in registry.experiments()] == ["stopped"]
    assert registry.pinned_versions() == set()


def test_registry_refuses_with_the_experiment_and_field(registry: ExperimentRegistry) -> None:
    registry.create(definition())
    with pytest.raises(ValidationError, match="'e1': id: already exists"):
        registry.create(definition())
    with pytest.raises(ValidationError, match=r"variants.1.version: 'v9' is not a published"):
        registry.create(
            definition(
                "e2",
                variants=[
                    {"name": "a", "weight": 0.5},
                    {"name": "b", "weight": 0.5, "version": "v9"},
                ],
            )
        )
    with pytest.raises(ValidationError, match="'e1': status: is draft, not running"):
        registry.stop("e1")
    registry.start("e1")
    registry.create(definition("e3"))
    with pytest.raises(ValidationError, match="overlap running experiment 'e1'"):
        registry.start("e3")
    assert registry.get("e3").status == "draft"  # a refused start changes nothing
    with pytest.raises(ValidationError, match="'nope': not found"):
        registry.get("nope")
