"""Live-history updates held while the online store is down, durable across restarts.

``POST /events`` stores events in the event log first, then appends their items to the users'
live histories in the store. While the store is down the updates are held
(:class:`PendingHistories`) and written when it answers again; the answer says
``history_updated: false``. They must survive the process: a worker that is killed, or
stopped before the store came back, leaves them to the next one.

**The journal.** Each worker process keeps one append-only file,
``WORKDIR/serving/held-histories/<uuid>.jsonl``, locked with ``flock`` for as long as the
process lives (the kernel releases the lock when it dies, SIGKILL included). The request
path writes to it only when the store did not take an update: before the answer, the
updates held since the last write are appended as ``{"hold": seq, "items": {user: [items]}}``
and fsynced. While the store answers nothing is written. Writing held batches to the store
goes in groups of consecutive batches of one journal:

1. ``{"flush": [first, last]}`` is appended and fsynced (the group's seqs);
2. the group is written with the store token ``<journal id>:<first>-<last>``, which the store
   applies at most once (:meth:`~feedforge.store.base.OnlineStore.append_histories`);
3. ``{"done": last}`` is appended (no fsync: if it is lost, the replay of step 2 is a no-op).

A journal with nothing left is truncated (a worker's own) or deleted (an adopted one); a
graceful stop flushes what it can and deletes its journal when empty.

**Replay.** At start-up (and every :data:`SCAN_INTERVAL_S` while running, on a background
thread of the service, never on a request) a worker looks for
journals whose lock it can take: their owner is gone. It adopts each (keeps the lock, so no
other worker replays it too), reads the batches after the last ``done``, and writes them
like its own, re-using a pending ``flush`` group and its token, so an update is applied once
however many times the journal is replayed. A torn last line (a crash mid-write) was never
acknowledged and is skipped.

Limits: a store remembers a token for 30 days (a journal left unreplayed longer may repeat
its last group); at most :data:`MAX_PENDING_ITEMS` entries are held per worker, then the
oldest batches are dropped (the events stay in the log; republish to rebuild histories).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feedforge.artifacts import fsync
from feedforge.store.base import OnlineStore

logger = logging.getLogger("feedforge.serving")

MAX_PENDING_ITEMS = 100_000
"""Most history entries held for the store while it is down (the oldest batches go first)."""
SCAN_INTERVAL_S = 30.0
"""How often a running worker looks for journals left by dead workers."""


class _Journal:
    """One journal file, locked by this process (see the module docs)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.id = path.stem
        self.next_seq = 1
        self.intent: tuple[int, int] | None = None  # a flush group written, not yet done

    @classmethod
    def create(cls, directory: Path) -> _Journal:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{uuid.uuid4().hex}.jsonl"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fsync(directory)
        return cls(path, fd)

    @classmethod
    def adopt(cls, path: Path) -> tuple[_Journal, list[tuple[int, dict[str, list[str]]]]] | None:
        """Lock and read a journal whose owner is gone; None while its owner holds it."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Its owner may have deleted it (empty) between our open and our lock.
            if os.fstat(fd).st_ino != path.stat().st_ino:
                raise FileNotFoundError(path)
        except OSError:
            os.close(fd)
            return None
        journal = cls(path, fd)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        held: dict[int, dict[str, list[str]]] = {}
        done = 0
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn write of an update that was never acknowledged
            if "hold" in record:
                held[int(record["hold"])] = {
                    str(u): [str(i) for i in items] for u, items in record["items"].items()
                }
            elif "flush" in record:
                first, last = record["flush"]
                journal.intent = (int(first), int(last))
            elif "done" in record:
                done = max(done, int(record["done"]))
        if journal.intent is not None and journal.intent[1] <= done:
            journal.intent = None
        journal.next_seq = max(held, default=0) + 1
        return journal, sorted((seq, items) for seq, items in held.items() if seq > done)

    def write(self, records: list[dict[str, Any]], sync: bool = True) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        os.write(self.fd, data.encode("utf-8"))
        if sync:
            os.fsync(self.fd)

    def empty(self) -> None:
        """Nothing is left: truncate the file (its seqs go on, so tokens stay unique)."""
        os.ftruncate(self.fd, 0)

    def close(self, remove: bool) -> None:
        """Release the lock; delete the file first when ``remove`` (nothing is left)."""
        with contextlib.suppress(OSError):
            if remove:
                self.path.unlink(missing_ok=True)
                fsync(self.path.parent)
        os.close(self.fd)


@dataclass
class _Batch:
    items: dict[str, list[str]]
    journal: _Journal | None = None  # None: only in memory (its request has not answered)
    seq: int = 0

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.items.values())


class PendingHistories:
    """Live-history updates waiting for the store (see the module docs).

    Args:
        directory: Where the journals live (``WORKDIR/serving/held-histories``); None keeps
            the updates in memory only (tests).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._batches: deque[_Batch] = deque()
        self._count = 0
        self._lock = threading.Lock()
        self._own: _Journal | None = None
        self._adopted: list[_Journal] = []

    def __len__(self) -> int:
        return self._count

    def held_items(self, user_id: str) -> list[str]:
        """The items held for ``user_id`` (oldest first), without waiting for a flush in
        progress: a feed request excludes them even when another thread is writing them."""
        if not self._count:
            return []
        batches = list(self._batches)  # one C-level copy under the GIL: no lock needed
        return [item for batch in batches for item in batch.items.get(user_id, ())]

    def add(self, per_user: dict[str, list[str]]) -> None:
        """Hold ``user -> items (oldest first)`` in memory for a later :meth:`flush`; call
        :meth:`persist` before acknowledging them if the flush did not take them."""
        per_user = {u: list(items) for u, items in per_user.items() if items}
        if not per_user:
            return
        with self._lock:
            batch = _Batch(per_user)
            self._batches.append(batch)
            self._count += batch.size
            self._drop_overflow()

    def persist(self) -> None:
        """Make every held update durable in this worker's journal (one fsync). A failing
        disk is logged: the updates stay held in memory and the events are in the log."""
        with self._lock:
            fresh = [b for b in self._batches if b.journal is None]
            if not fresh or self.directory is None:
                return
            try:
                if self._own is None:
                    self._own = _Journal.create(self.directory)
                own = self._own
                for n, batch in enumerate(fresh):
                    batch.seq = own.next_seq + n
                own.write([{"hold": b.seq, "items": b.items} for b in fresh])
            except OSError as exc:
                logger.error("could not journal held history updates: %s", exc)
                return
            own.next_seq += len(fresh)
            for batch in fresh:
                batch.journal = own

    def adopt_orphans(self) -> int:
        """Adopt the journals of workers that are gone (see the module docs).

        Returns:
            How many updates were adopted.
        """
        if self.directory is None or not self.directory.is_dir():
            return 0
        adopted = 0
        with self._lock:
            taken = {j.path for j in self._adopted} | ({self._own.path} if self._own else set())
            for path in sorted(self.directory.glob("*.jsonl")):
                if path in taken:
                    continue
                try:
                    found = _Journal.adopt(path)
                except OSError as exc:
                    logger.warning("could not read held history journal %s: %s", path, exc)
                    continue
                if found is None:
                    continue
                journal, held = found
                if not held:
                    journal.close(remove=True)
                    continue
                self._adopted.append(journal)
                # Older than anything this worker holds: they go first.
                batches = [_Batch(items, journal, seq) for seq, items in held]
                self._batches.extendleft(reversed(batches))
                size = sum(b.size for b in batches)
                self._count += size
                adopted += size
                logger.warning(
                    "replaying %d held history update(s) of a stopped worker from %s",
                    size,
                    path,
                )
            self._drop_overflow()
        return adopted

    def flush(
        self, store: OnlineStore, max_len: int, max_users: int | None = 1_000, wait: bool = True
    ) -> bool:
        """Write held updates to ``store``, oldest first, in groups of one journal, at most
        ``max_users`` users per call (None: all; the feed path passes a bound so the first
        request after an outage does not carry the whole backlog).

        Args:
            store: Where the updates go.
            max_len: The live-history length kept per user.
            max_users: Users written in this call at most (None: all).
            wait: Wait for another flush in progress; False returns at once instead (a feed
                request never waits for a backlog).

        Returns:
            Whether nothing is held any more.

        Raises:
            feedforge.errors.StoreError: the store failed; everything not written stays held.
        """
        if not self._count:
            return True
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            budget = max_users
            while self._batches and (budget is None or budget > 0):
                group = self._group(budget)
                self._write(store, group, max_len)
                if budget is not None:
                    budget -= len({u for b in group for u in b.items})
            return not self._count
        finally:
            self._lock.release()

    def close(self, store: OnlineStore | None, max_len: int) -> None:
        """At shutdown: write everything held to ``store`` if it answers, journal the rest,
        release the journals (deleting those left empty)."""
        if store is not None and self._count:
            try:
                self.flush(store, max_len, max_users=None)
            except Exception as exc:  # the store is still down: the journal keeps them
                logger.warning(
                    "%d held history update(s) not written at shutdown (%s); the next start "
                    "replays them",
                    self._count,
                    exc,
                )
        self.persist()
        with self._lock:
            for journal in [*self._adopted, *([self._own] if self._own else [])]:
                journal.close(remove=not any(b.journal is journal for b in self._batches))
            self._adopted, self._own = [], None

    # -- internals (under the lock) ---------------------------------------------------------
    def _group(self, max_users: int | None) -> list[_Batch]:
        """The next batches to write together: consecutive ones of one journal, a pending
        flush group exactly, else up to ``max_users`` users (at least one batch)."""
        first = self._batches[0]
        journal = first.journal
        group: list[_Batch] = []
        users: set[str] = set()
        for batch in self._batches:
            if batch.journal is not journal:
                break
            if journal is not None and journal.intent is not None:
                if batch.seq > journal.intent[1]:
                    break
            elif group and max_users is not None and len(users | batch.items.keys()) > max_users:
                break
            group.append(batch)
            users |= batch.items.keys()
        return group

    def _write(self, store: OnlineStore, group: list[_Batch], max_len: int) -> None:
        journal = group[0].journal
        merged: dict[str, list[str]] = {}
        for batch in group:
            for user_id, items in batch.items.items():
                merged.setdefault(user_id, []).extend(items)
        token = None
        if journal is not None:
            if journal.intent is None:
                journal.intent = (group[0].seq, group[-1].seq)
                journal.write([{"flush": list(journal.intent)}])
            token = f"{journal.id}:{journal.intent[0]}-{journal.intent[1]}"
        store.append_histories(merged, max_len, token=token)
        for _ in group:
            self._count -= self._batches.popleft().size
        if journal is not None:
            self._done(journal, group[-1].seq)

    def _done(self, journal: _Journal, seq: int) -> None:
        """Batches of ``journal`` up to ``seq`` are written (or dropped)."""
        journal.intent = None
        try:
            if any(b.journal is journal for b in self._batches):
                journal.write([{"done": seq}], sync=False)
            elif journal is self._own:
                journal.empty()
            else:
                self._adopted.remove(journal)
                journal.close(remove=True)
        except OSError as exc:  # a replay would write them again, a no-op with the token
            logger.warning("could not update held history journal %s: %s", journal.path, exc)

    def _drop_overflow(self) -> None:
        while self._count > MAX_PENDING_ITEMS and len(self._batches) > 1:
            first = self._batches.popleft()
            self._count -= first.size
            journal, last = first.journal, first.seq
            if journal is not None and journal.intent is not None:
                # A flush group goes whole (its token names all of it).
                last = journal.intent[1]
                while self._batches and self._batches[0].journal is journal:
                    if self._batches[0].seq > last:
                        break
                    self._count -= self._batches.popleft().size
            logger.warning(
                "pending history buffer full: dropped held updates (the events are in the "
                "log; republish to rebuild the histories)"
            )
            if journal is not None:
                self._done(journal, last)
