"""The shared event stream on a real redis-server of the tests' own (append-only file,
``appendfsync always``): publish, consume, redelivery after a consumer's death, exactly once
in the log, histories once per entry, dead letters, trimming, durability across a crash."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from feedforge.config import EventsConfig, Settings, StoreConfig
from feedforge.errors import EventStreamError
from feedforge.events.log import EventLog
from feedforge.events.schema import Event
from feedforge.events.stream import RedisEventStream, StreamBatch, consume_batch
from feedforge.serving.held import PendingHistories
from feedforge.serving.stream_ingest import HistoryUpdater
from feedforge.store.base import OnlineStore
from feedforge.store.factory import open_store

from ...conftest import RedisServer, log_event_ids

pytestmark = pytest.mark.redis

NOW = datetime.now(UTC).replace(microsecond=0)


def _events(prefix: str, n: int, user: str = "u1") -> list[Event]:
    return [
        Event(
            event_id=f"{prefix}-{j}",
            timestamp=NOW + timedelta(seconds=j),
            user_id=user,
            item_id=f"i{j}",
            event_type="watch" if j % 2 == 0 else "impression",
            watch_seconds=60.0 if j % 2 == 0 else None,
        )
        for j in range(n)
    ]


def _config(server: RedisServer, **fields: object) -> EventsConfig:
    return EventsConfig.model_validate(
        {
            "stream": "redis",
            "stream_url": server.url,
            "block_ms": 50,
            "claim_idle_ms": 200,
            **fields,
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OnlineStore]:
    with open_store(StoreConfig(), tmp_path / "store.sqlite3") as opened:
        yield opened


def test_a_server_without_fsync_on_every_write_is_refused(own_redis: RedisServer) -> None:
    stream = RedisEventStream(_config(own_redis))
    with pytest.raises(EventStreamError, match="appendfsync everysec"):
        stream.publish(_events("a", 1))
    assert redis.Redis.from_url(own_redis.url).exists("feedforge:events") == 0
    relaxed = RedisEventStream(_config(own_redis, require_fsync=False))
    relaxed.publish(_events("a", 1))


def test_published_entries_reach_the_log_and_histories_once(
    durable_redis: RedisServer, tmp_path: Path, store: OnlineStore
) -> None:
    config = _config(durable_redis)
    producer = RedisEventStream(config)
    first, second = _events("a", 4), _events("b", 2, user="u2")
    producer.publish(first)
    producer.publish(second)
    producer.publish(first[:2])  # a client's re-send of two events, in a new entry
    log = EventLog(tmp_path / "events")
    settings = Settings(events=config)
    updater = HistoryUpdater(store, settings, PendingHistories(None))
    consumer = RedisEventStream(config, consumer="c1")
    stats = consume_batch(consumer, log, updater)
    assert (stats.entries, stats.events, stats.written, stats.duplicates) == (3, 8, 6, 2)
    assert sorted(log_event_ids(log)) == sorted(e.event_id for e in first + second)
    assert store.get_history("u1", 10) == ["i2", "i0"]  # the watches, newest first, once
    assert store.get_history("u2", 10) == ["i0"]
    assert consumer.pending() == {"c1": 0}
    assert consume_batch(consumer, log, updater).entries == 0


def test_entries_of_a_dead_consumer_are_claimed_and_stored_once(
    durable_redis: RedisServer, tmp_path: Path, store: OnlineStore
) -> None:
    config = _config(durable_redis)
    RedisEventStream(config).publish(_events("a", 6))
    log = EventLog(tmp_path / "events")
    updater = HistoryUpdater(store, Settings(events=config), PendingHistories(None))
    # The first consumer reads, updates histories and writes the log, and dies before XACK.
    dead = RedisEventStream(config, consumer="dead")
    batch = dead.poll()
    assert len(batch.entries) == 1
    for entry in batch.entries:
        updater(entry, entry.events)
    log.append(batch.events)
    assert dead.pending() == {"dead": 1}
    # Another consumer claims the entry once it has been idle for claim_idle_ms.
    alive = RedisEventStream(config, consumer="alive")
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    stats = consume_batch(alive, log, updater)
    while not stats.claimed and datetime.now(UTC) < deadline:
        stats = consume_batch(alive, log, updater)
    assert (stats.claimed, stats.written, stats.duplicates) == (1, 0, 6)
    assert sorted(log_event_ids(log)) == sorted(f"a-{j}" for j in range(6))
    assert store.get_history("u1", 10) == ["i4", "i2", "i0"]  # the token: written once
    assert sum(alive.pending().values()) == 0


def test_a_restarted_consumer_first_rereads_its_own_unacknowledged_entries(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    config = _config(durable_redis, claim_idle_ms=3_600_000)
    RedisEventStream(config).publish(_events("a", 3))
    assert len(RedisEventStream(config, consumer="c1").poll().entries) == 1  # then dies
    log = EventLog(tmp_path / "events")
    again = RedisEventStream(config, consumer="c1")
    stats = consume_batch(again, log)
    assert (stats.entries, stats.written) == (1, 3)
    assert again.pending() == {"c1": 0}


def test_an_unreadable_entry_is_dead_lettered_not_lost(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    config = _config(durable_redis)
    client = redis.Redis.from_url(durable_redis.url)
    client.xadd(config.stream_key, {"events": b'[{"event_id": "x"}]'})
    client.xadd(config.stream_key, {"something": b"else"})
    RedisEventStream(config).publish(_events("good", 2))
    log = EventLog(tmp_path / "events")
    consumer = RedisEventStream(config, consumer="c1")
    stats = consume_batch(consumer, log)
    assert (stats.entries, stats.written) == (1, 2)
    dead = client.xrange(config.stream_key + ":dead")
    assert len(dead) == 2
    assert b"event_type" in dead[0][1][b"reason"]  # which field was wrong
    assert dead[0][1][b"events"] == b'[{"event_id": "x"}]'  # the entry, kept as it was
    assert consumer.pending() == {"c1": 0}


def test_acknowledged_entries_are_trimmed_and_pending_ones_kept(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    config = _config(durable_redis, read_count=2, claim_idle_ms=3_600_000)
    producer = RedisEventStream(config)
    for j in range(6):
        producer.publish(_events(f"e{j}", 1))
    log = EventLog(tmp_path / "events")
    consumer = RedisEventStream(config, consumer="c1")
    consume_batch(consumer, log)  # entries 1-2 acknowledged
    unacked = RedisEventStream(config, consumer="c2").poll()  # 3-4 read, not acknowledged
    assert len(unacked.entries) == 2
    assert consumer.trim() == 2
    client = redis.Redis.from_url(durable_redis.url)
    left = [e[0].decode() for e in client.xrange(config.stream_key)]
    assert left == [e.entry_id for e in unacked.entries] + left[2:]
    assert len(left) == 4


def test_acknowledged_events_survive_a_crash_of_the_stream_server(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    config = _config(durable_redis)
    producer = RedisEventStream(config)
    for j in range(20):
        producer.publish(_events(f"e{j}", 5))
    durable_redis.kill()  # SIGKILL: only what was fsynced survives
    durable_redis.start()
    log = EventLog(tmp_path / "events")
    stats = consume_batch(
        RedisEventStream(
            config,
            consumer="c1",
        ),
        log,
    )
    assert (stats.entries, stats.written) == (20, 100)


def test_an_unreachable_stream_is_a_clear_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # never started: nothing listens on its port
    stream = RedisEventStream(_config(server))
    with pytest.raises(EventStreamError, match="unreachable"):
        stream.publish(_events("a", 1))
    with pytest.raises(EventStreamError, match="unreachable"):
        consume_batch(stream, EventLog(tmp_path / "events"))


def test_an_empty_batch_acknowledges_nothing_and_writes_nothing(
    durable_redis: RedisServer, tmp_path: Path
) -> None:
    consumer = RedisEventStream(_config(durable_redis), consumer="c1")
    log = EventLog(tmp_path / "events")
    assert consume_batch(consumer, log).entries == 0
    assert log.files() == []
    consumer.ack(StreamBatch())
