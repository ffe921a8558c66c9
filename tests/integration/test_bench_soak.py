"""The soak end to end at a toy size: mixed traffic, a publish, a rollback and compactions
against the real service and Redis. Structure and the correctness targets only (0 5xx, no
lost acknowledged event, counts that add up); memory is the half-hour run's business."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from feedforge.bench.soak import SoakSpec, run_soak
from feedforge.config import Settings
from feedforge.store.keys import Keys, glob_pattern

from .conftest import SMALL_CONFIG

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def test_bench_soak_reports_errors_lost_events_memory_and_operations(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    spec = SoakSpec(
        duration_s=16, items=400, users=300, days=12, feed_rate=15, event_rate=150, workers=1,
        publish_every_s=6, compact_every_s=100, sample_every_s=2, redis_url=redis_url,
    )  # fmt: skip
    run_soak(Settings(**SMALL_CONFIG), spec, tmp_path)
    saved = json.loads((tmp_path / "soak.json").read_text())
    targets = {t["target"]: t for t in saved["targets"]}
    for name in (
        "0 responses 5xx",
        "0 transport failures",
        "0 lost acknowledged events",
        "every answer's counts add up",
        "every operation succeeded",
        "graceful stop (every worker shut its app down)",
    ):
        assert targets[name]["met"], targets[name]
    check = saved["events_check"]
    assert check["acknowledged"] > 100 and check["in_log"] == check["acknowledged"]
    traffic = saved["traffic"]
    assert traffic["statuses"]["feeds"]["200"] == traffic["feeds"]["requests"] > 50
    assert traffic["events"]["invalid_sent"] == traffic["events"]["invalid_rejected"]
    # Planned: publishes at 6 and 12 s, rollbacks at 9 and 15 s, a compaction at 10 s (every
    # 100 s, 90 s early); one at a time, so a slow publish pushes the rest back.
    done = [op["operation"] for op in saved["operations"]]
    assert done[:3] == ["publish", "rollback", "compact"], done
    assert len(traffic["feeds"]["versions_served"]) >= 2  # the service followed a publish
    processes = {row["process"].split()[0] for row in saved["memory"]}
    assert {"service", "redis-server"} <= processes  # one worker: the service itself
    assert len(saved["samples"]) >= 8 and saved["service_log"]["lines_by_level"]
    markdown = (tmp_path / "soak.md").read_text()
    assert markdown.startswith("# Soak") and "| 0 lost acknowledged events | 0 | yes |" in markdown
    pattern = glob_pattern(Keys(saved["namespace"]).prefix)
    assert not list(redis_client.scan_iter(match=pattern, count=10_000))  # cleaned up
