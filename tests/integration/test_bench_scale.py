"""``feedforge bench scale``'s stream part at a tiny size: real producers, a durable
redis-server of its own and two ``feedforge ingest`` processes; every acknowledged event ends
up in the log once, and the tables render. (The other parts run the commands their own tests
cover: the Spark build, DDP training, the serve benchmark.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from feedforge.bench.scale import ScaleSpec, run_scale
from feedforge.config import Settings

from ..conftest import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def test_stream_part_stores_every_acknowledged_event(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed; .ci/run installs it")
    spec = ScaleSpec(stream_seconds=2.0, stream_producers=2, stream_batch=50, parts=("stream",))
    report = run_scale(Settings(), spec, tmp_path)
    stream = report["stream"]
    assert stream["acknowledged"] > 0
    assert stream["stored"] == stream["acknowledged"]
    assert stream["end_to_end_events_per_s"] > 0
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert saved["stream"] == stream
    markdown = (tmp_path / "scale.md").read_text()
    assert "Event stream" in markdown and f"{stream['acknowledged']:,}" in markdown
    assert report["targets"][0]["target"].startswith("stream ingestion")
