"""``feedforge experiment create|start|stop|list|show|analyze``: online experiments as data in
the online store (:mod:`feedforge.experiments`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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
    settings_from,
)
from feedforge.workdir import Workdir

if TYPE_CHECKING:
    from feedforge.experiments.registry import ExperimentRegistry

experiment_app = typer.Typer(
    help="Online experiments: A/B tests and interleaving, defined in the online store.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")

IdArg = Annotated[str, typer.Argument(help="The experiment's id")]


@contextmanager
def _registry(config: Path | None, workdir: Path) -> Iterator[ExperimentRegistry]:
    """The experiment registry of the configured store (closed on exit)."""
    from feedforge.experiments.registry import ExperimentRegistry
    from feedforge.store.factory import open_store

    settings = settings_from(config)
    with open_store(settings.store, Workdir.at(workdir).store_path) as store:
        yield ExperimentRegistry(store)


def _print(experiment: Any) -> None:
    console.print_json(json.dumps(experiment.model_dump(mode="json")))


@experiment_app.command("create")
@clean_errors
def create_cmd(
    definition: Annotated[
        Path, typer.Argument(help="A YAML or JSON file with the experiment's definition")
    ],
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
) -> None:
    """Add a draft experiment (validated; named versions must be published)."""
    import yaml

    from feedforge.errors import ValidationError

    try:
        data = yaml.safe_load(definition.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationError(f"{definition}: cannot read the definition ({exc})") from exc
    if not isinstance(data, dict):
        raise ValidationError(f"{definition}: the definition must be a mapping")
    with _registry(config, workdir) as registry:
        experiment = registry.create(data)
    console.print(
        f"created experiment {experiment.id} (draft); start it with "
        f"`feedforge experiment start {experiment.id}`"
    )


@experiment_app.command("start")
@clean_errors
def start_cmd(
    experiment_id: IdArg, workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None
) -> None:
    """Start a draft experiment; every worker follows within serving.experiments_refresh_s."""
    with _registry(config, workdir) as registry:
        experiment = registry.start(experiment_id)
    versions = {v.name: v.version or "current" for v in experiment.variants}
    console.print(f"started experiment {experiment.id}: versions {versions}")


@experiment_app.command("stop")
@clean_errors
def stop_cmd(
    experiment_id: IdArg, workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None
) -> None:
    """Stop a running experiment (its units get the default feed again)."""
    with _registry(config, workdir) as registry:
        experiment = registry.stop(experiment_id)
    console.print(f"stopped experiment {experiment.id} at {experiment.stopped_at}")


@experiment_app.command("list")
@clean_errors
def list_cmd(workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None) -> None:
    """Every experiment with its status, layer and variants."""
    with _registry(config, workdir) as registry:
        experiments = registry.experiments()
    table = Table(
        Column("id", no_wrap=True),
        "status",
        "mode",
        "layer",
        "buckets",
        "variants",
        "primary metric",
    )
    for e in experiments:
        variants = ", ".join(f"{v.name} {v.weight:g}" for v in e.variants)
        table.add_row(
            e.id,
            e.status,
            e.mode,
            e.layer,
            f"[{e.buckets[0]}, {e.buckets[1]})",
            variants,
            e.primary_metric,
        )
    console.print(table)


@experiment_app.command("show")
@clean_errors
def show_cmd(
    experiment_id: IdArg, workdir: WorkdirOpt = DEFAULT_WORKDIR, config: ConfigOpt = None
) -> None:
    """One experiment's definition and lifecycle, as JSON."""
    with _registry(config, workdir) as registry:
        _print(registry.get(experiment_id))


@experiment_app.command("analyze")
@clean_errors
def analyze_cmd(
    experiment_id: IdArg,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="JSON output (default: WORKDIR/experiments/<id>/analysis.json)"),
    ] = None,
    alpha: Annotated[float, typer.Option(min=1e-6, max=0.5)] = 0.05,
    mixture_sd: Annotated[
        float,
        typer.Option(min=1e-6, help="The sequential test's mixing sd, in the metric's sds"),
    ] = 0.1,
) -> None:
    """Per metric and variant: means, lifts with intervals (Welch; delta method for CTR),
    CUPED, the sample-ratio check, always-valid p-values, Holm; guardrails; interleaving
    preference. Prints a table and writes JSON."""
    from feedforge.experiments.analysis import analyze_logged
    from feedforge.experiments.registry import ExperimentRegistry
    from feedforge.features.objectives import settings_value
    from feedforge.store.factory import open_store

    settings = settings_from(config)
    wd = Workdir.at(workdir)
    with open_store(settings.store, wd.store_path) as store:
        experiment = ExperimentRegistry(store).get(experiment_id)
    value = settings_value(settings)
    result = analyze_logged(experiment, wd, value, alpha=alpha, mixture_sd=mixture_sd)
    path = out or wd.root / "experiments" / experiment_id / "analysis.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    _print_analysis(result)
    console.print(f"wrote {path}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_analysis(result: dict[str, Any]) -> None:
    console.print(
        f"experiment {result['experiment']} ({result['mode']}, {result['status']}): "
        f"units {result['units']}"
    )
    if "srm" in result:
        srm = result["srm"]
        flag = "MISMATCH: untrustworthy" if srm["mismatch"] else "ok"
        console.print(f"sample ratio: chi2 {srm['chi2']:.3g}, p {srm['p_value']:.3g} ({flag})")
        table = Table(
            "metric",
            "variant",
            "control",
            "treatment",
            "lift",
            "95% CI",
            "rel. lift",
            "p (Holm)",
            "always-valid p",
            "CUPED lift",
            "CUPED var. red.",
        )
        for row in result["metrics"]:
            if "skipped" in row:
                table.add_row(row["metric"], row["variant"], row["skipped"])
                continue
            cuped = row.get("cuped") or {}
            table.add_row(
                row["metric"] + (" *" if row["primary"] else ""),
                row["variant"],
                _fmt(row["control_mean"]),
                _fmt(row["treatment_mean"]),
                _fmt(row["absolute_lift"]),
                _fmt(row["absolute_ci"]),
                _fmt(row["relative_lift"]),
                _fmt(row.get("p_value_holm")),
                _fmt(row["sequential"]["p_value"]),
                _fmt(cuped.get("absolute_lift")),
                _fmt(cuped.get("variance_reduction")),
            )
        console.print(table)
    if "interleaving" in result:
        console.print(f"interleaving: {result['interleaving']}")
    guard = Table("variant", "feeds", "latency p99 ms", "error rate", "degraded rate")
    for variant, values in result["guardrails"].items():
        guard.add_row(
            variant,
            _fmt(values["feeds"]),
            _fmt(values["latency_p99_ms"]),
            _fmt(values["error_rate"]),
            _fmt(values["degraded_rate"]),
        )
    console.print(guard)
    console.print(f"data quality: {result['data_quality']}")
    console.print(f"decision: {result['decision']}")


@app.command("simulate-online")
@clean_errors
def simulate_online_cmd(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    days: Annotated[int, typer.Option(min=1, help="Simulated days")] = 1,
    users: Annotated[int, typer.Option(min=1, help="Simulated users taking part")] = 200,
    experiment: Annotated[
        str | None, typer.Option(help="Report this running experiment's variants")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="A running `feedforge serve` (default: the service in process)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Users, sessions, responses, request ids")] = 0,
    k: Annotated[int, typer.Option(min=1, max=500, help="Feed length")] = 10,
    sessions_per_user_day: Annotated[float, typer.Option(min=0.01)] = 1.0,
) -> None:
    """Simulated users of the world request feeds, respond with events drawn from the
    ground-truth response model (posted back with the request ids) and return over simulated
    days. In process (default) the true value of every variant's feed is recorded too."""
    import polars as pl

    from feedforge.errors import ArtifactError, ValidationError
    from feedforge.events.world import WORLD_FILE, World
    from feedforge.loop.simulate import (
        FeedClient,
        HttpClient,
        InProcessClient,
        LoopResult,
        run_closed_loop,
    )
    from feedforge.serving.pipeline import FeedService
    from feedforge.store.factory import open_store

    settings = settings_from(config)
    wd = Workdir.at(workdir)
    world_path = wd.catalog_dir / WORLD_FILE
    if not world_path.is_file():
        raise ArtifactError(
            world_path, "simulate-online needs the simulator's world", wd.command("simulate")
        )
    world = World.load(world_path)

    def loop(client: FeedClient, counterfactual: bool) -> LoopResult:
        return run_closed_loop(
            world,
            client,
            users=users,
            days=days,
            seed=seed,
            k=k,
            sessions_per_user_day=sessions_per_user_day,
            counterfactual=counterfactual,
        )

    if url is not None:
        serving = settings.serving
        key = serving.api_key.get_secret_value() if serving.api_key else None
        read = serving.read_api_key.get_secret_value() if serving.read_api_key else None
        http = HttpClient(url, api_key=key, read_api_key=read)
        try:
            result = loop(http, counterfactual=False)
        finally:
            http.close()
    else:
        with open_store(settings.store, wd.store_path) as store:
            service = FeedService(settings, wd, store)
            try:
                service.versions.preload()
                service.experiments.refresh()
                result = loop(InProcessClient(service), counterfactual=True)
            finally:
                service.close()
    sessions = result.sessions
    if experiment is not None:
        sessions = sessions.filter(pl.col("experiment") == experiment)
        if not sessions.height:
            raise ValidationError(
                f"experiment {experiment!r}: no simulated session was served under it (is it "
                "running?)"
            )
    out_dir = wd.root / "simulation"
    out_dir.mkdir(parents=True, exist_ok=True)
    result.sessions.write_parquet(out_dir / "sessions.parquet")
    if result.counterfactual is not None:
        result.counterfactual.write_parquet(out_dir / "counterfactual.parquet")
    table = Table(
        "experiment",
        "variant",
        "sessions",
        "users",
        "clicks / session",
        "watch min / session",
        "true watch min / session",
    )
    summary = (
        sessions.group_by("experiment", "variant")
        .agg(
            pl.len().alias("sessions"),
            pl.col("user_id").n_unique().alias("users"),
            pl.col("clicks").mean(),
            (pl.col("watch_seconds") / 60).mean().alias("watch_min"),
            (pl.col("true_watch_seconds") / 60).mean().alias("true_watch_min"),
        )
        .sort("experiment", "variant", nulls_last=True)
    )
    for row in summary.iter_rows(named=True):
        table.add_row(
            str(row["experiment"] or "-"),
            str(row["variant"] or "-"),
            str(row["sessions"]),
            str(row["users"]),
            _fmt(row["clicks"]),
            _fmt(row["watch_min"]),
            _fmt(row["true_watch_min"]),
        )
    console.print(table)
    console.print(f"wrote {out_dir / 'sessions.parquet'}")


@app.command("ope")
@clean_errors
def ope_cmd(
    target: Annotated[
        str,
        typer.Option(
            help="A published version id, or a YAML/JSON file of a variant: version and/or "
            "overrides (candidates, history_weight, ranker, reranking)"
        ),
    ],
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    config: ConfigOpt = None,
    since: Annotated[
        str | None, typer.Option(help="Only feeds logged from this ISO time on")
    ] = None,
    clip: Annotated[float | None, typer.Option(min=1.0, help="Largest importance weight")] = None,
    window_s: Annotated[
        float, typer.Option(min=1.0, help="Attribution window of a feed's events")
    ] = 86_400.0,
    out: Annotated[Path | None, typer.Option(help="JSON output (default WORKDIR/ope/)")] = None,
) -> None:
    """Off-policy estimates (IPS, SNIPS, DR, cascade IPS) of a target policy's value per feed
    from the feed log, with effective sample size and bootstrap intervals. Refuses a log whose
    logging policy never explored."""
    from datetime import datetime

    import yaml

    from feedforge.errors import ValidationError
    from feedforge.events.log import EventLog
    from feedforge.experiments.definition import Variant
    from feedforge.experiments.online import read_feed_log
    from feedforge.features.objectives import settings_value
    from feedforge.loop.ope import logged_slates, replay
    from feedforge.serving.pipeline import FeedService
    from feedforge.store.factory import open_store

    settings = settings_from(config)
    wd = Workdir.at(workdir)
    path = Path(target)
    try:
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            variant = Variant.model_validate({"name": "target", "weight": 1.0, **data})
        else:
            variant = Variant(name="target", weight=1.0, version=target)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ValidationError(
            f"--target {target}: not a version id nor a variant file ({exc})"
        ) from exc
    try:
        start = datetime.fromisoformat(since) if since else None
    except ValueError as exc:
        raise ValidationError(f"--since: {exc} (expected an ISO time)") from exc
    if start is not None and start.tzinfo is None:
        raise ValidationError("--since: give a time zone, e.g. 2026-12-01T00:00:00Z")
    log = EventLog(wd.events_dir)
    with log.reading():
        events = log.scan().collect()
    logged = logged_slates(
        read_feed_log(wd.feedlog_dir), events, settings_value(settings), window_s, start
    )
    with open_store(settings.store, wd.store_path) as store:
        service = FeedService(settings, wd, store)
        try:
            service.versions.preload()
            result = replay(service, logged, variant, clip=clip)
        finally:
            service.close()
    name = path.stem if path.is_file() else target
    dest = out or wd.root / "ope" / f"{name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2), encoding="utf-8")
    table = Table("estimator", "value per feed", "95% CI")
    for est, values in result["estimates"].items():
        table.add_row(est, _fmt(values["value"]), _fmt(values["ci"]))
    console.print(table)
    console.print(
        f"{result['n']:,} logged feeds (value as logged {result['logged_value']:.4g}); ESS "
        f"{result['ess']:.0f} (cascade {result['ess_cascade']:.0f}); support "
        f"{result['support']:.1%}; clipped {result['clipped']}; not replayed "
        f"{result['not_replayed']}"
    )
    console.print(f"wrote {dest}")
