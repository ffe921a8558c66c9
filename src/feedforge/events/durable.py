"""Durable file writes of the event log (:mod:`feedforge.events.log`).

A file is durable once it was written to a temporary name beside its target, fsynced, renamed
into place and its directory fsynced: :func:`commit` does all of it for one file;
:class:`DayFile` and :func:`on_each` split it, so that an append writes and fsyncs its days'
files several at once, before it takes the append lock, and only renames them under it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from feedforge.artifacts import fsync

WRITERS = 8
"""Files written and fsynced at once (fsyncs in flight together share the file system's
journal commits)."""

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextmanager
def os_errors() -> Iterator[None]:
    """Raise a polars I/O failure as the ``OSError`` it wraps.

    polars reports a failed write (a full disk) as a ``ComputeError`` whose message ends with
    Rust's "(os error 28)"; the log handles ``OSError`` (a 503 that names the reason, or the
    compaction's error), so it is re-raised as one, e.g. ``OSError(ENOSPC, "No space left on
    device")``. A polars error without an OS error code propagates as it is.
    """
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code)) from exc


def commit(target: Path, write: Callable[[Path], None]) -> None:
    """Create ``target`` durably: ``write`` fills a temporary file beside it, which is fsynced
    and renamed into place, then the directory is fsynced. A failure leaves no temporary
    file and no ``target``."""
    tmp = tmp_name(target)
    try:
        with os_errors():
            write(tmp)
        fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync(target.parent)


def tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.stem}.tmp")


@dataclass
class DayFile:
    """One day's share of an append: its rows, staged (written and fsynced) at a temporary
    name beside ``target`` until they are renamed to it."""

    date: str
    rows: pl.DataFrame
    target: Path

    def stage(self) -> None:
        """Create the directory if need be (the caller fsyncs its parent), write the rows to
        the temporary file and fsync it."""
        self.target.parent.mkdir(exist_ok=True)  # raises where a file has the name
        tmp = tmp_name(self.target)
        try:
            with os_errors():
                self.rows.write_parquet(tmp, compression="zstd", statistics=True)
            fsync(tmp)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove the temporary file, if it is still there."""
        with suppress(OSError):
            tmp_name(self.target).unlink(missing_ok=True)


def on_each(func: Callable[[DayFile], object], shares: list[DayFile]) -> list[OSError | None]:
    """Run ``func`` on every share, up to :data:`WRITERS` at once; the ``OSError`` each raised
    (None where it succeeded), in the order of ``shares``."""

    def run(share: DayFile) -> OSError | None:
        try:
            func(share)
        except OSError as exc:
            return exc
        return None

    if len(shares) <= 1:
        return [run(share) for share in shares]
    with ThreadPoolExecutor(max_workers=min(WRITERS, len(shares))) as pool:
        return list(pool.map(run, shares))
