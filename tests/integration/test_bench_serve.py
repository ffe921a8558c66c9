"""The load benchmark end to end at a toy size (structure only: timings are the benchmark's
business, not a test's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from feedforge.bench.serve import LoadSpec, run_serve
from feedforge.config import Settings
from feedforge.store.keys import Keys, glob_pattern

from .conftest import SMALL_CONFIG

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def test_bench_serve_reports_latency_floor_profile_and_ingestion(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    spec = LoadSpec(
        items=400, users=300, days=6, rate=20, duration_s=2, workers=1, candidates=50,
        ingest_seconds=1, ingest_batch=100, floor_users=20, redis_url=redis_url,
        extra_rates=(10,),
    )  # fmt: skip
    # With both API keys set: the load generator, the warm-up and the ingestion send them.
    keys = {"api_key": "w" * 32, "read_api_key": "r" * 32}
    report = run_serve(Settings(**{**SMALL_CONFIG, "serving": keys}), spec, tmp_path)
    saved = json.loads((tmp_path / "serve.json").read_text())
    assert saved["command"].startswith("feedforge ")
    feeds = saved["feeds"]
    assert feeds["requests"] > 10 and feeds["statuses"].get("200") == feeds["requests"]
    assert feeds["errors"] == 0 and 0 < feeds["p50_ms"] <= feeds["p99_ms"]
    assert feeds["service_cpu_ms_per_request"] > 0
    (extra,) = saved["sweep"]
    assert extra["offered_rate"] == 10 and extra["errors"] == 0 and extra["requests"] > 5
    floor = saved["compute_floor"]
    assert floor["candidates"] == 50 and floor["floor_p50_ms"] > 0
    assert [b["ef_search"] for b in floor["beam"]] == [512, 768, 1024, 2048]
    assert all(0 < b["recall"] <= 1 and b["median_ms"] > 0 for b in floor["beam"])
    profile = saved["profile_one_worker"]
    assert set(profile) == {"read", "retrieve", "features", "score", "rerank", "request"}
    stages = sum(v["mean_ms"] for k, v in profile.items() if k != "request")
    assert profile["request"]["count"] >= profile["read"]["count"] > 0
    assert profile["request"]["mean_ms"] > 0 and stages > 0
    assert saved["ingestion"]["acknowledged"] > 0 and saved["ingestion"]["failed"] == 0
    assert report["targets"][0]["target"].startswith("p99")
    markdown = (tmp_path / "serve.md").read_text()
    assert "| ef_search | median ms | recall |" in markdown
    assert "| p99 <= 25 ms" in markdown and "| 10 | " in markdown and "| 20 | " in markdown
    pattern = glob_pattern(Keys(saved["namespace"]).prefix)
    assert not list(redis_client.scan_iter(match=pattern, count=10_000))  # cleaned up
