"""The served-feed log: every answered ``/recommend``, as data for training and off-policy
evaluation.

One JSON object per line in ``WORKDIR/feedlog/feeds-YYYYMMDD-HHMMSS-<pid>-<n>.jsonl`` (the
UTC time the file was opened, the worker's process id and a per-process counter, so workers
never interleave writes and the names sort in time order)::

    {"ts": "2026-12-01T12:00:00.123456+00:00", "request_id": "...", "user_id": "u1",
     "version": "...", "strategy": "personalized", "degraded": false, "device": null,
     "items": ["i1", ...], "scores": [0.31, ...], "propensities": [1.0, ...],
     "items_total": 10, "truncated": false}

The log keeps to limits (``serving.feed_log_*``, :meth:`FeedLog.from_settings`):

* a line holds at most ``max_items`` items: the feed's first ones, with their scores and
  propensities; the items below that position are dropped, and the line says so
  (``items_total``: the feed's length, ``truncated``: true);
* a worker starts a new file when its file would pass ``max_bytes``, when it is
  ``rotate_s`` old, and at each UTC day;
* at each new file, files last written more than ``retention_s`` ago are deleted, then the
  oldest files until the directory holds at most ``max_total_bytes``. The file a live worker
  is writing is never deleted (so the directory may pass the total by up to one file per
  worker).

Clients send the ``request_id`` back in their impression and engagement events
(``context.request_id``), which joins what was shown, with which propensity, to what the user
did. :func:`read_feed_log` loads the files (rotated ones included) as one Polars frame.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from feedforge.experiments.online import read_feed_log

__all__ = ["FeedLog", "read_feed_log"]

if TYPE_CHECKING:
    from feedforge.config import ServingConfig

logger = logging.getLogger("feedforge.serving")

_ITEM_LISTS = ("items", "scores", "propensities")
# feeds-YYYYMMDD-HHMMSS-<pid>-<n>.jsonl, and the older feeds-YYYYMMDD-<pid>.jsonl
_PID = re.compile(r"^feeds-\d{8}(?:-\d{6}-(\d+)-\d+|-(\d+))\.jsonl$")


class FeedLog:
    """Appends served feeds to this process's current file (thread-safe), within limits.

    Args:
        directory: Where the files go (created on the first write).
        max_bytes: A file is closed before a line would make it larger (a single larger line
            gets a file of its own).
        rotate_s: A file is closed once it is this old.
        retention_s: Files last written longer ago are deleted (None: kept).
        max_total_bytes: The oldest files are deleted beyond this total (None: no cap).
        max_items: Items (with their scores and propensities) written per feed line.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        rotate_s: float = 3600.0,
        retention_s: float | None = 7 * 86_400.0,
        max_total_bytes: int | None = 1024 * 1024 * 1024,
        max_items: int = 100,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.rotate_s = rotate_s
        self.retention_s = retention_s
        self.max_total_bytes = max_total_bytes
        self.max_items = max_items
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._path: Path | None = None
        self._day = ""
        self._opened = 0.0
        self._size = 0
        self._count = 0
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        """The feeds' ``ts`` (a simulation sets its own clock)."""

    @classmethod
    def from_settings(cls, directory: Path, serving: ServingConfig) -> FeedLog:
        """The feed log of a service with the ``serving.feed_log_*`` limits."""
        return cls(
            directory,
            max_bytes=serving.feed_log_max_bytes,
            rotate_s=serving.feed_log_rotate_s,
            retention_s=serving.feed_log_retention_s,
            max_total_bytes=serving.feed_log_max_total_bytes,
            max_items=serving.feed_log_max_items,
        )

    def write(self, record: dict[str, Any]) -> None:
        """Append one feed (``ts``, ``items_total`` and ``truncated`` are added; the item
        lists are cut to ``max_items``); the line reaches the OS before this returns."""
        now = self.clock()
        line = json.dumps({"ts": now.isoformat(), **self._capped(record)}, separators=(",", ":"))
        data = line + "\n"
        size = len(data.encode("utf-8"))
        with self._lock:
            if self._file is None or self._must_rotate(now, size):
                self._open(now)
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            self._size += size

    def _capped(self, record: dict[str, Any]) -> dict[str, Any]:
        items = record.get("items") or []
        out = dict(record)
        for key in _ITEM_LISTS:
            if isinstance(out.get(key), list):
                out[key] = out[key][: self.max_items]
        out["items_total"] = len(items)
        out["truncated"] = len(items) > self.max_items
        return out

    def _must_rotate(self, now: datetime, size: int) -> bool:
        return (
            (self._size > 0 and self._size + size > self.max_bytes)
            or time.monotonic() - self._opened >= self.rotate_s
            or now.strftime("%Y%m%d") != self._day
        )

    def _open(self, now: datetime) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        stamp = now.strftime("%Y%m%d-%H%M%S")
        path = self.directory / f"feeds-{stamp}-{os.getpid()}-{self._count:06d}.jsonl"
        self._file = path.open("a", encoding="utf-8")
        self._path = path
        self._day = now.strftime("%Y%m%d")
        self._opened = time.monotonic()
        self._size = path.stat().st_size
        self._apply_retention()

    def _apply_retention(self) -> None:
        """Delete files past ``retention_s``, then the oldest beyond ``max_total_bytes``."""
        if self.retention_s is None and self.max_total_bytes is None:
            return
        files: list[tuple[float, str, Path, int]] = []
        for path in self.directory.glob("feeds-*.jsonl"):
            with contextlib.suppress(FileNotFoundError):  # another worker deleted it
                stat = path.stat()
                files.append((stat.st_mtime, path.name, path, stat.st_size))
        files.sort()
        now = time.time()
        # A file opened more than rotate_s ago is never written again (the next write opens a
        # new one), so only younger ones may be another worker's current file.
        recent = [path for mtime, _, path, _ in files if now - mtime < self.rotate_s]
        protected = _files_being_written(recent, self._path)
        total = sum(size for *_, size in files)
        for mtime, _, path, size in files:
            expired = self.retention_s is not None and now - mtime > self.retention_s
            over = self.max_total_bytes is not None and total > self.max_total_bytes
            if not (expired or over) or path in protected:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # retention never fails a request
                logger.warning("could not delete the old feed log file %s: %s", path, exc)
                continue
            total -= size

    def close(self) -> None:
        """Close the current file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _files_being_written(paths: list[Path], own: Path | None) -> set[Path]:
    """This process's current file and the newest of ``paths`` of each other live process."""
    newest: dict[int, Path] = {}
    for path in paths:
        match = _PID.match(path.name)
        if match is None:
            continue
        pid = int(match.group(1) or match.group(2))
        if pid not in newest or path.name > newest[pid].name:
            newest[pid] = path
    protected = {own} if own is not None else set()
    for pid, path in newest.items():
        if pid != os.getpid() and _alive(pid):
            protected.add(path)
    return protected


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
