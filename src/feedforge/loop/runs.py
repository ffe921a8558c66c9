"""The continuous-training loop's records: one JSON file per cycle, and the lock that keeps
two cycles from running at once.

::

    WORKDIR/loop/
      .lock                     held (fcntl) by the process advancing a cycle
      runs/<run_id>/run.json    the cycle's record (rewritten atomically after every change)
      runs/<run_id>/dataset/    the cycle's dataset, models and reports (a staged work
      runs/<run_id>/models/     directory, :meth:`~feedforge.workdir.Workdir.staged`)
      runs/<run_id>/reports/

A record holds the run id, the version serving when it started (the incumbent), the
candidate version, the dataset and model versions, every step with its status, attempts,
start and end times, seconds and the process's peak memory, every gate with its numbers and
verdict, the canary experiment and the final decision. Run ids sort by start time.

The lock is an advisory ``flock`` on ``.lock``: the kernel drops it when its holder dies, so
a cycle killed at any step leaves no stale lock behind, and the next ``loop run`` resumes the
unfinished record (:mod:`feedforge.loop.cycle`).
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedforge.artifacts import new_version, write_json_atomic
from feedforge.errors import ArtifactError, LoopBusyError
from feedforge.workdir import Workdir

RUN_FILE = "run.json"
RUN_SCHEMA_VERSION = 1
TERMINAL = ("promoted", "rolled_back", "rejected", "failed")
"""Statuses of a finished run; any other (``running``, ``canary``) can be resumed."""


def runs_dir(workdir: Workdir) -> Path:
    return workdir.loop_dir / "runs"


@contextmanager
def loop_lock(workdir: Workdir) -> Iterator[None]:
    """Hold the loop's lock for the block.

    Raises:
        LoopBusyError: another process holds it (names that process when it said).
    """
    workdir.loop_dir.mkdir(parents=True, exist_ok=True)
    path = workdir.loop_dir / ".lock"
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LoopBusyError(
                f"a loop cycle is already running in {workdir.root} ({holder}); two cycles "
                "never run at once"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Run:
    """One cycle's record, saved under ``WORKDIR/loop/runs/<run_id>/run.json``."""

    directory: Path
    data: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def products(self, workdir: Workdir) -> Workdir:
        """The staged work directory of this run (its own dataset, models, reports)."""
        return workdir.staged(self.directory)

    def step(self, name: str) -> dict[str, Any]:
        return dict(self.data["steps"].get(name) or {})

    def done(self, name: str) -> bool:
        return self.step(name).get("status") == "done"

    def save(self) -> None:
        write_json_atomic(self.directory / RUN_FILE, self.data)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    @contextmanager
    def timed(self, name: str) -> Iterator[dict[str, Any]]:
        """Record step ``name``: running (with its attempt number), then done with its
        seconds and the peak memory, or failed with the error. Yields the step's result
        dict, saved with it."""
        step = self.step(name)
        attempts = int(step.get("attempts", 0)) + 1
        result: dict[str, Any] = {}
        entry = {"status": "running", "attempts": attempts, "started_at": _now()}
        self.data["steps"][name] = entry
        self.save()
        started = time.perf_counter()
        try:
            yield result
        except BaseException as exc:
            entry.update(
                status="failed",
                finished_at=_now(),
                seconds=round(time.perf_counter() - started, 3),
                error=f"{type(exc).__name__}: {exc}",
                result=result,
            )
            self.save()
            raise
        entry.update(
            status="done",
            finished_at=_now(),
            seconds=round(time.perf_counter() - started, 3),
            peak_rss_mb=round(peak_rss_mb(), 1),
            result=result,
        )
        self.save()


def new_run(workdir: Workdir, incumbent: str | None, trigger: str) -> Run:
    """Create and save a new run record."""
    run_id = new_version()
    directory = runs_dir(workdir) / run_id
    directory.mkdir(parents=True)
    run = Run(
        directory,
        {
            "schema_version": RUN_SCHEMA_VERSION,
            "run_id": run_id,
            "status": "running",
            "trigger": trigger,
            "started_at": _now(),
            "finished_at": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "incumbent": incumbent,
            "candidate": None,
            "experiment": None,
            "steps": {},
            "gates": [],
            "decision": None,
            "error": None,
            "resumed": 0,
        },
    )
    run.save()
    return run


def load_run(directory: Path) -> Run:
    """Read one run record.

    Raises:
        ArtifactError: the record is missing, not JSON or of an unknown schema.
    """
    path = directory / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            path, f"unreadable loop run record ({exc})", "feedforge loop run"
        ) from exc
    found = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or found != RUN_SCHEMA_VERSION:
        raise ArtifactError(
            path,
            f"loop run record of schema {found!r}; this feedforge reads {RUN_SCHEMA_VERSION}",
            "feedforge loop run",
        )
    return Run(directory, data)


def list_runs(workdir: Workdir) -> list[Run]:
    """Every run with a readable record, oldest first (a directory without a record, left by
    a cycle killed while creating it, is skipped)."""
    root = runs_dir(workdir)
    if not root.is_dir():
        return []
    runs = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        if (directory / RUN_FILE).is_file():
            runs.append(load_run(directory))
    return runs


def unfinished(workdir: Workdir) -> Run | None:
    """The newest run that has not finished, if any."""
    pending = [run for run in list_runs(workdir) if not run.finished]
    return pending[-1] if pending else None


def prune_runs(workdir: Workdir, keep: int, protect: set[str]) -> list[str]:
    """Delete the dataset, models and reports of finished runs beyond the newest ``keep``
    (records stay, for ``loop history``), sparing runs whose candidate is in ``protect``
    (versions still kept in the store: their models are the offline gate's incumbent).

    Returns:
        The run ids whose products were deleted.
    """
    runs = [run for run in list_runs(workdir) if run.finished]
    pruned = []
    for run in runs[: max(len(runs) - keep, 0)]:
        if run.data.get("candidate") in protect:
            continue
        removed = False
        for name in ("dataset", "models", "reports"):
            if (run.directory / name).exists():
                shutil.rmtree(run.directory / name, ignore_errors=True)
                removed = True
        if removed:
            pruned.append(run.run_id)
    return pruned
