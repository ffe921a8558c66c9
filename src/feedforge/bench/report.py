"""What every benchmark table records about its run, and how it is written."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from feedforge.artifacts import write_json_atomic


def run_info(started: float) -> dict[str, Any]:
    """The machine, the wall time since ``started`` (a ``time.perf_counter()`` value) and the
    exact command line that produced the table."""
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "total_seconds": round(time.perf_counter() - started, 1),
        "command": "feedforge " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }


def write_report(out_dir: Path, name: str, report: dict[str, Any], markdown: str) -> None:
    """Write ``<name>.json`` (atomically) and ``<name>.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{name}.json", report)
    (out_dir / f"{name}.md").write_text(markdown, encoding="utf-8")
