"""The served-feed log: every answered ``/recommend``, as data for training and off-policy
evaluation.

One JSON object per line in ``WORKDIR/feedlog/feeds-YYYYMMDD-<pid>.jsonl`` (one file per UTC
day and worker process, so workers never interleave writes)::

    {"ts": "2026-12-01T12:00:00.123456+00:00", "request_id": "...", "user_id": "u1",
     "version": "...", "strategy": "personalized", "degraded": false, "device": null,
     "items": ["i1", ...], "scores": [0.31, ...], "propensities": [1.0, ...]}

Clients send the ``request_id`` back in their impression and engagement events
(``context.request_id``), which joins what was shown, with which propensity, to what the user
did. :func:`read_feed_log` loads the files as one Polars frame.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import polars as pl

from feedforge.errors import DataError


class FeedLog:
    """Appends served feeds to the day's file of this process (thread-safe)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._day: str | None = None
        self._file: IO[str] | None = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one feed (``ts`` is added); the line reaches the OS before this returns."""
        now = datetime.now(UTC)
        line = json.dumps({"ts": now.isoformat(), **record}, separators=(",", ":"))
        with self._lock:
            day = now.strftime("%Y%m%d")
            if self._file is None or day != self._day:
                self._open(day)
            assert self._file is not None
            self._file.write(line + "\n")
            self._file.flush()

    def _open(self, day: str) -> None:
        if self._file is not None:
            self._file.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"feeds-{day}-{os.getpid()}.jsonl"
        self._file = path.open("a", encoding="utf-8")
        self._day = day

    def close(self) -> None:
        """Close the current file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_feed_log(directory: Path) -> pl.DataFrame:
    """Every logged feed of ``directory`` (all days and processes), oldest first.

    Raises:
        DataError: the directory holds no feed log, or a line is not valid JSON (the message
            names the file and line).
    """
    files = sorted(Path(directory).glob("feeds-*.jsonl"))
    if not files:
        raise DataError(f"no feed log in {directory}")
    rows: list[dict[str, Any]] = []
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not a JSON feed record ({exc})") from exc
    frame = pl.DataFrame(rows, infer_schema_length=None)
    return frame.with_columns(pl.col("ts").str.to_datetime(time_zone="UTC")).sort("ts")
