"""The soak's memory verdict: per process, the end against the reference sample."""

from __future__ import annotations

import pytest

from feedforge.bench.soak import FLAT_GROWTH, _memory


def _samples(series: dict[str, list[float]], every: float = 30.0) -> list[dict[str, object]]:
    n = max(len(v) for v in series.values())
    return [
        {"t_s": i * every, "rss_mib": {k: v[i] for k, v in series.items() if i < len(v)}}
        for i in range(n)
    ]


def test_growth_before_the_reference_is_not_a_leak_and_a_steady_climb_is() -> None:
    samples = _samples(
        {
            # Loads two versions early, then stays: flat.
            "worker 1": [100, 150, 200, 201, 199, 202, 200],
            # Climbs all along: 20% above the reference at the end.
            "worker 2": [100, 110, 120, 130, 136, 140, 144],
        }
    )
    rows = {row["process"]: row for row in _memory(samples, reference_s=60)}
    assert rows["worker 1"]["reference_mib"] == 200 and rows["worker 1"]["flat"]
    assert rows["worker 1"]["start_mib"] == 100 and rows["worker 1"]["max_mib"] == 202
    assert rows["worker 2"]["growth_after_reference"] == pytest.approx(0.2)
    assert not rows["worker 2"]["flat"]
    # 24 MiB over 120 s after the reference: about 720 MiB per hour.
    assert rows["worker 2"]["slope_mib_per_hour"] == pytest.approx(720, rel=0.1)


def test_the_bound_is_inclusive_and_a_process_gone_early_is_left_out() -> None:
    end = 100 * (1 + FLAT_GROWTH)
    samples = _samples({"service": [100, 100, end], "worker 9": [50]})
    rows = _memory(samples, reference_s=30)
    assert [row["process"] for row in rows] == ["service"]
    assert rows[0]["flat"] and rows[0]["slope_mib_per_hour"] is None
