"""Every ``feedforge evaluate`` run, kept: ``reports/evaluations/<time>_<dataset>.json``.

``reports/evaluation.json`` is the latest run (what a script reads); each run is also
copied to a file named by its UTC time and dataset version, so an earlier run is never lost
when the models are retrained, and the report compares the latest run with the earlier ones
(:func:`evaluation_history`). The oldest files beyond ``evaluation.keep_history`` are removed.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from feedforge.artifacts import write_json_atomic

HISTORY_DIR = "evaluations"
_NAME = re.compile(r"^\d{8}T\d{6}(?:\.\d+)?Z_[A-Za-z0-9_.-]+\.json$")


def history_dir(reports_dir: Path) -> Path:
    """Where the evaluation runs of a work directory's reports are kept."""
    return Path(reports_dir) / HISTORY_DIR


def run_file_name(report: dict[str, Any]) -> str:
    """``YYYYmmddTHHMMSS.ffffffZ_<dataset version>.json`` of a report (its ``created_at``)."""
    created = datetime.fromisoformat(str(report["created_at"]))
    stamp = created.strftime("%Y%m%dT%H%M%S.%fZ")
    dataset = re.sub(r"[^A-Za-z0-9_.-]", "-", str(report.get("dataset_version", "unknown")))
    return f"{stamp}_{dataset}.json"


def save_evaluation(reports_dir: Path, report: dict[str, Any], keep: int) -> Path:
    """Write ``report`` to the history and remove the runs beyond the newest ``keep``.

    Returns:
        The file written.
    """
    directory = history_dir(reports_dir)
    path = directory / run_file_name(report)
    write_json_atomic(path, report)
    runs = sorted(p for p in directory.glob("*.json") if _NAME.match(p.name))
    for old in runs[: max(0, len(runs) - keep)]:
        old.unlink(missing_ok=True)
    return path


def evaluation_history(
    reports_dir: Path,
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Every kept evaluation run, oldest first, as ``(file name, report)``, and the names of
    the files that could not be read as a report (listed, never fatal: the history is context
    for the latest run, not its source).
    """
    runs: list[tuple[str, dict[str, Any]]] = []
    unreadable: list[str] = []
    directory = history_dir(reports_dir)
    if not directory.is_dir():
        return runs, unreadable
    for path in sorted(p for p in directory.glob("*.json") if _NAME.match(p.name)):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            unreadable.append(path.name)
            continue
        if isinstance(report, dict) and isinstance(report.get("models"), dict):
            runs.append((path.name, report))
        else:
            unreadable.append(path.name)
    return runs, unreadable
