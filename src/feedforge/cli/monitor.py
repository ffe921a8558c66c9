"""``feedforge monitor skew|drift|freshness``: monitoring reports computed from the service's
own records (:mod:`feedforge.monitoring`). Each command is a function registered on
``monitor_app``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

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
    settings_from,
)
from feedforge.workdir import Workdir

if TYPE_CHECKING:
    from feedforge.config import Settings
    from feedforge.monitoring.skew import SkewReport
    from feedforge.store.base import OnlineStore

T = TypeVar("T")

monitor_app = typer.Typer(
    help="Monitoring reports: training-serving skew, drift, freshness.",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")

_SHOWN_BAD_LINES = 5


def _workdir(workdir: Path) -> Workdir:
    """The work directory (a mistyped ``--workdir`` fails naming it)."""
    from feedforge.errors import ArtifactError

    wd = Workdir.at(workdir)
    if not wd.root.is_dir():
        raise ArtifactError(wd.root, "missing work directory", wd.command("simulate"))
    return wd


def _time(value: str | None, option: str) -> datetime | None:
    """An ISO-8601 time option (no time zone: UTC)."""
    from feedforge.errors import ValidationError

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(f"{option}: {exc} (expected an ISO-8601 time)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _report(
    workdir: Path,
    config: Path | None,
    name: str,
    json_out: Path | None,
    compute: Callable[[Workdir, OnlineStore, Settings], T],
    to_json: Callable[[T], dict[str, Any]],
) -> T:
    """Compute a report from the work directory and its online store, and write its JSON
    (``json_out``, default ``WORKDIR/reports/<name>.json``)."""
    from feedforge.artifacts import write_json_atomic
    from feedforge.store.factory import open_store

    settings = settings_from(config)
    wd = _workdir(workdir)
    with open_store(settings.store, wd.store_path) as store:
        report = compute(wd, store, settings)
    path = json_out or wd.reports_dir / f"{name}.json"
    write_json_atomic(path, to_json(report))
    console.print(f"wrote {path}", markup=False)
    return report


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


# -- skew -------------------------------------------------------------------------------------
@monitor_app.command("skew")
@clean_errors
def skew_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only requests logged at or after this ISO-8601 time (default: all)"),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option(help="JSON report (default: WORKDIR/reports/skew.json)")
    ] = None,
    fail_over: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Exit 1 when a feature's mismatch rate is over this rate (retrieval_score: "
            "over the users without live history, whose scores differ by design)",
        ),
    ] = None,
    atol: Annotated[float, typer.Option(min=0.0, help="Absolute tolerance")] = 1e-6,
    rtol: Annotated[float, typer.Option(min=0.0, help="Relative tolerance")] = 1e-4,
) -> None:
    """Training-serving skew per feature, worst first.

    Recomputes offline, point in time, the feature vectors the service scored
    (WORKDIR/featurelog, sampled by monitoring.skew_sample) and reports per feature how often
    and how far they differ. A report: exits 0 unless --fail-over is given and passed.
    """
    from feedforge.monitoring.skew import skew_report

    start = _time(since, "--since")
    report = _report(
        workdir,
        config,
        "skew",
        json_out,
        lambda wd, store, _: skew_report(wd, store, start, atol=atol, rtol=rtol),
        lambda r: r.to_json(),
    )
    _print_skew(report)
    over = report.over(fail_over) if fail_over is not None else []
    if over:
        names = ", ".join(f"{f.feature} ({f.unexpected_mismatch_rate:.2%})" for f in over)
        err_console.print(
            f"skew: mismatch rate over {fail_over:g}: {names}", style="bold red", markup=False
        )
        raise typer.Exit(code=1)


def _print_skew(report: SkewReport) -> None:
    versions = ", ".join(f"{v} ({n})" for v, n in report.versions.items()) or "none"
    console.print(
        f"compared {report.requests} request(s), {report.rows} candidate row(s); versions: "
        f"{versions}; rows of users with live history: {report.live_history_rows} "
        f"(from the {report.live_history_source})",
        markup=False,
    )
    table = Table(
        Column("feature", no_wrap=True),
        Column("rows", justify="right"),
        Column("mismatch rate", justify="right"),
        Column("w/o live history", justify="right"),
        Column("mean |diff|", justify="right"),
        Column("max |diff|", justify="right"),
        title=f"training-serving skew (atol {report.atol:g}, rtol {report.rtol:g}), worst first",
    )
    for f in report.worst():
        style = "red" if f.mismatches else None
        table.add_row(
            f.feature,
            str(f.rows),
            f"{f.mismatch_rate:.2%}",
            f"{f.mismatch_rate_without_live_history:.2%}",
            _num(f.mean_abs_diff),
            _num(f.max_abs_diff),
            style=style,
        )
    console.print(table)
    for reason, n in report.skipped.items():
        console.print(f"skipped {n} request(s): {reason}", markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    for line in report.bad_lines[:_SHOWN_BAD_LINES]:
        err_console.print(f"bad line: {line}", style="yellow", markup=False)
    if len(report.bad_lines) > _SHOWN_BAD_LINES:
        more = len(report.bad_lines) - _SHOWN_BAD_LINES
        err_console.print(f"... and {more} more bad line(s), all in the JSON report", markup=False)


# -- drift ------------------------------------------------------------------------------------
@monitor_app.command("drift")
@clean_errors
def drift_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    version: Annotated[
        str | None, typer.Option(help="The version (default: the current one)")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option(help="JSON report (default: WORKDIR/reports/drift.json)")
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option(help="Exit 1 when a column drifts against the configured baseline")
    ] = False,
) -> None:
    """Drift of the served features and scores, per experiment variant.

    From the serving profile the service keeps in the online store, against the configured
    baseline (monitoring.drift_baseline: the version's first served rows, or its training
    rows) and, for reference, the other one. A report: exits 0 unless --fail-on-drift.
    """
    from feedforge.monitoring.status import drift_report

    report = _report(
        workdir,
        config,
        "drift",
        json_out,
        lambda wd, store, settings: drift_report(wd, store, settings, version),
        dict,
    )
    drifted = _print_drift(report)
    if fail_on_drift and drifted:
        err_console.print(f"drift: {', '.join(drifted)}", style="bold red", markup=False)
        raise typer.Exit(code=1)


def _print_drift(report: dict[str, Any]) -> list[str]:
    """Print each variant's table; returns ``variant/column`` of every flagged column."""
    baseline = report["baseline"]
    other = "training" if baseline == "serving" else "serving"
    console.print(f"version {report['version']}; baseline: {baseline}", markup=False)
    if not report["variants"]:
        console.print("no served rows profiled yet (is the service running with "
                      "monitoring.profile on?)", markup=False)  # fmt: skip
    flagged: list[str] = []
    for variant, entry in report["variants"].items():
        shown, against = baseline, other
        if entry[baseline].get("filling"):
            console.print(
                f"{variant}: {entry['served_rows']} served rows, the {baseline} baseline is "
                f"still filling ({report['thresholds']['baseline_rows']} rows and one window "
                f"after them); against the {other} baseline:",
                markup=False,
            )
            if entry[other].get("filling"):
                continue
            shown, against = other, baseline
        configured = entry[shown]
        gap = {c["feature"]: c for c in entry[against].get("columns", [])}
        table = Table(
            Column("column", no_wrap=True),
            Column("psi", justify="right"),
            Column("ks / js", justify="right"),
            Column("at default", justify="right"),
            Column(f"psi vs {against}", justify="right"),
            Column("drift"),
            title=(
                f"{variant}: {configured['served_rows']} served rows vs "
                f"{configured['baseline_rows']} {shown} baseline rows"
            ),
        )
        for c in sorted(configured["columns"], key=lambda c: -c["psi"]):
            if c["drifted"] and shown == baseline:
                flagged.append(f"{variant}/{c['feature']}")
            table.add_row(
                c["feature"],
                f"{c['psi']:.3f}",
                f"{c['statistic']} {c['value']:.3f}",
                f"{c['default_rate']:.0%}/{c['baseline_default_rate']:.0%}",
                f"{gap[c['feature']]['psi']:.3f}" if c["feature"] in gap else "-",
                "yes" if c["drifted"] else "",
                style="red" if c["drifted"] else None,
            )
        console.print(table)
    return flagged


# -- freshness --------------------------------------------------------------------------------
@monitor_app.command("freshness")
@clean_errors
def freshness_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    json_out: Annotated[
        Path | None, typer.Option(help="JSON report (default: WORKDIR/reports/freshness.json)")
    ] = None,
) -> None:
    """Ages of the served version, its feature snapshot, the newest event and the
    precomputed feeds, against their thresholds (monitoring.max_*_age_s)."""
    from feedforge.monitoring.status import format_age, freshness_report

    report = _report(workdir, config, "freshness", json_out, freshness_report, dict)
    table = Table(
        Column("what", no_wrap=True),
        Column("at"),
        Column("age", justify="right"),
        Column("threshold", justify="right"),
        Column("stale"),
        title=f"freshness of version {report['version']}",
    )
    for name in ("published_version", "feature_snapshot", "newest_event", "precomputed_feeds"):
        entry = report[name]
        age, limit = entry["age_seconds"], entry["threshold_seconds"]
        table.add_row(
            name,
            entry["at"] or "-",
            "-" if age is None else format_age(age),
            "-" if limit is None else format_age(limit),
            "yes" if entry["stale"] else "no",
            style="red" if entry["stale"] else None,
        )
    console.print(table)
