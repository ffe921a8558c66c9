"""``feedforge loop run|serve|history``: the continuous-training loop
(:mod:`feedforge.loop.cycle`)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table

from feedforge.cli.common import (
    DEFAULT_WORKDIR,
    ConfigOpt,
    WorkdirOpt,
    app,
    clean_errors,
    console,
    err_console,
    progress,
    settings_from,
)
from feedforge.workdir import Workdir

if TYPE_CHECKING:
    from feedforge.config import Settings
    from feedforge.loop.runs import Run

loop_app = typer.Typer(
    help="Continuous training: build, train, gate, canary, promote or roll back.",
    no_args_is_help=True,
)
app.add_typer(loop_app, name="loop")

SimulateOpt = Annotated[
    int,
    typer.Option(
        "--simulate-users",
        min=0,
        help="Simulated users of the simulator's world request feeds while the canary "
        "waits (one simulated day per round), instead of real traffic",
    ),
]


def _traffic(workdir: Workdir, settings: Settings, users: int) -> Any:
    if users <= 0:
        return None
    from feedforge.loop.simulate import world_traffic

    return world_traffic(workdir, settings, users)


def _advance(
    workdir: Workdir, settings: Settings, wait: bool, poll_s: float, users: int, trigger: str
) -> Run:
    from feedforge.loop.cycle import run_cycle

    with progress("loop") as say:
        run = run_cycle(
            workdir,
            settings,
            wait=wait,
            poll_s=poll_s,
            traffic=_traffic(workdir, settings, users),
            trigger=trigger,
            progress=say,
        )
    _print_run(run)
    return run


@loop_app.command("run")
@clean_errors
def run_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    wait: Annotated[
        bool,
        typer.Option(
            help="Wait through the canary window (--no-wait: return; the next run decides)"
        ),
    ] = True,
    poll_s: Annotated[float, typer.Option(min=0.1, help="Canary poll period")] = 30.0,
    simulate_users: SimulateOpt = 0,
) -> None:
    """One cycle (or the rest of an unfinished one): build, gates, stage, canary, decide."""
    _advance(Workdir.at(workdir), settings_from(config), wait, poll_s, simulate_users, "manual")


@loop_app.command("serve")
@clean_errors
def serve_cmd(
    every: Annotated[str, typer.Option(help="Start a cycle this often: 30m, 1h, 6h, 1d")] = "1h",
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    poll_s: Annotated[float, typer.Option(min=0.1, help="How often a canary is checked")] = 30.0,
    cycles: Annotated[
        int, typer.Option(min=0, help="Stop after this many finished cycles (0: never)")
    ] = 0,
    simulate_users: SimulateOpt = 0,
) -> None:
    """Run cycles on a schedule: a new one every --every; a running canary is checked every
    --poll-s. Another process's cycle is waited out, never joined."""
    from feedforge.errors import LoopBusyError
    from feedforge.loop.runs import list_runs

    wd, settings = Workdir.at(workdir), settings_from(config)
    period = _seconds(every)
    finished = 0
    while True:
        runs = list_runs(wd)
        last = runs[-1] if runs else None
        due = last is None or not last.finished or time.time() - _started(last) >= period
        if due:
            try:
                run = _advance(wd, settings, False, poll_s, simulate_users, "schedule")
                if run.finished:
                    finished += 1
            except LoopBusyError as exc:
                err_console.print(f"skipped: {exc}")
            except Exception as exc:
                err_console.print(f"cycle failed: {exc}")
                finished += 1
        if cycles and finished >= cycles:
            return
        time.sleep(poll_s)


def _started(run: Run) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(run.data["started_at"])).timestamp()


def _seconds(text: str) -> float:
    from feedforge.errors import ValidationError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError) as exc:
        raise ValidationError(f"--every {text!r}: expected e.g. 30m, 1h, 1d or seconds") from exc
    if value <= 0:
        raise ValidationError(f"--every {text!r}: must be positive")
    return value


@loop_app.command("history")
@clean_errors
def history_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON")] = False,
    last: Annotated[int, typer.Option(min=1, help="Newest runs shown")] = 20,
) -> None:
    """Every recorded cycle: its versions, gates, decision, time and peak memory."""
    from feedforge.loop.runs import list_runs

    settings_from(config)
    runs = list_runs(Workdir.at(workdir))[-last:]
    if as_json:
        typer.echo(json.dumps([run.data for run in runs], indent=2, default=str))
        return
    table = Table(
        Column("run", no_wrap=True),
        "status",
        Column("incumbent -> candidate", overflow="fold"),
        "gates",
        Column("decision", ratio=1),
        "seconds",
        "peak MB",
    )
    for run in runs:
        table.add_row(*_row(run))
    console.print(table)


def _row(run: Run) -> list[str]:
    data = run.data
    steps = data.get("steps", {})
    seconds = sum(float(s.get("seconds", 0.0)) for s in steps.values())
    peak = max((float(s.get("peak_rss_mb", 0.0)) for s in steps.values()), default=0.0)
    gates = ", ".join(
        f"{g['name']} {'skip' if g.get('skipped') else 'ok' if g['passed'] else 'FAIL'}"
        for g in data.get("gates", [])
    )
    decision = data.get("decision") or {}
    reason = "; ".join(decision.get("reasons", [])) if decision else (data.get("error") or "")
    action = decision.get("action", "")
    return [
        data["run_id"],
        data["status"],
        f"{data.get('incumbent') or '-'} -> {data.get('candidate') or '-'}",
        gates or "-",
        f"{action}: {reason}" if action else reason or "-",
        f"{seconds:.1f}",
        f"{peak:.0f}",
    ]


def _print_run(run: Run) -> None:
    table = Table("step", "status", "attempts", "seconds", "peak MB")
    for name, step in run.data["steps"].items():
        table.add_row(
            name,
            str(step.get("status")),
            str(step.get("attempts")),
            f"{float(step.get('seconds', 0.0)):.2f}",
            f"{float(step.get('peak_rss_mb', 0.0)):.0f}",
        )
    console.print(table)
    console.print(f"run {run.run_id}: {run.status}")
    for gate in run.data.get("gates", []):
        console.print(
            f"  gate {gate['name']}: {'passed' if gate['passed'] else 'FAILED'}: {gate['reason']}"
        )
    if run.data.get("decision"):
        decision = run.data["decision"]
        console.print(f"  decision: {decision['action']}: {'; '.join(decision.get('reasons', []))}")
