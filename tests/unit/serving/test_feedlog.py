"""The served-feed log: rotation by size and time, retention, the per-line item cap."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from feedforge.config import load_settings
from feedforge.serving.feedlog import FeedLog, read_feed_log


def _record(n: int, k: int = 3) -> dict[str, Any]:
    return {
        "request_id": f"r{n}",
        "user_id": "u1",
        "version": "v1",
        "strategy": "personalized",
        "degraded": False,
        "device": None,
        "items": [f"i{j}" for j in range(k)],
        "scores": [1.0 - j / 1000 for j in range(k)],
        "propensities": [1.0] * k,
    }


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("feeds-*.jsonl"))


def test_files_rotate_at_the_size_limit_and_read_back_in_order(tmp_path: Path) -> None:
    log = FeedLog(tmp_path, max_bytes=600)
    for n in range(40):
        log.write(_record(n))
    log.close()
    files = _files(tmp_path)
    assert len(files) > 5
    # Each file stays under the limit (a single line larger than it gets a file of its own).
    assert all(path.stat().st_size <= 600 for path in files)
    frame = read_feed_log(tmp_path)
    assert frame.get_column("request_id").to_list() == [f"r{n}" for n in range(40)]


def test_files_rotate_after_rotate_s(tmp_path: Path) -> None:
    log = FeedLog(tmp_path, rotate_s=0.05)
    log.write(_record(0))
    log.write(_record(1))
    time.sleep(0.1)
    log.write(_record(2))
    log.close()
    assert len(_files(tmp_path)) == 2
    assert read_feed_log(tmp_path).get_column("request_id").to_list() == ["r0", "r1", "r2"]


def test_files_older_than_the_retention_are_removed(tmp_path: Path) -> None:
    old = tmp_path / "feeds-20200101-1.jsonl"
    old.write_text(json.dumps({"ts": "2020-01-01T00:00:00+00:00", **_record(-1)}) + "\n")
    week_ago = time.time() - 8 * 86_400
    os.utime(old, (week_ago, week_ago))
    log = FeedLog(tmp_path, retention_s=7 * 86_400)
    log.write(_record(0))
    log.close()
    assert not old.exists()
    assert read_feed_log(tmp_path).get_column("request_id").to_list() == ["r0"]


def test_the_total_size_is_capped_by_removing_the_oldest_files(tmp_path: Path) -> None:
    log = FeedLog(tmp_path, max_bytes=600, max_total_bytes=2_000)
    for n in range(100):
        log.write(_record(n))
    log.close()
    files = _files(tmp_path)
    assert sum(path.stat().st_size for path in files) <= 2_000 + 600
    ids = read_feed_log(tmp_path).get_column("request_id").to_list()
    # What is left is the newest feeds, contiguous and in order, ending with the last one.
    assert ids[-1] == "r99" and len(ids) < 100
    first = int(ids[0].removeprefix("r"))
    assert ids == [f"r{n}" for n in range(first, 100)]


def test_a_long_feed_logs_its_first_items_and_says_how_many_it_had(tmp_path: Path) -> None:
    log = FeedLog(tmp_path, max_items=5)
    log.write(_record(0, k=500))
    log.write(_record(1, k=3))
    log.close()
    long, short = read_feed_log(tmp_path).iter_rows(named=True)
    assert long["items"] == [f"i{j}" for j in range(5)]
    assert len(long["scores"]) == len(long["propensities"]) == 5
    assert long["items_total"] == 500 and long["truncated"] is True
    assert short["items"] == ["i0", "i1", "i2"]
    assert short["items_total"] == 3 and short["truncated"] is False


def test_limits_come_from_the_serving_settings(tmp_path: Path) -> None:
    settings = load_settings(
        serving={
            "feed_log_max_bytes": 1000,
            "feed_log_rotate_s": 60,
            "feed_log_retention_s": 3600,
            "feed_log_max_total_bytes": 10_000,
            "feed_log_max_items": 7,
        }
    )
    log = FeedLog.from_settings(tmp_path, settings.serving)
    assert (log.max_bytes, log.rotate_s, log.retention_s) == (1000, 60, 3600)
    assert (log.max_total_bytes, log.max_items) == (10_000, 7)
    defaults = load_settings().serving
    assert defaults.feed_log_max_items == 100
    assert defaults.feed_log_max_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize("key", ["feed_log_max_bytes", "feed_log_max_items"])
def test_limits_must_be_positive(key: str) -> None:
    from feedforge.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        load_settings(serving={key: 0})
