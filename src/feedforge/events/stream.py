"""The shared event stream: API hosts append events, ``feedforge ingest`` writes the log.

With ``events.stream: redis`` (:class:`~feedforge.config.EventsConfig`) no API host writes the
event log. ``POST /events`` appends its batch of validated events to one Redis Stream as one
entry (:meth:`RedisEventStream.publish`, ``XADD``) and acknowledges once the server has it:
the server must write its append-only file with ``appendfsync always`` (checked when the
stream is opened, ``events.require_fsync``), so an acknowledged event survives a crash of
the server. Any number of API hosts share the stream; none needs the log's file system.

``feedforge ingest`` runs consumers of one consumer group (``events.group``; any number, on
any hosts that reach the log's directory). Each repeats :func:`consume_batch`:

1. read up to ``events.read_count`` entries (``XREADGROUP``): first the entries a dead
   consumer read and never acknowledged for ``events.claim_idle_ms`` (``XAUTOCLAIM``), then
   its own unacknowledged ones (after a restart), then new ones;
2. hand each entry's events that the log does not hold yet to ``on_new`` (the live-history
   update, applied at most once per entry by a store token: see
   :mod:`feedforge.serving.stream_ingest`);
3. append the events to the Parquet log, durably (fsync and rename), de-duplicated by
   ``event_id``: an entry written before its consumer died and claimed by another is not
   stored twice;
4. only then acknowledge the entries (``XACK``) and, now and then, trim the stream below the
   oldest entry any group still needs (``XTRIM MINID``).

An entry that cannot be read back as events (written by something else) is moved to the
dead-letter stream ``<stream_key>:dead`` with the reason, and acknowledged: it never blocks
the stream, and it is not lost.

Kafka is the other engine users run: :class:`EventConsumer` and :class:`EventProducer` are the
interfaces :func:`consume_batch` and the API use, and a confluent-kafka implementation fits
them (``poll`` = ``consume``, ``ack`` = ``commit`` of the batch's offsets, with
``enable.auto.commit=false``; ``publish`` = ``produce`` + ``flush`` with ``acks=all``). It is
not implemented or tested here: no Kafka broker runs on this project's machines.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic
import redis

from feedforge.config import EventsConfig
from feedforge.errors import EventStreamError, redact_url
from feedforge.events.log import AppendResult, EventLog
from feedforge.events.schema import Event

logger = logging.getLogger("feedforge.events")

_EVENTS = pydantic.TypeAdapter(list[Event])
FIELD = b"events"
"""The field of a stream entry holding its events (a JSON array of :class:`Event`)."""
DEAD_SUFFIX = ":dead"
TRIM_EVERY = 20
"""Acknowledged batches between two trims of the stream."""


@dataclass(frozen=True)
class StreamEntry:
    """One entry of the stream: the events of one ``POST /events``."""

    entry_id: str
    events: list[Event]


@dataclass
class StreamBatch:
    """Entries a consumer read and has not acknowledged yet."""

    entries: list[StreamEntry] = field(default_factory=list)
    claimed: int = 0
    """How many of them another consumer had read and never acknowledged."""

    @property
    def events(self) -> list[Event]:
        return [event for entry in self.entries for event in entry.events]


class EventProducer(Protocol):
    """What ``POST /events`` appends to (see the module docs for a Kafka producer)."""

    def publish(self, events: Sequence[Event]) -> str:
        """Append ``events`` as one entry, durably; returns the entry's id.

        Raises:
            EventStreamError: the stream did not take them (nothing was appended).
        """
        ...


class EventConsumer(Protocol):
    """What :func:`consume_batch` reads from (see the module docs for a Kafka consumer)."""

    def poll(self) -> StreamBatch:
        """The next entries to write (empty after a wait with nothing new)."""
        ...

    def ack(self, batch: StreamBatch) -> None:
        """Mark ``batch`` written: it is never delivered again."""
        ...


def check_durable(client: redis.Redis, url: str) -> None:
    """Refuse a server that does not fsync its append-only file on every write.

    Raises:
        EventStreamError: ``appendonly`` is off, ``appendfsync`` is not ``always``, or the
            server hides ``CONFIG`` (then ``events.require_fsync: false`` is the way out).
    """
    try:
        config = client.config_get("append*")
    except redis.ResponseError as exc:
        raise EventStreamError(
            f"the event stream's Redis at {redact_url(url)} does not answer CONFIG GET ({exc}); "
            "check that it writes its append-only file with appendfsync always, then set "
            "events.require_fsync: false"
        ) from exc
    except redis.RedisError as exc:
        raise EventStreamError(
            f"the event stream's Redis at {redact_url(url)} is unreachable: {exc}"
        ) from exc
    aof, fsync = config.get("appendonly"), config.get("appendfsync")
    if aof != "yes" or fsync != "always":
        raise EventStreamError(
            f"the event stream's Redis at {redact_url(url)} runs with appendonly {aof}, "
            f"appendfsync {fsync}: an acknowledged event would not survive its crash. Start it "
            "with --appendonly yes --appendfsync always (or CONFIG SET both), or set "
            "events.require_fsync: false to accept that"
        )


class RedisEventStream:
    """The Redis Streams implementation of :class:`EventProducer` and :class:`EventConsumer`.

    Args:
        config: The ``events`` section.
        consumer: This consumer's name in the group (default ``<host>-<pid>``; a restarted
            consumer that keeps its name first re-reads what it left unacknowledged).
    """

    def __init__(self, config: EventsConfig, consumer: str | None = None) -> None:
        self.config = config
        self.key = config.stream_key
        self.dead_key = config.stream_key + DEAD_SUFFIX
        self.group = config.group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.client = redis.Redis.from_url(
            config.stream_url,
            socket_timeout=max(5.0, config.block_ms / 1000 + 5.0),
            socket_connect_timeout=5.0,
            health_check_interval=30,
        )
        self._durable = not config.require_fsync
        self._group_ready = False
        self._own_pending = True  # a (re)started consumer first re-reads its own entries
        self._next_claim = 0.0
        self._acks = 0

    def close(self) -> None:
        self.client.close()

    def check(self) -> None:
        """Check once that the server is durable (:func:`check_durable`, unless
        ``events.require_fsync`` is off); the first publish or poll does it.

        Raises:
            EventStreamError: the server is unreachable or not durable.
        """
        if not self._durable:
            check_durable(self.client, self.config.stream_url)
            self._durable = True

    # -- producer ----------------------------------------------------------------------------
    def publish(self, events: Sequence[Event]) -> str:
        """``XADD`` the events as one entry (see :class:`EventProducer`)."""
        payload = _EVENTS.dump_json(list(events))
        self.check()
        try:
            entry_id = self.client.xadd(self.key, {FIELD: payload})
        except redis.RedisError as exc:
            raise EventStreamError(
                f"the event stream did not take {len(events)} event(s) ({type(exc).__name__}: "
                f"{exc}); none was acknowledged: re-send them (the log de-duplicates by "
                "event_id)"
            ) from exc
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    # -- consumer ----------------------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the consumer group at the stream's start (``0``: entries appended before
        any consumer existed are read too); an existing group is kept."""
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def poll(self) -> StreamBatch:
        """Claimed entries of dead consumers, then this one's own, then new ones."""
        self.check()
        try:
            if not self._group_ready:
                self.ensure_group()
            batch = StreamBatch()
            now = time.monotonic()
            if now >= self._next_claim:
                self._next_claim = now + self.config.claim_idle_ms / 2000
                raw = self.client.xautoclaim(
                    self.key,
                    self.group,
                    self.consumer,
                    min_idle_time=self.config.claim_idle_ms,
                    start_id="0-0",
                    count=self.config.read_count,
                )
                claimed = self._decode(raw[1])
                batch.entries.extend(claimed)
                batch.claimed = len(claimed)
            if batch.entries:
                return batch
            if self._own_pending:
                own = self._read("0", block=None)
                if own:
                    batch.entries.extend(own)
                    return batch
                self._own_pending = False
            batch.entries.extend(self._read(">", block=self.config.block_ms))
            return batch
        except redis.RedisError as exc:
            raise EventStreamError(
                f"cannot read the event stream {self.key} at {redact_url(self.config.stream_url)} "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def _read(self, start: str, block: int | None) -> list[StreamEntry]:
        answer: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.key: start}, count=self.config.read_count, block=block
        )
        if not answer:
            return []
        return self._decode(answer[0][1])

    def _decode(self, rows: list[Any]) -> list[StreamEntry]:
        """Stream rows ``(id, fields)`` as entries; an unreadable one goes to the dead-letter
        stream (and is acknowledged), an already deleted one (trimmed: ``fields`` None) is
        acknowledged."""
        entries: list[StreamEntry] = []
        for raw_id, fields in rows:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if not fields:
                self.client.xack(self.key, self.group, entry_id)
                continue
            try:
                entries.append(StreamEntry(entry_id, _EVENTS.validate_json(fields[FIELD])))
            except KeyError:
                self._dead_letter(entry_id, fields, f"no {FIELD.decode()!r} field")
            except pydantic.ValidationError as exc:
                problems = [
                    f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
                ]
                more = "; ..." if len(problems) > 20 else ""
                self._dead_letter(entry_id, fields, "; ".join(problems[:20]) + more)
        return entries

    def _dead_letter(self, entry_id: str, fields: dict[Any, Any], reason: str) -> None:
        """Move an unreadable entry to the dead-letter stream, with its id and ``reason``."""
        logger.error(
            "event stream entry %s is no list of events (%s): moved to %s",
            entry_id,
            reason,
            self.dead_key,
        )
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_key, {**fields, b"entry_id": entry_id, b"reason": reason})
        pipe.xack(self.key, self.group, entry_id)
        pipe.execute()

    def ack(self, batch: StreamBatch) -> None:
        """``XACK`` the batch's entries; every :data:`TRIM_EVERY` batches, trim the stream."""
        if not batch.entries:
            return
        try:
            self.client.xack(self.key, self.group, *(e.entry_id for e in batch.entries))
            self._acks += 1
            if self._acks % TRIM_EVERY == 0:
                self.trim()
        except redis.RedisError as exc:
            raise EventStreamError(
                f"cannot acknowledge {len(batch.entries)} entries of the event stream "
                f"({type(exc).__name__}: {exc}); they are in the log and will be delivered "
                "again (and not stored twice)"
            ) from exc

    def trim(self) -> int:
        """Delete the entries every group has read and acknowledged (``XTRIM MINID``, exact,
        below the oldest entry any group still needs). Returns how many went."""
        needed: list[tuple[int, int]] = []
        for group in self.client.xinfo_groups(self.key):
            pending = int(group["pending"])
            if pending:
                summary = self.client.xpending(self.key, group["name"])
                needed.append(_id_tuple(summary["min"]))
            else:
                ms, seq = _id_tuple(group["last-delivered-id"])
                needed.append((ms, seq + 1))
        if not needed:
            return 0
        ms, seq = min(needed)
        return int(self.client.xtrim(self.key, minid=f"{ms}-{seq}", approximate=False))

    def pending(self) -> dict[str, int]:
        """Unacknowledged entries per consumer of the group."""
        return {
            (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): int(c["pending"])
            for c in self.client.xinfo_consumers(self.key, self.group)
        }

    def lag(self) -> int:
        """Entries not yet delivered to the group plus those delivered and unacknowledged."""
        for group in self.client.xinfo_groups(self.key):
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == self.group:
                return int(group.get("lag") or 0) + int(group["pending"])
        return int(self.client.xlen(self.key))


def _id_tuple(entry_id: Any) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


OnNew = Callable[[StreamEntry, list[Event]], None]
"""Called per entry with its events the log did not hold yet, before they are appended."""


@dataclass
class IngestStats:
    """What :func:`consume_batch` did, summed by the caller over a run."""

    entries: int = 0
    events: int = 0
    written: int = 0
    duplicates: int = 0
    claimed: int = 0

    def add(self, other: IngestStats) -> None:
        for name in ("entries", "events", "written", "duplicates", "claimed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def consume_batch(
    consumer: EventConsumer, log: EventLog, on_new: OnNew | None = None
) -> IngestStats:
    """Read one batch, write it to the log durably, then acknowledge it (see the module
    docs). Returns what was done; an empty batch (nothing new in ``events.block_ms``) does
    nothing.

    Raises:
        EventStreamError: the stream could not be read or acknowledged (the batch is
            delivered again later).
        feedforge.errors.EventLogError: the log could not be written (nothing acknowledged).
    """
    batch = consumer.poll()
    stats = IngestStats(entries=len(batch.entries), claimed=batch.claimed)
    events = batch.events
    if not events:
        consumer.ack(batch)  # entries without events (an empty POST never makes one)
        return stats
    if on_new is not None:
        # The log's copy, or an earlier entry's of this batch, is the one that counts: a
        # re-sent event changes no history.
        seen = log.existing_ids(events)
        for entry in batch.entries:
            new = []
            for event in entry.events:
                if event.event_id not in seen:
                    seen.add(event.event_id)
                    new.append(event)
            on_new(entry, new)
    result: AppendResult = log.append(events, where="event stream")
    consumer.ack(batch)
    stats.events = len(events)
    stats.written = result.written
    stats.duplicates = result.duplicates
    return stats
