"""``feedforge bench``: the benchmark commands (quality, ranking, serve) for docs/benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from feedforge.cli.common import (
    ConfigOpt,
    app,
    clean_errors,
    console,
    progress,
    settings_from,
)

bench_app = typer.Typer(
    help="Benchmarks: quality and speed tables for docs/benchmarks.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("quality")
@clean_errors
def bench_quality_cmd(
    dataset: Annotated[str, typer.Option(help="ml-100k, ml-latest-small, ... (see import)")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where the dataset's files are")],
    protocol: Annotated[
        str,
        typer.Option(help="msr-stratified, leave-one-out, temporal or strong-generalization"),
    ],
    negatives: Annotated[
        int | None, typer.Option(help="leave-one-out: sampled negatives (default: full ranking)")
    ] = None,
    also_sampled: Annotated[
        int | None,
        typer.Option(
            help="leave-one-out with full ranking: also score every model against this "
            "many sampled negatives and write that table too (one training for both)"
        ),
    ] = None,
    models: Annotated[
        list[str] | None, typer.Option("--model", help="Only these models (repeatable)")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="The dataset's name in the tables and their file names (default: the "
            "dataset, or the file's name for csv, parquet and user-item-text)"
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """Train, tune (on validation) and evaluate every model and the peers on one protocol."""
    from feedforge.bench.quality import run_quality

    with progress("bench quality") as say:
        report = run_quality(
            dataset,
            data_dir,
            protocol,
            out,
            negatives=negatives,
            also_sampled=also_sampled,
            models=models,
            progress=say,
            name=name,
        )
    table = Table(title=f"{report['dataset']} / {report['protocol']}")
    table.add_column("model")
    table.add_column("source")
    for metric in report["metrics"]:
        table.add_column(metric, justify="right")
    table.add_column("train s", justify="right")
    for row in report["rows"]:
        table.add_row(
            row["model"],
            row["source"],
            *(f"{row['metrics'][m]:.4f}" if m in row["metrics"] else "" for m in report["metrics"]),
            "" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}",
        )
    console.print(table)
    console.print(f"written to {out}")


@bench_app.command("ranking")
@clean_errors
def bench_ranking_cmd(
    config: ConfigOpt = None,
    feed_users: Annotated[
        int, typer.Option(min=1, help="Test users whose feeds are scored with ground truth")
    ] = 2_000,
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """Every ranker against logistic regression on simulator data (with ground truth)."""
    from feedforge.bench.ranking import run_ranking

    with progress("bench ranking") as say:
        report = run_ranking(settings_from(config), out, feed_users=feed_users, progress=say)
    columns = ("auc", "log_loss", "ece", "ndcg@10", "feed_clicks", "feed_watch_minutes")
    table = Table(title=f"ranking / simulator / objective {report['objective']}")
    table.add_column("model")
    for name in columns:
        table.add_column(name, justify="right")
    for row in report["rows"]:
        m = row["metrics"]
        table.add_row(row["model"], *("" if m.get(c) is None else f"{m[c]:.4f}" for c in columns))
    console.print(table)
    console.print(f"written to {out}")


@bench_app.command("serve")
@clean_errors
def bench_serve_cmd(
    config: ConfigOpt = None,
    items: Annotated[int, typer.Option(min=100, help="Catalog size")] = 1_000_000,
    users: Annotated[int, typer.Option(min=100, help="Simulated users")] = 20_000,
    days: Annotated[int, typer.Option(min=4, help="Simulated days")] = 7,
    rate: Annotated[float, typer.Option(min=1, help="Requests per second (open loop)")] = 200.0,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of load")] = 60.0,
    workers: Annotated[int, typer.Option(min=1, help="Service worker processes")] = 2,
    candidates: Annotated[int, typer.Option(min=1, help="Candidates ranked per request")] = 500,
    extra_rate: Annotated[
        list[float] | None,
        typer.Option(min=1, help="Another rate to drive after the target one (repeatable)"),
    ] = None,
    redis_url: Annotated[str, typer.Option(help="The Redis to publish to")] = (
        "redis://127.0.0.1:6379/0"
    ),
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """Latency under load: publish a simulated catalog to Redis, serve it, drive it."""
    from feedforge.bench.serve import LoadSpec, run_serve

    spec = LoadSpec(
        items=items,
        users=users,
        days=days,
        rate=rate,
        duration_s=duration,
        workers=workers,
        candidates=candidates,
        redis_url=redis_url,
        extra_rates=tuple(extra_rate or ()),
    )
    with progress("bench serve") as say:
        report = run_serve(settings_from(config), spec, out, progress=say)
    for target in report["targets"]:
        console.print(f"{target['target']}: {target['measured']} (met: {target['met']})")
    console.print(f"written to {out}")


@bench_app.command("soak")
@clean_errors
def bench_soak_cmd(
    config: ConfigOpt = None,
    duration: Annotated[float, typer.Option(min=60, help="Seconds of traffic")] = 1800.0,
    items: Annotated[int, typer.Option(min=100, help="Catalog size")] = 10_000,
    users: Annotated[int, typer.Option(min=100, help="Simulated users")] = 5_000,
    feed_rate: Annotated[float, typer.Option(min=1, help="Feed requests per second")] = 40.0,
    event_rate: Annotated[float, typer.Option(min=1, help="Events per second")] = 400.0,
    workers: Annotated[int, typer.Option(min=1, help="Service worker processes")] = 2,
    publish_every: Annotated[
        float, typer.Option(min=10, help="Seconds between publishes (a rollback half-way)")
    ] = 300.0,
    compact_every: Annotated[
        float, typer.Option(min=10, help="Seconds between compactions")
    ] = 600.0,
    redis_url: Annotated[str, typer.Option(help="The Redis to publish to")] = (
        "redis://127.0.0.1:6379/0"
    ),
    out: Annotated[Path, typer.Option(help="Where the report goes")] = Path("docs/benchmarks"),
) -> None:
    """Soak: mixed traffic against the real service and Redis while an operator publishes,
    rolls back and compacts; 5xx, lost events, memory and feed-log size."""
    from feedforge.bench.soak import SoakSpec, run_soak

    spec = SoakSpec(
        duration_s=duration,
        items=items,
        users=users,
        feed_rate=feed_rate,
        event_rate=event_rate,
        workers=workers,
        publish_every_s=publish_every,
        compact_every_s=compact_every,
        sample_every_s=min(30.0, duration / 20),
        redis_url=redis_url,
    )
    with progress("bench soak") as say:
        report = run_soak(settings_from(config), spec, out, progress=say)
    for target in report["targets"]:
        console.print(f"{target['target']}: {target['measured']} (met: {target['met']})")
    console.print(f"written to {out}")


@bench_app.command("experiments")
@clean_errors
def bench_experiments_cmd(
    config: ConfigOpt = None,
    users_per_run: Annotated[
        int, typer.Option(min=20, help="Users of one A/A or A/B test")
    ] = 2_000,
    days: Annotated[int, typer.Option(min=1, help="Days of one simulated experiment")] = 7,
    aa_runs: Annotated[int, typer.Option(min=10)] = 2_000,
    ab_runs: Annotated[int, typer.Option(min=10)] = 1_000,
    srm_runs: Annotated[int, typer.Option(min=10, help="Skewed runs (as many x2 unskewed)")] = 500,
    power_runs: Annotated[int, typer.Option(min=10, help="Runs per power-curve point")] = 300,
    ope_runs: Annotated[int, typer.Option(min=2)] = 200,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """A/A, A/B, SRM, interleaving and off-policy estimates over thousands of simulated
    experiments, against the simulator's ground truth."""
    from feedforge.bench.experiments import BenchSpec, run_experiments_bench

    spec = BenchSpec(
        users_per_run=users_per_run,
        days=days,
        aa_runs=aa_runs,
        ab_runs=ab_runs,
        srm_runs=srm_runs,
        srm_clean_runs=2 * srm_runs,
        power_runs=power_runs,
        ope_runs=ope_runs,
        seed=seed,
    )
    with progress("bench experiments") as say:
        report = run_experiments_bench(settings_from(config), out, spec, say)
    console.print((out / "experiments.md").read_text(encoding="utf-8"))
    console.print(f"written to {out} in {report['total_seconds']:.0f} s")


@bench_app.command("monitoring")
@clean_errors
def bench_monitoring_cmd(
    config: ConfigOpt = None,
    speed_rows: Annotated[int, typer.Option(min=1_000, help="Rows of the drift timing")] = (
        1_000_000
    ),
    feeds_per_hour: Annotated[int, typer.Option(min=1, help="Simulated requests per hour")] = 100,
    fault_hours: Annotated[int, typer.Option(min=1, help="Hours a fault may take")] = 12,
    week_hours: Annotated[int, typer.Option(min=1, help="Hours of the unshifted run")] = 168,
    cost_requests: Annotated[int, typer.Option(min=10, help="Requests per cost arm")] = 3_000,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """Drift speed, injected faults detected, false alarms over an unshifted week and the
    serving profile's cost on the request path."""
    from feedforge.bench.monitoring import BenchSpec, run_monitoring_bench

    spec = BenchSpec(
        speed_rows=speed_rows,
        feeds_per_hour=feeds_per_hour,
        fault_hours=fault_hours,
        week_hours=week_hours,
        cost_requests=cost_requests,
        seed=seed,
    )
    with progress("bench monitoring") as say:
        report = run_monitoring_bench(settings_from(config), out, spec, say)
    console.print((out / "monitoring.md").read_text(encoding="utf-8"))
    console.print(f"written to {out} in {report['total_seconds']:.0f} s")


@bench_app.command("loop")
@clean_errors
def bench_loop_cmd(
    config: ConfigOpt = None,
    days: Annotated[int, typer.Option(min=2, help="Simulated days of the drifting world")] = 14,
    users_per_day: Annotated[int, typer.Option(min=10, help="Users taking part each day")] = 1200,
    latency_items: Annotated[int, typer.Option(min=1, help="Items posted one by one")] = 100,
    seed: Annotated[int, typer.Option()] = 3,
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """Continuous training against a frozen model and popularity in a drifting simulated world,
    a broken candidate injected, and how fast a posted item reaches a feed."""
    from feedforge.bench.loop import LoopBenchSpec, run_loop_bench

    spec = LoopBenchSpec(
        days=days, users_per_day=users_per_day, latency_items=latency_items, seed=seed
    )
    with progress("bench loop") as say:
        report = run_loop_bench(settings_from(config), out, spec, say)
    console.print((out / "loop.md").read_text(encoding="utf-8"))
    console.print(f"written to {out} in {report['total_seconds']:.0f} s")


@bench_app.command("version-memory")
@clean_errors
def bench_version_memory_cmd(
    config: ConfigOpt = None,
    items: Annotated[int, typer.Option(min=100, help="Catalog size")] = 1_000_000,
    users: Annotated[int, typer.Option(min=100, help="Simulated users")] = 20_000,
    days: Annotated[int, typer.Option(min=4, help="Simulated days")] = 7,
    redis_url: Annotated[str, typer.Option(help="The Redis to publish to")] = (
        "redis://127.0.0.1:6379/0"
    ),
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """What one more loaded version (an experiment's pinned one) costs a worker's memory."""
    from feedforge.bench.version_memory import run_version_memory

    with progress("bench version-memory") as say:
        report = run_version_memory(settings_from(config), out, items, users, days, redis_url, say)
    console.print((out / "version_memory.md").read_text(encoding="utf-8"))
    console.print(f"written to {out} in {report['total_seconds']:.0f} s")


@bench_app.command("scale")
@clean_errors
def bench_scale_cmd(
    config: ConfigOpt = None,
    events: Annotated[
        list[int] | None,
        typer.Option(min=10_000, help="Log size to build (repeatable; default 1M and 10M)"),
    ] = None,
    spark_master: Annotated[str, typer.Option(help="Spark master of the Spark builds")] = (
        "local[2]"
    ),
    nproc: Annotated[
        list[int] | None, typer.Option(min=1, help="Training processes (repeatable; default 1, 2)")
    ] = None,
    serve_items: Annotated[int, typer.Option(min=100, help="Catalog size served")] = 50_000,
    serve_users: Annotated[int, typer.Option(min=100, help="Simulated users served")] = 10_000,
    serve_rate: Annotated[float, typer.Option(min=1, help="Feed requests per second")] = 100.0,
    serve_duration: Annotated[float, typer.Option(min=1, help="Seconds of load per store")] = 30.0,
    stream_seconds: Annotated[float, typer.Option(min=1, help="Seconds of appends")] = 20.0,
    part: Annotated[
        list[str] | None,
        typer.Option(help="Parts to run: build, train, serve, stream (repeatable; default all)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """Each stage on its distributed engine beside its one-machine path: the dataset build on
    Spark vs polars, DDP training with 1 and 2 processes, serving from Redis Cluster vs one
    Redis, and the event stream's durable ingestion rate."""
    from feedforge.bench.scale import ScaleSpec, run_scale

    parts = tuple(part or ScaleSpec.parts)
    unknown = sorted(set(parts) - set(ScaleSpec.parts))
    if unknown:
        raise typer.BadParameter(f"unknown part(s) {unknown}; choose from {ScaleSpec.parts}")
    spec = ScaleSpec(
        events=tuple(events or ScaleSpec.events),
        spark_master=spark_master,
        nproc=tuple(nproc or ScaleSpec.nproc),
        serve_items=serve_items,
        serve_users=serve_users,
        serve_rate=serve_rate,
        serve_duration_s=serve_duration,
        stream_seconds=stream_seconds,
        parts=parts,
    )
    with progress("bench scale") as say:
        report = run_scale(settings_from(config), spec, out, progress=say)
    for target in report["targets"]:
        console.print(f"{target['target']}: {target['measured']} (met: {target['met']})")
    console.print(f"written to {out}")
