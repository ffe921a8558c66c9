"""The dataset build on Spark writes the polars build's files, row for row.

A real Spark (PySpark 4, ``local[2]``, the machine's Java 17) builds the same logs as the polars
build: a simulated one through the CLI (``feedforge build --engine spark``), and a hand-built
one full of edge cases through the library on a session shared by the module. Every Parquet
file of the dataset is compared after the build's own sort: same columns, same dtypes, same
rows; floating-point columns to a relative tolerance of 1e-9 (sums may add in another order).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feedforge.config import Settings, load_settings
from feedforge.datasets.build import build_dataset
from feedforge.datasets.spark import build_dataset_spark, spark_session
from feedforge.errors import DataError
from feedforge.events.catalog import write_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA
from feedforge.events.simulator import simulate
from feedforge.workdir import Workdir

from ..conftest import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLOAT_TOLERANCE = 1e-9
"""Relative tolerance of floating-point columns (watch seconds and revenue are sums)."""


def _need_spark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        unavailable("PySpark is not installed (the spark extra; `make test` installs it)")
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        unavailable("no Java runtime for Spark (.ci/run installs openjdk-17-jre-headless)")


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    _need_spark()
    session = spark_session(
        Settings().dataset.model_copy(
            update={"spark_master": "local[2]", "spark_driver_memory": "1g"}
        )
    )
    yield session
    session.stop()


def assert_same_dataset(polars_dir: Path, spark_dir: Path) -> list[str]:
    """Every Parquet file of the two datasets equal; the cards equal but for the engine.
    Returns the compared files."""
    files = sorted(str(f.relative_to(polars_dir)) for f in polars_dir.rglob("*.parquet"))
    assert files == sorted(str(f.relative_to(spark_dir)) for f in spark_dir.rglob("*.parquet"))
    for name in files:
        expected, got = pl.read_parquet(polars_dir / name), pl.read_parquet(spark_dir / name)
        assert_frame_equal(got, expected, check_exact=False, rel_tol=FLOAT_TOLERANCE), name
    cards = [json.loads((d / "card.json").read_text()) for d in (polars_dir, spark_dir)]
    assert cards[0].pop("engine") == "polars"
    assert cards[1].pop("engine").startswith("spark 4.")
    assert cards[1] == cards[0]
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (polars_dir, spark_dir)]
    assert manifests[1]["counts"] == manifests[0]["counts"]
    return files


def test_cli_spark_build_equals_the_polars_build(tmp_path: Path) -> None:
    _need_spark()
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "simulator": {"seed": 11, "n_users": 400, "n_items": 200, "n_days": 12},
                "dataset": {"validation_days": 2, "test_days": 2},
            }
        )
    )
    settings = load_settings(config)
    first = Workdir.at(tmp_path / "polars")
    simulate(settings.simulator, first)
    shutil.copytree(first.root, tmp_path / "spark")
    second = Workdir.at(tmp_path / "spark")
    build_dataset(first, settings)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from feedforge.cli import main; main()",
            "build",
            "--workdir",
            str(second.root),
            "--config",
            str(config),
            "--engine",
            "spark",
            "--spark-master",
            "local[2]",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    files = assert_same_dataset(first.dataset_dir, second.dataset_dir)
    assert "ranking_train.parquet" in files and "snapshot/users.parquet" in files
    ranking = pl.read_parquet(second.dataset_dir / "ranking_train.parquet")
    assert ranking.height > 1000  # a real log, not a handful of rows
    assert ranking.get_column("user_impressions_7d").sum() > 0
    assert ranking.get_column("device_code").n_unique() > 1
    assert not (second.dataset_dir / ".spark-staging").exists()


START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 12, 12, 0, tzinfo=UTC)


def _row(event_id: str, ts: datetime, user: str, item: str, kind: str, **extra: Any) -> dict:
    return {
        "event_id": event_id,
        "timestamp": ts,
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        **extra,
    }


def _edge_log() -> tuple[pl.DataFrame, pl.DataFrame]:
    """A catalog and a log with the cases a window-function rewrite could get wrong."""
    items = pl.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4"],
            "title": ["a", "b", "c", "d"],
            "categories": [["drama"], ["comedy", "drama"], [], ["drama"]],
            "created_at": [START - timedelta(days=3), START, START + timedelta(days=2), END],
            "duration_seconds": [100.0, None, 60.0, 10.0],
            "price": [None, 1.99, None, 5.0],
        },
        schema=ITEM_SCHEMA,
    )
    rows: list[dict] = []
    at = START + timedelta(hours=1)
    for n in range(60):
        user, item = f"u{n % 4}", ["i1", "i2", "i3", "i4", "i_not_in_catalog"][n % 5]
        request = f"r{n}"
        device = [None, "tv", "mobile", "web", "fridge"][n % 5]
        rows.append(
            _row(
                f"imp{n}",
                at,
                user,
                item,
                "impression",
                request_id=request,
                position=n % 3,
                device=device,
            )
        )
        if n % 2 == 0:  # a click at the impression's own instant: not counted before it
            rows.append(_row(f"clk{n}", at, user, item, "click", request_id=request))
        if n % 3 == 0:
            rows.append(
                _row(
                    f"w{n}",
                    at + timedelta(seconds=30),
                    user,
                    item,
                    "watch",
                    request_id=request,
                    watch_seconds=40.0 + n,
                )
            )
        if n % 7 == 0:
            rows.append(
                _row(
                    f"buy{n}",
                    at + timedelta(minutes=5),
                    user,
                    item,
                    "purchase",
                    request_id=request,
                    price=2.5,
                )
            )
        if n % 11 == 0:
            rows.append(_row(f"rate{n}", at, user, item, "rating", value=float(n % 5 + 1)))
        if n % 13 == 0:  # a like with no request: never attributed to an impression
            rows.append(_row(f"like{n}", at, user, item, "like"))
        # Uneven gaps: some within a day of the last event, some over a week apart.
        at += timedelta(hours=[2, 30, 5, 200, 1][n % 5])
    # Two events of one user at one instant on two items (ties in the as-of order).
    tie = START + timedelta(days=1, hours=3)
    rows += [
        _row("tie_a", tie, "u1", "i1", "impression", request_id="rt", position=0, device="web"),
        _row("tie_b", tie, "u1", "i2", "impression", request_id="rt", position=1, device="tv"),
        _row("tie_c", tie + timedelta(microseconds=1), "u1", "i2", "click", request_id="rt"),
        _row("last", END, "u2", "i1", "click"),
    ]
    return items, pl.DataFrame(rows, schema=EVENT_SCHEMA)


def test_spark_equals_polars_on_edge_cases(tmp_path: Path, spark: Any) -> None:
    items, log = _edge_log()
    settings = load_settings(
        None, dataset={"validation_days": 2, "test_days": 3, "attribution_seconds": 600}
    )
    dirs = []
    for name in ("polars", "spark"):
        workdir = Workdir.at(tmp_path / name)
        write_catalog(workdir, items, pl.DataFrame({"user_id": ["u0", "u1", "u2", "u3"]}))
        events = EventLog(workdir.events_dir)
        half = log.height // 2  # two appends: the log spans several files
        events.append(log.head(half))
        events.append(log.tail(log.height - half))
        events.append(log.slice(3, 5))  # repeated event ids: the log keeps one of each
        dirs.append(workdir)
    build_dataset(dirs[0], settings)
    manifest = build_dataset_spark(dirs[1], settings, spark=spark)
    assert manifest.extra["engine"].startswith("spark")
    assert_same_dataset(dirs[0].dataset_dir, dirs[1].dataset_dir)
    ranking = pl.concat(
        pl.read_parquet(dirs[1].dataset_dir / f"ranking_{s}.parquet")
        for s in ("train", "validation", "test")
    )
    tie = ranking.filter(pl.col("event_id") == "tie_b").row(0, named=True)
    assert tie["user_impressions"] == ranking.filter(pl.col("event_id") == "tie_a").item(
        0, "user_impressions"
    )
    assert tie["device_code"] == 1  # its own request's device (tv), not the tied web one


def test_spark_build_of_an_empty_log_says_so(tmp_path: Path, spark: Any) -> None:
    items, _log = _edge_log()
    workdir = Workdir.at(tmp_path)
    write_catalog(workdir, items, pl.DataFrame({"user_id": ["u0"]}))
    with pytest.raises(DataError, match="event log is empty"):
        build_dataset_spark(workdir, load_settings(None), spark=spark)
