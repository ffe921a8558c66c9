"""The event log under concurrent use: compaction while appends go on, and appends that
span many days."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from feedforge.events import log as log_module
from feedforge.events.log import EventLog

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _batch(ids: list[str], day: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": ids,
            "timestamp": [T0 + timedelta(days=day, seconds=n) for n in range(len(ids))],
            "user_id": [f"u{n % 3}" for n in range(len(ids))],
            "item_id": [f"i{n % 5}" for n in range(len(ids))],
            "event_type": ["impression"] * len(ids),
        }
    )


def test_appends_go_on_while_the_same_days_are_compacted(tmp_path: Path) -> None:
    root = tmp_path / "events"
    seed = EventLog(root)
    for n in range(150):  # many small files on each of two days, as the service leaves them
        seed.append(_batch([f"s{n}-0"], day=0))
        seed.append(_batch([f"s{n}-1"], day=1))
    stop = threading.Event()
    errors: list[BaseException] = []
    sent: list[list[str]] = [[] for _ in range(3)]

    def appender(worker: int) -> None:
        n = 0
        while not stop.is_set():
            ids = [f"w{worker}-{n}-{k}" for k in range(3)]
            try:
                # A new EventLog per append reads every file of the day: the widest window.
                result = EventLog(root).append(_batch(ids, day=n % 2))
            except BaseException as exc:  # every failure is the finding
                errors.append(exc)
            else:
                assert result.written == 3, result
                sent[worker].extend(ids)
            n += 1

    threads = [threading.Thread(target=appender, args=(w,), daemon=True) for w in range(3)]
    for thread in threads:
        thread.start()
    try:
        compactor = EventLog(root)
        for _ in range(4):  # each round merges what the appends added since the last one
            compactor.compact()
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], f"{len(errors)} append(s) failed during compaction: {errors[:3]}"

    expected = [f"s{n}-{d}" for n in range(150) for d in (0, 1)] + [i for s in sent for i in s]
    assert sum(len(s) for s in sent) > 0
    files = EventLog(root).files()
    stored = pl.read_parquet(files).get_column("event_id")  # raw rows: no de-duplication
    assert stored.len() == len(expected)
    assert sorted(stored.to_list()) == sorted(expected)


def _spread(n_days: int, prefix: str) -> pl.DataFrame:
    """One event on each of ``n_days`` days, from 2000-01-01 on."""
    start = datetime(2000, 1, 1, 6, 0, tzinfo=UTC)
    return pl.DataFrame(
        {
            "event_id": [f"{prefix}{n}" for n in range(n_days)],
            "timestamp": [start + timedelta(days=n) for n in range(n_days)],
            "user_id": ["u1"] * n_days,
            "item_id": ["i1"] * n_days,
            "event_type": ["impression"] * n_days,
        }
    )


def test_an_append_over_many_days_is_durable_and_holds_other_appends_up_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "events"
    synced: list[Path] = []
    real_fsync = log_module.fsync

    def counting_fsync(path: Path) -> None:  # the real fsync, counted
        synced.append(Path(path))
        real_fsync(path)

    monkeypatch.setattr(log_module, "fsync", counting_fsync)
    EventLog(root).append(_batch(["first"], day=0))  # the root exists: its parent is synced
    synced.clear()
    n_days = 2_000
    one_day = _spread(n_days, "d").with_columns(pl.lit(T0).alias("timestamp"))
    started = time.perf_counter()
    EventLog(tmp_path / "one-day").append(one_day)
    one_day_s = time.perf_counter() - started
    synced.clear()

    spread_s: list[float] = []

    def append_spread() -> None:
        begun = time.perf_counter()
        assert EventLog(root).append(_spread(n_days, "far")).written == n_days
        spread_s.append(time.perf_counter() - begun)

    spreader = threading.Thread(target=append_spread, daemon=True)
    spreader.start()
    deadline = time.monotonic() + 30
    while len(list(root.glob("date=2000-*"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.001)  # the big append has begun writing
    assert spreader.is_alive(), "the append ended before it could be measured"
    begun = time.perf_counter()
    assert EventLog(root).append(_batch(["small"], day=0)).written == 1  # a one-event POST
    small_s = time.perf_counter() - begun
    spreader.join(120)
    assert not spreader.is_alive()
    print(
        f"{n_days} events: one day {one_day_s:.3f} s, {n_days} days {spread_s[0]:.3f} s "
        f"(x{spread_s[0] / one_day_s:.0f}); a one-event append meanwhile {small_s:.3f} s"
    )

    assert spread_s[0] < 60  # generous: about 2 s on a loaded 2-core machine
    # The lock is held for the renames, not the writes: the small append does not wait for
    # the whole big one (before, it waited for all of it).
    assert small_s < 0.5 * spread_s[0], (small_s, spread_s[0])
    # Durable: each day's file and directory fsynced, the root once for all the new days.
    days = {p.parent for p in EventLog(root).files() if not p.parent.name.startswith("date=2026-")}
    assert len(days) == n_days
    assert sum(1 for p in synced if p == root) == 1
    assert all(synced.count(d) == 1 for d in days)
    with EventLog(root).reading():
        assert (
            EventLog(root).scan().filter(pl.col("event_id").str.starts_with("far")).collect().height
            == n_days
        )
