"""``feedforge ingest``: the consumers of the shared event stream (``events.stream: redis``).

A consumer repeats :func:`~feedforge.events.stream.consume_batch`: read a batch of stream
entries, update the live histories of the entries' new events, append the events to the
Parquet log (durably, de-duplicated by ``event_id``), acknowledge. This module adds the
history update (:class:`HistoryUpdater`) and the loop (:func:`run_consumer`).

**Histories, at most once per entry.** The items of an entry's events that the log did not
hold yet are appended to the users' live histories *before* the events go to the log, with
the store token ``stream:<key>:<entry id>``: the store applies a token once
(:meth:`~feedforge.store.base.OnlineStore.append_histories`). An entry delivered again (its
consumer died before acknowledging it) finds its events in the log, or not, and in both cases
the token makes the second write a no-op. While the store is down the updates are held in
this consumer's journal (:mod:`feedforge.serving.held`, fsynced before the log write) and
written when it answers; a consumer killed in that window may repeat such an update once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from feedforge.config import Settings
from feedforge.errors import EventLogError, EventStreamError, StoreUnavailableError
from feedforge.events.log import EventLog
from feedforge.events.schema import CONSUMED_EVENTS, Event
from feedforge.events.stream import (
    EventConsumer,
    IngestStats,
    RedisEventStream,
    StreamEntry,
    consume_batch,
)
from feedforge.serving.held import PendingHistories
from feedforge.store.base import OnlineStore
from feedforge.workdir import Workdir

logger = logging.getLogger("feedforge.serving")

RETRY_S = 1.0
"""Wait after a failed batch (stream or log unavailable) before the next try."""


class HistoryUpdater:
    """Appends the items of an entry's new events to the live histories (see the module
    docs); held in a journal while the store is down."""

    def __init__(self, store: OnlineStore, settings: Settings, pending: PendingHistories) -> None:
        self.store = store
        self.max_len = settings.serving.history_length
        self.key = settings.events.stream_key
        self.pending = pending

    def __call__(self, entry: StreamEntry, events: list[Event]) -> None:
        per_user: dict[str, list[str]] = {}
        for event in sorted(events, key=lambda e: e.timestamp):
            if event.event_type.value in CONSUMED_EVENTS:
                per_user.setdefault(event.user_id, []).append(event.item_id)
        if not per_user:
            return
        try:
            if len(self.pending):
                self.pending.flush(self.store, self.max_len, max_users=None)
            self.store.append_histories(
                per_user, self.max_len, token=f"stream:{self.key}:{entry.entry_id}"
            )
        except StoreUnavailableError as exc:
            logger.warning("store unavailable (%s): history updates held", exc)
            self.pending.add(per_user)
            self.pending.persist()  # durable before the events are written and acknowledged


def run_consumer(
    consumer: EventConsumer,
    log: EventLog,
    on_new: Callable[[StreamEntry, list[Event]], None] | None,
    stop: threading.Event,
    until_idle: bool = False,
    report: Callable[[IngestStats], None] | None = None,
    report_every_s: float = 10.0,
) -> IngestStats:
    """Consume batches until ``stop`` is set (a batch in progress is finished first), or,
    with ``until_idle``, until a read finds nothing new.

    A failing batch (stream or log unavailable) is logged and retried after
    :data:`RETRY_S`: nothing of it was acknowledged.

    Returns:
        What the whole run did.
    """
    total = IngestStats()
    last_report = time.monotonic()
    while not stop.is_set():
        try:
            done = consume_batch(consumer, log, on_new)
        except (EventStreamError, EventLogError, OSError) as exc:
            logger.warning("ingest batch failed (%s); retrying", exc)
            stop.wait(RETRY_S)
            continue
        total.add(done)
        if report is not None and time.monotonic() - last_report >= report_every_s:
            report(total)
            last_report = time.monotonic()
        if until_idle and not done.entries:
            break
    return total


def open_consumer(settings: Settings, name: str | None = None) -> RedisEventStream:
    """The stream consumer of ``settings.events``.

    Raises:
        EventStreamError: ``events.stream`` is not ``redis``.
    """
    if settings.events.stream != "redis":
        raise EventStreamError(
            f"events.stream is {settings.events.stream!r}: the API writes the event log "
            "itself and there is no stream to ingest; set events.stream: redis"
        )
    return RedisEventStream(settings.events, consumer=name)


def history_updater(store: OnlineStore, settings: Settings, workdir: Workdir) -> HistoryUpdater:
    """A :class:`HistoryUpdater` whose held updates are journalled in ``workdir`` (replayed
    by this consumer or any later one, or by a service of the same workdir)."""
    pending = PendingHistories(workdir.held_dir)
    pending.adopt_orphans()
    return HistoryUpdater(store, settings, pending)
