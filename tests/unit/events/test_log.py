"""Tests of raw-data storage: the append-only event log and the versioned catalog."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from feedforge.errors import ArtifactError, EventLogError, ValidationError
from feedforge.events import durable
from feedforge.events import log as log_module
from feedforge.events.catalog import read_catalog, write_catalog
from feedforge.events.log import AppendResult, CompactResult, EventLog
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, Event
from feedforge.workdir import Workdir

T0 = datetime(2026, 1, 1, 22, 0, tzinfo=UTC)


def _events(ids: list[str], *, hours: list[float] | None = None, **extra: Any) -> pl.DataFrame:
    hours = hours if hours is not None else [float(i) for i in range(len(ids))]
    data: dict[str, Any] = {
        "event_id": ids,
        "timestamp": [T0 + timedelta(hours=h) for h in hours],
        "user_id": [f"u{i % 3}" for i in range(len(ids))],
        "item_id": [f"i{i % 5}" for i in range(len(ids))],
        "event_type": ["impression"] * len(ids),
    }
    data.update(extra)
    return pl.DataFrame(data)


def _raw_rows(log: EventLog) -> pl.DataFrame:
    """Every stored row, without the de-duplicating safety net of :meth:`EventLog.scan`."""
    files = log.files()
    if not files:
        return pl.DataFrame(schema=EVENT_SCHEMA)
    return pl.concat([pl.read_parquet(f) for f in files])


def test_round_trip_keeps_every_column(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")
    frame = pl.DataFrame(
        {
            "event_id": ["a", "b", "c"],
            "timestamp": [T0, T0 + timedelta(seconds=5), T0 + timedelta(seconds=9)],
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["i1", "i1", "i2"],
            "event_type": ["impression", "watch", "purchase"],
            "watch_seconds": [None, 61.5, None],
            "price": [None, None, 4.99],
            "request_id": ["r1", "r1", "r2"],
            "position": [0, 0, 3],
            "surface": ["home"] * 3,
            "device": ["tv", "tv", "web"],
        }
    )
    result = log.append(frame)
    assert result == AppendResult(written=3, duplicates=0)
    back = log.scan().collect().sort("event_id")
    assert back.schema == pl.Schema(EVENT_SCHEMA)
    expected = frame.with_columns(
        pl.col("position").cast(pl.Int32), pl.lit(None, pl.Float64).alias("value")
    ).select(list(EVENT_SCHEMA))
    assert back.equals(expected)
    assert log.count() == 3


def test_empty_log_scans_to_an_empty_typed_frame(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "nothing-here")
    assert log.files() == []
    assert log.count() == 0
    assert log.scan().collect().schema == pl.Schema(EVENT_SCHEMA)
    assert log.append(_events([])) == AppendResult(0, 0)


def test_partitioned_by_utc_date(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    # 23:30 in Berlin on Jan 2nd is 22:30 UTC on Jan 2nd; 00:30 Berlin on Jan 3rd is 23:30
    # UTC on Jan 2nd: both belong to the UTC date 2026-01-02.
    local = pl.DataFrame(
        {
            "event_id": ["x", "y", "z"],
            "timestamp": [
                datetime(2026, 1, 2, 23, 30),
                datetime(2026, 1, 3, 0, 30),
                datetime(2026, 1, 3, 1, 30),
            ],
            "user_id": ["u"] * 3,
            "item_id": ["i"] * 3,
            "event_type": ["click"] * 3,
        }
    ).with_columns(pl.col("timestamp").dt.replace_time_zone("Europe/Berlin"))
    log.append(local)
    log.append(_events(["a", "b"], hours=[0.0, 5.0]))  # 2026-01-01 22:00 and 01-02 03:00 UTC
    dirs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert dirs == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]
    stored = {
        d: sorted(pl.read_parquet(list((tmp_path / d).glob("*.parquet")))["event_id"].to_list())
        for d in dirs
    }
    assert stored == {
        "date=2026-01-01": ["a"],
        "date=2026-01-02": ["b", "x", "y"],
        "date=2026-01-03": ["z"],
    }
    for file in log.files():
        ts = pl.read_parquet(file).get_column("timestamp")
        assert ts.dt.strftime("%Y-%m-%d").unique().to_list() == [file.parent.name[5:]]


def test_duplicates_within_a_batch_are_stored_once(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    result = log.append(_events(["a", "b", "a", "c", "b"], hours=[0, 1, 0, 2, 1]))
    assert result == AppendResult(written=3, duplicates=2)
    assert sorted(_raw_rows(log).get_column("event_id").to_list()) == ["a", "b", "c"]


def test_duplicates_of_earlier_appends_are_skipped(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    assert log.append(_events(["a", "b", "c"])) == AppendResult(3, 0)
    # "b" and "c" are re-sent (same timestamps), "d" is new.
    resent = _events(["b", "c", "d"], hours=[1, 2, 3])
    assert log.append(resent) == AppendResult(written=1, duplicates=2)
    assert log.append(resent) == AppendResult(written=0, duplicates=3)
    rows = _raw_rows(log)
    assert sorted(rows.get_column("event_id").to_list()) == ["a", "b", "c", "d"]
    assert log.count() == 4


def test_id_index_sees_other_writers_and_rewritten_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two EventLog objects on one directory stand for two service processes: each one's
    # in-memory id index must pick up the files the other committed.
    first, second = EventLog(tmp_path), EventLog(tmp_path)
    assert first.append(_events(["a", "b"], hours=[0, 0])) == AppendResult(2, 0)
    assert second.append(_events(["b", "c"], hours=[0, 0])) == AppendResult(1, 1)
    assert first.append(_events(["c", "d"], hours=[0, 0])) == AppendResult(1, 1)

    # A partition rewritten under the index (a file gone): the index is rebuilt, not trusted.
    partition = tmp_path / "date=2026-01-01"
    for file in sorted(partition.glob("*.parquet"))[1:]:
        file.unlink()  # only the first file ("a", "b") is left
    assert first.append(_events(["c", "b"], hours=[0, 0])) == AppendResult(1, 1)

    # A partition over the index's bound is checked by scanning its files instead.
    monkeypatch.setattr(log_module, "MAX_INDEXED_IDS", 2)
    third = EventLog(tmp_path)
    assert third.append(_events(["a", "e"], hours=[0, 0])) == AppendResult(1, 1)
    assert third._index == {}
    assert sorted(_raw_rows(third).get_column("event_id").to_list()) == ["a", "b", "c", "e"]


def test_the_id_index_holds_a_few_bytes_per_event(tmp_path: Path) -> None:
    # A worker indexes the ids of the day it appends to. As a set of strings that cost ~120
    # bytes per event (a day of 720,000 events grew each worker by ~85 MB in the soak); the
    # hashed index holds 12.
    n = 200_000
    ids = [f"soak-{j:08d}-0123456789abcdef0123456789abcdef" for j in range(n)]
    EventLog(tmp_path).append(_events(ids, hours=[0.0] * n))
    log = EventLog(tmp_path)
    tracemalloc.start()
    try:
        assert log.append(_events(["new", ids[7]], hours=[0, 0])) == AppendResult(1, 1)
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained < 16 * n, f"{retained / n:.0f} bytes per indexed event"


def test_an_append_copies_no_more_than_the_recent_part_of_the_index(tmp_path: Path) -> None:
    # One sorted array copied whole on every append was 8 MB per append on a 700k-event day,
    # a churn of large blocks. A small append onto an indexed 200k-event day now allocates a
    # small fraction of the index.
    n = 200_000
    log = EventLog(tmp_path)
    log.append(_events([f"old-{j:07d}" for j in range(n)], hours=[0.0] * n))
    log.append(_events(["warm"], hours=[0]))
    tracemalloc.start()
    try:
        assert log.append(_events(["new", "old-0000007"], hours=[0, 0])) == AppendResult(1, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * n / 4, f"an append of 2 events allocated {peak / 2**20:.1f} MiB"


def test_every_run_of_the_index_is_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small runs: ids land in the recent run, then the base one; a re-send is found in either.
    monkeypatch.setattr(log_module, "_RECENT_MIN", 4)
    log = EventLog(tmp_path)
    for b in range(30):
        assert log.append(_events([f"e{b}-{j}" for j in range(3)], hours=[0] * 3)).written == 3
    index = log._index["2026-01-01"]
    assert len(index.base) > 0 and len(index) == 90
    assert len(index.recent) <= max(4, len(index.base) // 8)
    resent = ["e0-0", "e12-1", "e29-2", "fresh"]
    assert log.append(_events(resent, hours=[0] * 4)) == AppendResult(1, 3)


def test_a_hash_collision_never_drops_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every id hashes alike: each candidate is confirmed against the files' ids, so distinct
    # events are all stored and only the true re-send is skipped.
    monkeypatch.setattr(log_module, "_id_hashes", lambda ids: np.zeros(len(ids), np.uint64))
    log = EventLog(tmp_path)
    assert log.append(_events(["a", "b"], hours=[0, 0])) == AppendResult(2, 0)
    assert log.append(_events(["c", "a", "d"], hours=[0, 0, 0])) == AppendResult(2, 1)
    assert EventLog(tmp_path).append(_events(["e", "d"], hours=[0, 0])) == AppendResult(1, 1)
    assert sorted(_raw_rows(log).get_column("event_id").to_list()) == ["a", "b", "c", "d", "e"]


def test_append_event_objects(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    events = [
        Event(
            event_id=f"e{n}",
            timestamp=T0 + timedelta(hours=n),
            user_id="u1",
            item_id="i1",
            event_type="watch",
            watch_seconds=10.0 * n,
            context={"request_id": "r1", "position": n},
        )
        for n in range(4)
    ]
    assert log.append(events) == AppendResult(written=4, duplicates=0)
    assert log.append(events[:2]) == AppendResult(written=0, duplicates=2)
    back = log.scan().collect().sort("event_id")
    assert back.get_column("watch_seconds").to_list() == [0.0, 10.0, 20.0, 30.0]
    assert back.get_column("position").to_list() == [0, 1, 2, 3]
    assert back.get_column("request_id").to_list() == ["r1"] * 4
    assert back.get_column("timestamp").to_list() == [e.timestamp for e in events]
    assert log.append([]) == AppendResult(0, 0)


@pytest.mark.parametrize(
    "frame",
    [
        _events(["a", "b", "c"], hours=[0, 30, 60]).drop("user_id"),
        _events(["a", "b", "c"], hours=[0, 30, 60], colour=["r", "g", "b"]),
        _events(["a", "b", "c"], hours=[0, 30, 60], watch_seconds=["1", "2", "lots"]),
        _events(["a", "b", "c"], hours=[0, 30, 60], event_type=["click", "click", "hover"]),
        _events(["a", "b", "c"], hours=[0, 30, 60], item_id=["i1", None, "i3"]),
        _events(
            ["a", "b", "c"],
            hours=[0, 30, 60],
            event_type=["watch"] * 3,
            watch_seconds=[1.0, 2.0, -3.0],
        ),
    ],
)
def test_bad_frame_raises_and_writes_nothing(tmp_path: Path, frame: pl.DataFrame) -> None:
    log = EventLog(tmp_path / "events")
    with pytest.raises(ValidationError, match="from-test"):
        log.append(frame, where="from-test")
    assert log.files() == []
    assert not list(tmp_path.rglob("*.parquet"))
    assert not list(tmp_path.rglob("*.tmp"))


def test_files_are_committed_atomically(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    for batch in range(3):
        ids = [f"b{batch}-{n}" for n in range(10)]
        log.append(_events(ids, hours=[n * 7.0 for n in range(10)]))
    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in everything if p.name.endswith(".tmp")]
    data_files = [p for p in everything if p.suffix == ".parquet"]
    assert sorted(data_files) == log.files()
    assert all(p.name.startswith("part-") and p.parent.name.startswith("date=") for p in data_files)
    # Every committed file is complete and readable on its own.
    assert sum(pl.read_parquet(p).height for p in data_files) == 30


_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    import polars as pl
    from feedforge.events.log import EventLog

    root, go, ranges = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    log = EventLog(root)
    Path(sys.argv[4]).touch()  # imports done: ready
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    written = duplicates = 0
    order = [n for first, last in ranges for n in range(first, last)]
    for lo in range(0, len(order), 10):
        ids = order[lo : lo + 10]
        result = log.append(pl.DataFrame({
            "event_id": [f"e{n:04d}" for n in ids],
            # the same id always has the same timestamp; ids spread over three UTC dates
            "timestamp": [t0 + timedelta(minutes=10 * n) for n in ids],
            "user_id": [f"u{n % 7}" for n in ids],
            "item_id": [f"i{n % 11}" for n in ids],
            "event_type": ["impression"] * len(ids),
        }))
        written += result.written
        duplicates += result.duplicates
    print(json.dumps({"written": written, "duplicates": duplicates}))
    """
)


def test_concurrent_appends_store_each_event_once(tmp_path: Path) -> None:
    root, go = tmp_path / "events", tmp_path / "go"
    # Two processes send overlapping ids, 0..299 and 100..399 (200 in common), both starting
    # with the shared ones so that they race on the same ids and partitions.
    plans = ([[100, 300], [0, 100]], [[100, 300], [300, 400]])
    ready = [tmp_path / f"ready-{n}" for n in range(len(plans))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(root), str(go), json.dumps(plan), str(flag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for plan, flag in zip(plans, ready, strict=True)
    ]
    deadline = time.monotonic() + 30
    while not all(f.exists() for f in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # release both workers together so their appends interleave
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    rows = _raw_rows(EventLog(root))
    ids = rows.get_column("event_id")
    assert ids.len() == 400
    assert ids.n_unique() == 400
    assert sum(r["written"] for r in results) == 400
    assert sum(r["duplicates"] for r in results) == 200
    assert all(r["written"] > 0 for r in results)
    assert len({p.parent.name for p in EventLog(root).files()}) == 3
    assert not list(root.rglob("*.tmp"))


# -- catalog ---------------------------------------------------------------------------------


def _items(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": ids,
            "title": [f"Title {i}" for i in ids],
            "categories": [["drama", "crime"]] + [[] for _ in ids[1:]],
            "created_at": [T0 - timedelta(days=n) for n in range(len(ids))],
            "duration_seconds": [3600.0] + [None] * (len(ids) - 1),
        }
    )


def _users(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"user_id": ids, "country": ["DE"] * len(ids)})


def test_catalog_round_trip(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path)
    written = write_catalog(workdir, _items(["i1", "i2", "i3"]), _users(["u1", "u2"]), {"a": 1})
    manifest, items, users = read_catalog(workdir)
    assert manifest == written
    assert manifest.counts == {"items": 3, "users": 2}
    assert manifest.extra == {"a": 1}
    assert items.schema == pl.Schema(ITEM_SCHEMA)
    assert users.schema == pl.Schema(USER_SCHEMA)
    assert items.get_column("item_id").to_list() == ["i1", "i2", "i3"]
    assert items.item(0, "categories").to_list() == ["drama", "crime"]
    assert items.get_column("created_at").to_list()[0] == T0
    assert users.get_column("country").to_list() == ["DE", "DE"]


@pytest.mark.parametrize(
    ("items", "users", "match"),
    [
        (["i1", "i2", "i1"], ["u1"], "items: 1 duplicate item_id"),
        (["i1"], ["u1", "u1", "u2", "u2"], "users: 2 duplicate user_id"),
    ],
)
def test_catalog_rejects_duplicate_ids(
    tmp_path: Path, items: list[str], users: list[str], match: str
) -> None:
    workdir = Workdir.at(tmp_path)
    with pytest.raises(ValidationError, match=match):
        write_catalog(workdir, _items(items), _users(users))
    assert not workdir.catalog_dir.exists() or not list(workdir.catalog_dir.iterdir())


def test_catalog_rejects_items_without_required_columns(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="title"):
        write_catalog(Workdir.at(tmp_path), _items(["i1"]).drop("title"), _users(["u1"]))


def test_missing_catalog_names_path_and_command(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path)
    with pytest.raises(ArtifactError) as info:
        read_catalog(workdir)
    message = str(info.value)
    assert str(workdir.catalog_dir) in message
    assert "feedforge simulate" in message
    assert info.value.build_command == f"feedforge simulate --workdir {workdir.root}"


def test_catalog_with_a_missing_table(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path)
    write_catalog(workdir, _items(["i1"]), _users(["u1"]))
    workdir.users_path.unlink()
    with pytest.raises(ArtifactError, match="missing user table") as info:
        read_catalog(workdir)
    assert str(workdir.users_path) in str(info.value)
    assert "feedforge simulate" in str(info.value)


def test_corrupt_catalog_table_names_the_file(tmp_path: Path) -> None:
    from feedforge.config import SimulatorConfig
    from feedforge.errors import ArtifactError
    from feedforge.events.catalog import read_catalog, write_catalog
    from feedforge.events.world import generate_world
    from feedforge.workdir import Workdir

    workdir = Workdir.at(tmp_path)
    world = generate_world(SimulatorConfig(n_users=5, n_items=5, n_days=2))
    write_catalog(workdir, world.items_frame(), world.users_frame())
    workdir.items_path.write_bytes(b"not parquet at all")
    with pytest.raises(ArtifactError) as info:
        read_catalog(workdir)
    assert str(workdir.items_path) in str(info.value)
    assert "feedforge simulate" in str(info.value)


def test_a_failing_write_names_the_directory_and_keeps_what_was_stored(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")
    blocked = tmp_path / "events" / "date=2026-01-02"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")  # a file, not a chmod: root may write anywhere
    batch = _events(["a", "b"], hours=[0.0, 3.0])  # 2026-01-01 22:00 and 2026-01-02 01:00

    with pytest.raises(EventLogError) as failed:
        log.append(batch)

    assert failed.value.path == blocked
    assert failed.value.details["stored"] == 1
    assert "date=2026-01-02" in failed.value.message and "re-send" in failed.value.message
    assert failed.value.http_status == 503
    assert _raw_rows(log).get_column("event_id").to_list() == ["a"]
    assert not list(tmp_path.rglob("*.tmp"))

    blocked.unlink()
    assert log.append(batch) == AppendResult(written=1, duplicates=1)
    assert sorted(_raw_rows(log).get_column("event_id").to_list()) == ["a", "b"]


def test_an_unusable_log_directory_is_an_event_log_error(tmp_path: Path) -> None:
    (tmp_path / "events").write_text("a file where the log directory should be")
    with pytest.raises(EventLogError, match="cannot write the event log at"):
        EventLog(tmp_path / "events").append(_events(["a"]))


def test_compaction_merges_each_day_into_one_file_and_keeps_every_event(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")
    for n in range(5):  # five requests' worth of files on each of two days
        log.append(_events([f"a{n}", f"b{n}"], hours=[0.1 * n, 3.0 + n]))
    log.append(_events(["t0"], hours=[30.0]))  # 2026-01-03, twice
    log.append(_events(["t1"], hours=[31.0]))
    before = sorted(_raw_rows(log).get_column("event_id").to_list())

    result = log.compact(before=datetime(2026, 1, 3).date())  # leaves 2026-01-03 alone

    assert result == CompactResult(partitions=2, files_before=10, files_after=2, events=10)
    days = (tmp_path / "events").glob("date=*")
    per_day = {p.name: len(list(p.glob("*.parquet"))) for p in days}
    assert per_day == {"date=2026-01-01": 1, "date=2026-01-02": 1, "date=2026-01-03": 2}
    assert sorted(_raw_rows(log).get_column("event_id").to_list()) == before
    assert not list(tmp_path.rglob("*.tmp"))
    day = pl.read_parquet(next((tmp_path / "events" / "date=2026-01-02").glob("*.parquet")))
    assert day.get_column("timestamp").is_sorted()
    assert day.schema == pl.Schema(EVENT_SCHEMA)
    # The duplicate check still sees the rewritten days, in this process and in a new one.
    again = _events(["a0", "b4", "new"], hours=[0.0, 7.0, 1.0])
    assert log.append(again) == AppendResult(written=1, duplicates=2)
    assert EventLog(tmp_path / "events").append(again) == AppendResult(written=0, duplicates=3)
    assert log.compact() == CompactResult(partitions=2, files_before=4, files_after=2, events=8)
    assert log.count() == 13


def test_compaction_drops_duplicates_a_crash_left_behind(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")
    log.append(_events(["a", "b"], hours=[0.0, 0.5]))
    (stored,) = log.files()
    copy = stored.with_name("part-copy.parquet")  # what a crash after the rename leaves
    copy.write_bytes(stored.read_bytes())
    assert len(_raw_rows(log)) == 4 and log.count() == 2

    assert log.compact().events == 2
    assert sorted(_raw_rows(log).get_column("event_id").to_list()) == ["a", "b"]


def test_a_compaction_removes_no_file_a_reader_may_still_read(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")
    for n in range(3):
        log.append(_events([f"e{n}"], hours=[float(n)]))
    listed = log.files()
    done = threading.Event()
    compaction = threading.Thread(
        target=lambda: (EventLog(tmp_path / "events").compact(), done.set()), daemon=True
    )
    with log.reading():
        frame = log.scan()  # lists the three files
        compaction.start()
        deadline = time.monotonic() + 10
        while len(log.files()) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the merged file is written
        time.sleep(0.2)  # the compaction now waits for this reader to remove the old files
        assert not done.is_set()
        assert all(f.exists() for f in listed) and len(log.files()) == 4
        assert log.scan().collect().height == 3  # a reader meanwhile sees each event once
        log.append(_events(["late"], hours=[5.0]))  # appends do not wait for readers
        assert sorted(frame.collect().get_column("event_id")) == ["e0", "e1", "e2"]
    assert done.wait(10)
    assert not any(f.exists() for f in listed)
    assert log.count() == 4 and len(log.files()) == 2


def test_reading_a_log_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "missing")
    with log.reading():
        assert log.scan().collect().height == 0
    assert not (tmp_path / "missing").exists()


def test_feedforge_compact_leaves_today_and_reports(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from feedforge.cli import app

    workdir = Workdir.at(tmp_path / "work")
    log = EventLog(workdir.events_dir)
    log.append(_events(["a"], hours=[0.0]))
    log.append(_events(["b"], hours=[1.0]))
    result = CliRunner().invoke(
        app, ["compact", "--workdir", str(workdir.root), "--before", "2026-01-02"]
    )
    assert result.exit_code == 0, result.output
    assert "compacted 1 day(s) before 2026-01-02: 2 files -> 1, 2 events" in result.output
    bad = CliRunner().invoke(app, ["compact", "--workdir", str(workdir.root), "--before", "x"])
    assert bad.exit_code != 0 and "--before" in bad.output


def test_a_failed_commit_leaves_neither_the_temporary_file_nor_the_target(tmp_path: Path) -> None:
    target = tmp_path / "part-x.parquet"

    def half_written(tmp: Path) -> None:
        tmp.write_bytes(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        durable.commit(target, half_written)
    assert list(tmp_path.iterdir()) == []

    durable.commit(target, lambda tmp: tmp.write_bytes(b"whole"))
    assert [p.name for p in tmp_path.iterdir()] == ["part-x.parquet"]
    assert target.read_bytes() == b"whole"


def test_a_full_disk_reported_by_polars_is_an_event_log_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # polars reports a full disk as a ComputeError, not an OSError (as on a full tmpfs: see
    # tests/integration/test_disk_full.py, which needs root to mount one).
    def full(self: pl.DataFrame, file: Path, **kwargs: Any) -> None:
        Path(file).write_bytes(b"PAR1 half a file")
        raise pl.exceptions.ComputeError(
            "parquet: File out of specification: underlying IO error: "
            "No space left on device (os error 28)"
        )

    log = EventLog(tmp_path / "events")
    with monkeypatch.context() as mp:
        mp.setattr(pl.DataFrame, "write_parquet", full)
        with pytest.raises(EventLogError, match=r"\(No space left on device\)") as failed:
            log.append(_events(["a"]))
    assert failed.value.http_status == 503 and failed.value.details["stored"] == 0
    assert not list(tmp_path.rglob("*.tmp")) and log.files() == []
    assert log.append(_events(["a"])) == AppendResult(written=1, duplicates=0)
