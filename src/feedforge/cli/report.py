"""``feedforge report``: the HTML report of a work directory (:mod:`feedforge.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from feedforge.cli.common import (
    DEFAULT_WORKDIR,
    ConfigOpt,
    WorkdirOpt,
    app,
    clean_errors,
    console,
    progress,
    settings_from,
)
from feedforge.config import Settings
from feedforge.workdir import Workdir

DEFAULT_LOAD_BENCH = Path("docs/benchmarks/serve.json")


def run_report(
    workdir: Workdir,
    settings: Settings,
    config: Path | None,
    out: Path | None = None,
    load_bench: Path | None = None,
) -> Path:
    """Write the report and print where it is, its size and how long it took."""
    from feedforge.report.build import write_report

    with progress("report") as say:
        result = write_report(
            workdir,
            settings,
            config_source=str(config) if config else "defaults (no --config)",
            out=out,
            load_bench=load_bench,
            progress=say,
        )
    console.print(
        f"report written to {result.path} ({result.bytes / 1e6:.2f} MB, {result.charts} "
        f"charts, {result.seconds:.1f}s)"
    )
    return result.path


@app.command("report")
@clean_errors
def report_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="The HTML file (default: WORKDIR/reports/report.html)")
    ] = None,
    load_bench: Annotated[
        Path | None,
        typer.Option(
            help="A `feedforge bench serve` result to show against the latency budget "
            f"(default: {DEFAULT_LOAD_BENCH} when it exists)"
        ),
    ] = None,
) -> None:
    """One self-contained HTML page walking the 7 steps with this work directory's numbers
    (no network needed to open it)."""
    if load_bench is None and DEFAULT_LOAD_BENCH.is_file():
        load_bench = DEFAULT_LOAD_BENCH
    run_report(Workdir.at(workdir), settings_from(config), config, out, load_bench)
