"""Operating a deployment: serve the API, compact the event log, roll back a version."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from feedforge.cli.common import (
    DEFAULT_WORKDIR,
    ConfigOpt,
    WorkdirOpt,
    app,
    clean_errors,
    console,
    settings_from,
)
from feedforge.workdir import Workdir


@app.command("compact")
@clean_errors
def compact_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    before: Annotated[
        str | None,
        typer.Option(help="Only days before this one, YYYY-MM-DD (default: today, UTC)"),
    ] = None,
) -> None:
    """Merge each day of the event log into one Parquet file (the service writes one file
    per request). Run it when no build or publish reads the log."""
    from datetime import UTC, date, datetime

    from feedforge.errors import ArtifactError, ValidationError
    from feedforge.events.log import EventLog

    settings_from(config)  # no setting applies; a bad file fails here, as for any command
    try:
        until = date.fromisoformat(before) if before else datetime.now(UTC).date()
    except ValueError as exc:
        raise ValidationError(f"--before: {exc} (expected YYYY-MM-DD)") from exc
    wd = Workdir.at(workdir)
    if not wd.root.is_dir():  # a mistyped --workdir, not an empty log
        raise ArtifactError(wd.root, "missing work directory", wd.command("simulate"))
    result = EventLog(wd.events_dir).compact(before=until)
    console.print(
        f"compacted {result.partitions} day(s) before {until}: {result.files_before} files "
        f"-> {result.files_after}, {result.events} events, in {wd.events_dir}"
    )


@app.command("rollback")
@clean_errors
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

    settings = settings_from(config)
    wd = Workdir.at(workdir)
    with open_store(settings.store, wd.store_path) as store:
        previous, current = rollback(wd, store, to)
    console.print(f"rolled back: current version {current} (was {previous})")


@app.command("serve")
@clean_errors
def serve_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Default: serving.host")] = None,
    port: Annotated[int | None, typer.Option(help="Default: serving.port")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
) -> None:
    """Serve the feed API (GET /recommend, POST /events, /health, /metrics, /docs).

    With several workers (or ``PROMETHEUS_MULTIPROC_DIR`` set), /metrics adds up every
    worker's counts (:mod:`feedforge.monitoring.metrics`): in the directory the variable
    names, emptied first, else in a temporary one of this run, removed at exit.
    """
    import uvicorn

    from feedforge.monitoring.logs import log_config
    from feedforge.monitoring.metrics import multiprocess_metrics

    settings = settings_from(config)
    wd = Workdir.at(workdir)
    os.environ["FEEDFORGE_WORKDIR"] = str(wd.root)
    if config is not None:
        os.environ["FEEDFORGE_CONFIG"] = str(config.resolve())
    with multiprocess_metrics(workers):
        uvicorn.run(
            "feedforge.serving.app:create_app_from_env",
            factory=True,
            host=host or settings.serving.host,
            port=port or settings.serving.port,
            workers=workers,
            log_config=log_config(settings.serving.log_format),
            access_log=settings.serving.access_log,
            # Bound the request line plus headers: uvicorn's h11 parser answers 400 past
            # h11_max_incomplete_event_size; its httptools parser has no such bound at all.
            http=settings.serving.http,
            h11_max_incomplete_event_size=settings.serving.max_header_bytes,
        )


@app.command("ingest")
@clean_errors
def ingest_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    name: Annotated[
        str | None,
        typer.Option(help="This consumer's name in the group (default: <host>-<pid>)"),
    ] = None,
    until_idle: Annotated[
        bool, typer.Option(help="Stop when a read finds nothing new (default: run until stopped)")
    ] = False,
) -> None:
    """Write the shared event stream (events.stream: redis) to the event log, exactly once
    per event_id, and update the users' live histories. Run one or more anywhere the log's
    directory is reachable; SIGTERM or Ctrl-C finishes the batch in progress and stops."""
    import signal
    import threading

    from feedforge.events.log import EventLog
    from feedforge.serving.stream_ingest import history_updater, open_consumer, run_consumer
    from feedforge.store.factory import open_store

    settings = settings_from(config)
    wd = Workdir.at(workdir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    consumer = open_consumer(settings, name)
    try:
        with open_store(settings.store, wd.store_path) as store:
            updater = history_updater(store, settings, wd)
            console.print(
                f"ingesting {settings.events.stream_key} as {consumer.consumer} "
                f"(group {settings.events.group}) into {wd.events_dir}"
            )
            total = run_consumer(
                consumer,
                EventLog(wd.events_dir),
                updater,
                stop,
                until_idle=until_idle,
                report=lambda s: console.print(
                    f"{s.entries} entries, {s.written} events written, "
                    f"{s.duplicates} duplicates, {s.claimed} claimed"
                ),
            )
            updater.pending.close(store, settings.serving.history_length)
    finally:
        consumer.close()
    console.print(
        f"ingested {total.entries} entries: {total.written} events written, "
        f"{total.duplicates} duplicates skipped, {total.claimed} entries claimed from "
        "stopped consumers"
    )
