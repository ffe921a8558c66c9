"""The pipeline's commands: simulate or import, build, train, evaluate, publish, batch-score,
and ``demo``, which runs them in order."""

from __future__ import annotations

import contextlib
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

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

    with progress("build") as say:
        manifest = build_dataset(workdir, settings, say)
    console.print(f"dataset {manifest.version}: {manifest.counts}")


def run_train(workdir: Workdir, settings: Settings, nproc: int = 1) -> None:
    from feedforge.models.train import train_distributed

    with progress("train") as say:
        saved = train_distributed(workdir, settings, nproc, say)
    console.print(f"trained: {', '.join(saved)}")


def run_evaluate(workdir: Workdir, settings: Settings) -> dict[str, Any]:
    from feedforge.evaluation.evaluate import evaluate

    with progress("evaluate") as say:
        report = evaluate(workdir, settings, say)
    print_report(report)
    console.print(f"report written to {workdir.reports_dir / 'evaluation.json'}")
    return report


def run_publish(workdir: Workdir, settings: Settings) -> str:
    from feedforge.publish.publisher import publish
    from feedforge.store.factory import open_store

    with open_store(settings.store, workdir.store_path) as store, progress("publish") as say:
        version = publish(workdir, settings, store, say)
    console.print(f"published version {version} to the {settings.store.type} store")
    return version


def _reset_live_state(workdir: Workdir, settings: Settings) -> None:
    """Forget the live state left in the store by an earlier run: user histories and items
    posted since its last publish (the demo rebuilds the world from scratch, so they belong
    to the old event log and catalog)."""
    from feedforge.store.factory import open_store
    from feedforge.store.live_items import update_live_items

    with open_store(settings.store, workdir.store_path) as store:
        store.clear_histories()
        update_live_items(store, lambda _entries: {})


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
@clean_errors
def simulate_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing raw data")] = False,
) -> None:
    """Generate the synthetic world: catalog, users and an event log."""
    run_simulate(Workdir.at(workdir), settings_from(config), overwrite)


@app.command("import")
@clean_errors
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
    config: ConfigOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing raw data")] = False,
) -> None:
    """Import a real dataset into the work directory's event log and catalog."""
    from feedforge.events.importers import import_dataset

    # The import reads no setting, but a bad file should fail now, not at `build` after a
    # long import.
    settings_from(config)
    with progress("import") as say:
        summary = import_dataset(
            source, data_dir, Workdir.at(workdir), overwrite=overwrite, progress=say
        )
    console.print(
        f"imported {summary.events_written} events ({summary.duplicates} duplicate rows "
        f"dropped), {summary.users} users, {summary.items} items"
    )


class BuildEngine(StrEnum):
    """``feedforge build --engine``: see ``dataset.engine``."""

    polars = "polars"
    spark = "spark"


@app.command("build")
@clean_errors
def build_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    engine: Annotated[
        BuildEngine | None,
        typer.Option(help="What computes the build (default: dataset.engine, polars)"),
    ] = None,
    spark_master: Annotated[
        str | None,
        typer.Option(help="Spark master of --engine spark (default: dataset.spark_master)"),
    ] = None,
) -> None:
    """Build leak-free datasets (temporal split, id maps, ranking examples, card)."""
    settings = settings_from(config)
    overrides = {
        key: value
        for key, value in (
            ("engine", engine.value if engine else None),
            ("spark_master", spark_master),
        )
        if value is not None
    }
    if overrides:
        settings = settings.model_copy(
            update={"dataset": settings.dataset.model_copy(update=overrides)}
        )
    run_build(Workdir.at(workdir), settings)


@app.command("train")
@clean_errors
def train_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="Training processes: the torch models (two-tower, SASRec, DCN) train with "
            "PyTorch DDP under torchrun (gloo on CPU, NCCL with one GPU each)",
        ),
    ] = 1,
) -> None:
    """Train the popularity baseline, the retrieval model and the ranker."""
    run_train(Workdir.at(workdir), settings_from(config), nproc)


@app.command("evaluate")
@clean_errors
def evaluate_cmd(workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None) -> None:
    """Evaluate every model on the test split; writes reports/evaluation.json."""
    run_evaluate(Workdir.at(workdir), settings_from(config))


@app.command("publish")
@clean_errors
def publish_cmd(workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None) -> None:
    """Publish embeddings, features and models as a new version of the online store."""
    run_publish(Workdir.at(workdir), settings_from(config))


@app.command("batch-score")
@clean_errors
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

    settings = settings_from(config)
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


@app.command("demo")
@clean_errors
def demo_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
) -> None:
    """Run every stage in order on the simulator, print the evaluation table and write the
    HTML report."""
    settings = settings_from(config)
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
    from feedforge.cli.report import run_report

    page = run_report(wd, settings, config)
    console.print(f"open the report: {page}")
    console.print(f"demo finished in {time.perf_counter() - started:.1f}s. Serve it with:")
    console.print(f"  feedforge serve --workdir {wd.root}")
