"""The ``feedforge`` command line: one command per pipeline stage, plus ``demo``.

Every command takes ``--workdir`` (where artifacts live) and ``--config`` (a YAML file; see
:mod:`feedforge.config`). Errors raised on purpose print one clear message, not a traceback.

* :mod:`feedforge.cli.stages`: simulate, import, build, train, evaluate, publish,
  batch-score, demo;
* :mod:`feedforge.cli.report`: report (the HTML page of the 7 steps);
* :mod:`feedforge.cli.ops`: serve, compact, rollback;
* :mod:`feedforge.cli.experiments`: ``feedforge experiment create|start|stop|list|show|analyze``;
* :mod:`feedforge.cli.monitor`: ``feedforge monitor skew``;
* :mod:`feedforge.cli.loop`: ``feedforge loop run|serve|history``;
* :mod:`feedforge.cli.bench`: ``feedforge bench quality|ranking|serve``.

Each command imports its stage when it runs, so ``feedforge --help`` loads no model library.
"""

from __future__ import annotations

# Importing the command modules registers their commands on the one Typer app, in the order
# `feedforge --help` lists them: the pipeline, then operations, then benchmarks.
# isort: off
from feedforge.cli.common import app
from feedforge.cli import stages
from feedforge.cli import report
from feedforge.cli import ops
from feedforge.cli import experiments
from feedforge.cli import monitor
from feedforge.cli import loop
from feedforge.cli import bench

# isort: on

__all__ = ["app", "bench", "experiments", "loop", "main", "monitor", "ops", "report", "stages"]


def main() -> None:
    """Entry point of the ``feedforge`` script."""
    app()
