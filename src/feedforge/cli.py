"""The ``feedforge`` command line: one command per pipeline stage, plus ``demo``.

Every command takes ``--workdir`` (where artifacts live) and ``--config`` (a YAML file; see
:mod:`feedforge.config`). Errors raised on purpose print one clear message, not a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from feedforge.config import Settings, load_settings
from feedforge.errors import FeedforgeError
from feedforge.workdir import Workdir

app = typer.Typer(
    name="feedforge",
    help="An open personalized-feed engine: simulate -> build -> train -> evaluate -> "
    "publish -> serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

WorkdirOpt = Annotated[
    Path, typer.Option("--workdir", "-w", help="Work directory holding every artifact")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file", exists=False)
]
DEFAULT_WORKDIR = Path("work")

F = TypeVar("F", bound=Callable[..., Any])


def _clean_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FeedforgeError as exc:
            # The message is plain text (paths may hold "[...]"), never wrapped or styled.
            err_console.print("error:", exc.message, style="bold red", markup=False)
            raise typer.Exit(code=1) from exc

    return wrapper  # type: ignore[return-value]


@contextmanager
def _progress(title: str) -> Iterator[Callable[[str], None]]:
    """A Rich progress line for a stage; yields a callback that updates its description."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(title, total=None)
        yield lambda msg: bar.update(task, description=f"{title}: {msg}")
        bar.update(task, description=f"{title}: done", total=1, completed=1)


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


def run_simulate(workdir: Workdir, settings: Settings, overwrite: bool = False) -> None:
    from feedforge.events.simulator import simulate

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} days"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("simulate", total=settings.simulator.n_days)
        summary = simulate(
            settings.simulator,
            workdir,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            overwrite=overwrite,
        )
    console.print(f"simulated events: {summary.counts}")


def run_build(workdir: Workdir, settings: Settings) -> None:
    from feedforge.datasets.build import build_dataset

    with _progress("build") as say:
        manifest = build_dataset(workdir, settings, say)
    console.print(f"dataset {manifest.version}: {manifest.counts}")


def run_train(workdir: Workdir, settings: Settings) -> None:
    from feedforge.models.train import train_models

    with _progress("train") as say:
        saved = train_models(workdir, settings, say)
    console.print(f"trained: {', '.join(saved)}")


def run_evaluate(workdir: Workdir, settings: Settings) -> dict[str, Any]:
    from feedforge.evaluation.evaluate import evaluate

    with _progress("evaluate") as say:
        report = evaluate(workdir, settings, say)
    print_report(report)
    console.print(f"report written to {workdir.reports_dir / 'evaluation.json'}")
    return report


def run_publish(workdir: Workdir, settings: Settings) -> str:
    from feedforge.publish.publisher import publish
    from feedforge.store.factory import open_store

    with open_store(settings.store, workdir.store_path) as store, _progress("publish") as say:
        version = publish(workdir, settings, store, say)
    console.print(f"published version {version} to the {settings.store.type} store")
    return version


def _reset_live_state(workdir: Workdir, settings: Settings) -> None:
    """Forget live user histories left in the store by an earlier run (the demo rebuilds the
    world from scratch, so histories of the old event log would be stale)."""
    from feedforge.store.factory import open_store

    with open_store(settings.store, workdir.store_path) as store:
        store.clear_histories()


def print_report(report: dict[str, Any]) -> None:
    """Print the evaluation report as a table."""
    k = report["k"]
    names = ["ndcg", "recall", "map", "hitrate", "coverage"]
    table = Table(
        title=f"Test split, objective {report['objective']}, "
        f"{report['users_evaluated']} users (protocol {report['protocol']})"
    )
    first: dict[str, float] = next(iter(report["models"].values()), {})
    # The objective's observed value, when it has one.
    valued = ("watch_minutes@", "revenue@", "value@")
    names += [n.removesuffix(f"@{k}") for n in first if n.startswith(valued)]
    table.add_column("model")
    for name in names:
        table.add_column(f"{name}@{k}", justify="right")
    for model, metrics in report["models"].items():
        table.add_row(model, *(f"{metrics[f'{n}@{k}']:.4f}" for n in names))
    console.print(table)
    ranker = report.get("ranker")
    if ranker and ranker["auc"] is not None:
        loss = "" if ranker["log_loss"] is None else f", log loss {ranker['log_loss']:.4f}"
        console.print(
            f"ranker {ranker['model']} on {ranker['impressions']} test impressions: "
            f"AUC {ranker['auc']:.4f}{loss}"
        )
    for head, m in (ranker or {}).get("heads", {}).items():
        parts = [f"{key} {m[key]:.4f}" for key in _HEAD_METRICS if m.get(key) is not None]
        console.print(f"  head {head}: " + ", ".join(parts))


_HEAD_METRICS = ("auc", "log_loss", "ece", "calibration_ratio")


@app.command("simulate")
@_clean_errors
def simulate_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing raw data")] = False,
) -> None:
    """Generate the synthetic world: catalog, users and an event log."""
    run_simulate(Workdir.at(workdir), _settings(config), overwrite)


@app.command("import")
@_clean_errors
def import_cmd(
    source: Annotated[
        str,
        typer.Option(
            "--dataset",
            help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest, ml-latest-small, csv, "
            "parquet or user-item-text",
        ),
    ],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Dataset directory or file")],
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    overwrite: Annotated[bool, typer.Option(help="Replace existing raw data")] = False,
) -> None:
    """Import a real dataset into the work directory's event log and catalog."""
    from feedforge.events.importers import import_dataset

    with _progress("import") as say:
        summary = import_dataset(
            source, data_dir, Workdir.at(workdir), overwrite=overwrite, progress=say
        )
    console.print(
        f"imported {summary.events_written} events ({summary.duplicates} duplicate rows "
        f"dropped), {summary.users} users, {summary.items} items"
    )


bench_app = typer.Typer(
    help="Benchmarks: quality and speed tables for docs/benchmarks.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("quality")
@_clean_errors
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
    models: Annotated[
        list[str] | None, typer.Option("--model", help="Only these models (repeatable)")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """Train, tune (on validation) and evaluate every model and the peers on one protocol."""
    from feedforge.bench.quality import run_quality

    with _progress("bench quality") as say:
        report = run_quality(
            dataset, data_dir, protocol, out, negatives=negatives, models=models, progress=say
        )
    table = Table(title=f"{dataset} / {report['protocol']}")
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
@_clean_errors
def bench_ranking_cmd(
    config: ConfigOpt = None,
    feed_users: Annotated[
        int, typer.Option(min=1, help="Test users whose feeds are scored with ground truth")
    ] = 2_000,
    out: Annotated[Path, typer.Option(help="Where the tables go")] = Path("docs/benchmarks"),
) -> None:
    """Every ranker against logistic regression on simulator data (with ground truth)."""
    from feedforge.bench.ranking import run_ranking

    with _progress("bench ranking") as say:
        report = run_ranking(_settings(config), out, feed_users=feed_users, progress=say)
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
@_clean_errors
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
    with _progress("bench serve") as say:
        report = run_serve(_settings(config), spec, out, progress=say)
    for target in report["targets"]:
        console.print(f"{target['target']}: {target['measured']} (met: {target['met']})")
    console.print(f"written to {out}")


@app.command("build")
@_clean_errors
def build_cmd(workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None) -> None:
    """Build leak-free datasets (temporal split, id maps, ranking examples, card)."""
    run_build(Workdir.at(workdir), _settings(config))


@app.command("train")
@_clean_errors
def train_cmd(workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None) -> None:
    """Train the popularity baseline, the retrieval model and the ranker."""
    run_train(Workdir.at(workdir), _settings(config))


@app.command("evaluate")
@_clean_errors
def evaluate_cmd(workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None) -> None:
    """Evaluate every model on the test split; writes reports/evaluation.json."""
    run_evaluate(Workdir.at(workdir), _settings(config))


@app.command("publish")
@_clean_errors
def publish_cmd(workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None) -> None:
    """Publish embeddings, features and models as a new version of the online store."""
    run_publish(Workdir.at(workdir), _settings(config))


@app.command("batch-score")
@_clean_errors
def batch_score_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    top_n: Annotated[int, typer.Option(min=1, help="Items per user")] = 100,
    out: Annotated[
        Path | None, typer.Option(help="Parquet file; default WORKDIR/batch/feeds.parquet")
    ] = None,
    to_store: Annotated[
        bool,
        typer.Option(help="Also store them as precomputed feeds of the current version"),
    ] = False,
    chunk_users: Annotated[int, typer.Option(min=1, help="Users scored per chunk")] = 2_000,
) -> None:
    """Offline batch scoring: top-N of every user, in chunks, into Parquet (and the store)."""
    from feedforge.publish.batch import batch_score
    from feedforge.store.factory import open_store

    settings = _settings(config)
    wd = Workdir.at(workdir)
    path = out or wd.root / "batch" / "feeds.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(open_store(settings.store, wd.store_path)) if to_store else None
        bar = stack.enter_context(
            Progress(
                TextColumn("[bold]batch-score"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} users"),
                TimeElapsedColumn(),
                console=console,
            )
        )
        task = bar.add_task("batch-score", total=None)
        result = batch_score(
            wd,
            settings,
            top_n,
            path,
            store,
            chunk_users,
            lambda done, total: bar.update(task, completed=done, total=total),
        )
    stored = f"; stored as precomputed feeds of {result.version}" if result.version else ""
    console.print(f"{result.rows} rows for {result.users} users written to {path}{stored}")


@app.command("compact")
@_clean_errors
def compact_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    before: Annotated[
        str | None,
        typer.Option(help="Only days before this one, YYYY-MM-DD (default: today, UTC)"),
    ] = None,
) -> None:
    """Merge each day of the event log into one Parquet file (the service writes one file
    per request). Run it when no build or publish reads the log."""
    from datetime import UTC, date, datetime

    from feedforge.errors import ValidationError
    from feedforge.events.log import EventLog

    try:
        until = date.fromisoformat(before) if before else datetime.now(UTC).date()
    except ValueError as exc:
        raise ValidationError(f"--before: {exc} (expected YYYY-MM-DD)") from exc
    wd = Workdir.at(workdir)
    result = EventLog(wd.events_dir).compact(before=until)
    console.print(
        f"compacted {result.partitions} day(s) before {until}: {result.files_before} files "
        f"-> {result.files_after}, {result.events} events, in {wd.events_dir}"
    )


@app.command("rollback")
@_clean_errors
def rollback_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    to: Annotated[
        str | None, typer.Option(help="Version to return to (default: the one before)")
    ] = None,
) -> None:
    """Make an earlier published version current again (atomic; services follow it)."""
    from feedforge.publish.versions import rollback
    from feedforge.store.factory import open_store

    settings = _settings(config)
    wd = Workdir.at(workdir)
    with open_store(settings.store, wd.store_path) as store:
        previous, current = rollback(wd, store, to)
    console.print(f"rolled back: current version {current} (was {previous})")


@app.command("serve")
@_clean_errors
def serve_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Default: serving.host")] = None,
    port: Annotated[int | None, typer.Option(help="Default: serving.port")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
) -> None:
    """Serve the feed API (GET /recommend, POST /events, /health, /docs)."""
    import uvicorn

    from feedforge.monitoring.logs import log_config

    settings = _settings(config)
    wd = Workdir.at(workdir)
    os.environ["FEEDFORGE_WORKDIR"] = str(wd.root)
    if config is not None:
        os.environ["FEEDFORGE_CONFIG"] = str(config.resolve())
    uvicorn.run(
        "feedforge.serving.app:create_app_from_env",
        factory=True,
        host=host or settings.serving.host,
        port=port or settings.serving.port,
        workers=workers,
        log_config=log_config(settings.serving.log_format),
        access_log=settings.serving.access_log,
    )


@app.command("demo")
@_clean_errors
def demo_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
) -> None:
    """Run every stage in order on the simulator and print the evaluation table."""
    settings = _settings(config)
    wd = Workdir.at(workdir)
    started = time.perf_counter()
    console.rule("[bold]feedforge demo")
    console.print(f"work directory: {wd.root}; objective: {settings.objective}")
    run_simulate(wd, settings, overwrite=True)
    _reset_live_state(wd, settings)
    run_build(wd, settings)
    run_train(wd, settings)
    report = run_evaluate(wd, settings)
    run_publish(wd, settings)
    best = max(report["models"], key=lambda m: report["models"][m][f"ndcg@{report['k']}"])
    console.print(f"best model on NDCG@{report['k']}: [bold]{best}[/]")
    console.print(f"demo finished in {time.perf_counter() - started:.1f}s. Serve it with:")
    console.print(f"  feedforge serve --workdir {wd.root}")


def main() -> None:
    """Entry point of the ``feedforge`` script."""
    app()
