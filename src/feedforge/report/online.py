"""The report's steps 6 and 7: the published versions and their lineage, the last load
benchmark against the budget; drift, freshness, experiments, off-policy estimates and the
continuous-training loop's decisions. Each part says so when its stage has no data yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from feedforge.artifacts import MANIFEST
from feedforge.config import Settings
from feedforge.errors import FeedforgeError
from feedforge.experiments.analysis import analyze_logged
from feedforge.experiments.registry import ExperimentRegistry
from feedforge.features.objectives import settings_value
from feedforge.loop.runs import list_runs
from feedforge.monitoring.status import drift_report, format_age, freshness_report
from feedforge.report import charts
from feedforge.report.blocks import Section, fmt, read_json
from feedforge.store.base import OnlineStore
from feedforge.workdir import Workdir

_DRIFT_BARS = 25


def serve(
    workdir: Workdir,
    settings: Settings,
    store: OnlineStore | None,
    no_store: str,
    current: str | None,
    load_bench: Path | None,
) -> Section:
    """Step 6: the published versions (``current``, the store's pointer, marked) with their
    lineage, and the latency the last load benchmark measured against the budget."""
    section = Section(
        "serve",
        "6. Serve",
        "Embeddings and features precomputed offline in the online store; a stateless "
        "service retrieves, ranks and re-ranks each request.",
    )
    in_store = set(store.versions()) if store is not None else set()
    bundles = (
        sorted(workdir.bundles_dir.iterdir(), key=lambda p: p.name, reverse=True)
        if workdir.bundles_dir.is_dir()
        else []
    )
    rows = []
    for bundle in bundles:
        manifest = read_json(bundle / MANIFEST)
        if not isinstance(manifest, dict):
            continue
        meta = manifest.get("extra", {})
        inputs = manifest.get("inputs", {})
        state = (
            "current"
            if bundle.name == current
            else ("in store" if bundle.name in in_store else "bundle only")
        )
        rows.append(
            [
                bundle.name,
                state,
                str(meta.get("published_at", ""))[:19].replace("T", " "),
                meta.get("retrieval_model"),
                meta.get("ranker"),
                inputs.get("dataset"),
                ", ".join(
                    f"{k.removeprefix('model/')} {v}" for k, v in inputs.items() if k != "dataset"
                ),
            ]
        )
    if store is None and bundles:
        section.text(f"{no_store.capitalize()}: the versions are read from the bundles.")
    if rows:
        section.source("serving version", current)
        section.table(
            "Published versions and their lineage (newest first)",
            ["version", "state", "published (UTC)", "retrieval", "ranker", "dataset", "models"],
            rows,
        )
    else:
        section.empty(
            "Published versions", f"nothing published yet: run {workdir.command('publish')}"
        )
    _load_bench(section, settings, load_bench)
    return section


def _load_bench(section: Section, settings: Settings, path: Path | None) -> None:
    bench = read_json(path) if path is not None else None
    if not isinstance(bench, dict) or "feeds" not in bench:
        where = f" ({path} not found)" if path is not None else ""
        section.empty(
            "Latency under load",
            f"no load benchmark{where}: feedforge bench serve writes one",
        )
        return
    section.source("load benchmark", str(path))
    budget = settings.serving.latency_budget_ms
    runs = [bench["feeds"], *bench.get("sweep", [])]
    rows = [
        {"rate": f"{r['offered_rate']:g} req/s", "percentile": p, "ms": r[f"{p}_ms"]}
        for r in runs
        for p in ("p50", "p95", "p99")
    ]
    section.table(
        f"Latency under load (budget {budget:g} ms); command: {bench.get('command', '?')}",
        ["offered rate", "throughput", "p50 ms", "p95 ms", "p99 ms", "errors", "within budget"],
        [
            [
                f"{r['offered_rate']:g}/s",
                r.get("throughput_rps"),
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r.get("errors"),
                "yes" if r["p99_ms"] <= budget else f"no: p99 {r['p99_ms'] - budget:+.1f} ms",
            ]
            for r in runs
        ],
    )
    section.chart(
        "Latency percentiles by offered rate",
        charts.grouped_bars(rows, "rate", "ms", "percentile"),
        note=f"The latency budget is {budget:g} ms per feed.",
    )


def monitor(
    workdir: Workdir, settings: Settings, store: OnlineStore | None, no_store: str
) -> Section:
    """Step 7: drift, freshness, experiments, off-policy estimates, the loop's runs."""
    section = Section(
        "monitor",
        "7. Monitor",
        "Drift, freshness and online KPIs of the running system, and the loop that "
        "retrains, gates, canaries and promotes.",
    )
    if store is None:
        section.empty("Freshness, drift and experiments", no_store)
    else:
        _freshness(section, workdir, store, settings)
        _drift(section, workdir, store, settings)
        _experiments(section, workdir, store, settings)
    _ope(section, workdir)
    _loop(section, workdir)
    return section


def _freshness(section: Section, workdir: Workdir, store: OnlineStore, settings: Settings) -> None:
    report = freshness_report(workdir, store, settings)
    names = ("published_version", "feature_snapshot", "newest_event", "precomputed_feeds")
    section.table(
        f"Freshness (checked {report['checked_at'][:19].replace('T', ' ')} UTC)",
        ["what", "at (UTC)", "age", "threshold", "stale"],
        [
            [
                name.replace("_", " "),
                str(report[name]["at"] or "–")[:19].replace("T", " "),
                _age(report[name]["age_seconds"]),
                _age(report[name]["threshold_seconds"]),
                report[name]["stale"],
            ]
            for name in names
        ],
    )


def _age(seconds: float | None) -> str:
    return "–" if seconds is None else format_age(seconds)


def _drift(section: Section, workdir: Workdir, store: OnlineStore, settings: Settings) -> None:
    if store.current_version() is None:
        section.empty("Drift", "nothing is published, so nothing is served")
        return
    try:
        report = drift_report(workdir, store, settings)
    except FeedforgeError as exc:
        section.empty("Drift", f"not measurable: {exc}")
        return
    if not report["variants"]:
        section.empty(
            "Drift",
            f"version {report['version']} has no served rows profiled yet (the service "
            "profiles a sample of the feeds it serves)",
        )
        return
    rows, table = [], []
    for variant, entry in report["variants"].items():
        against = entry.get(report["baseline"], {})
        if against.get("filling"):
            against = entry.get("training", {})
        for column in against.get("columns", []):
            rows.append({"feature": f"{column['feature']} ({variant})", "psi": column["psi"]})
            table.append(
                [variant, column["feature"], column["psi"], column.get("statistic"),
                 column.get("value"), column.get("drifted")]
            )  # fmt: skip
    section.source("serving profile", report["version"])
    worst = sorted(rows, key=lambda r: -r["psi"])[:_DRIFT_BARS]
    section.chart(
        f"Drift per feature (PSI) of version {report['version']}"
        + (f", the {_DRIFT_BARS} largest" if len(rows) > _DRIFT_BARS else ""),
        charts.horizontal_bars(worst, "feature", "psi", title="population stability index"),
    )
    section.table("Drift", ["variant", "feature", "PSI", "statistic", "value", "drifted"], table)


def _experiments(
    section: Section, workdir: Workdir, store: OnlineStore, settings: Settings
) -> None:
    experiments = ExperimentRegistry(store).experiments()
    if not experiments:
        section.empty("Experiments", "no experiment defined (feedforge experiment create)")
        return
    value = settings_value(settings)
    rows: list[list[Any]] = []
    points: list[dict[str, Any]] = []
    decisions: list[tuple[str, Any]] = []
    for experiment in experiments:
        try:
            result = analyze_logged(experiment, workdir, value)
        except FeedforgeError as exc:
            decisions.append((f"{experiment.id} ({experiment.status})", f"not analysed: {exc}"))
            continue
        decisions.append((f"{experiment.id} ({experiment.status})", result.get("decision")))
        for metric in result.get("metrics", []):
            if "skipped" in metric:
                continue
            ci = metric.get("absolute_ci") or [None, None]
            rows.append(
                [
                    experiment.id,
                    metric["metric"] + (" (primary)" if metric.get("primary") else ""),
                    metric["variant"],
                    metric.get("control_mean"),
                    metric.get("treatment_mean"),
                    metric.get("absolute_lift"),
                    fmt(ci),
                ]
            )
            if metric.get("primary") and None not in ci:
                points.append(
                    {
                        "arm": f"{experiment.id}: {metric['variant']}",
                        "lift": metric["absolute_lift"],
                        "low": ci[0],
                        "high": ci[1],
                    }
                )
    section.table(
        "Experiments: lifts against control (95 % interval)",
        ["experiment", "metric", "variant", "control", "treatment", "lift", "interval"],
        rows,
    )
    section.facts("Experiment decisions", decisions)
    section.chart(
        "Primary metric lift per variant",
        charts.estimates(points, "arm", "lift", "low", "high", title="absolute lift"),
    )


def _ope(section: Section, workdir: Workdir) -> None:
    directory = workdir.root / "ope"
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    rows, points = [], []
    for path in files:
        result = read_json(path)
        if not isinstance(result, dict) or "estimates" not in result:
            continue
        section.source("off-policy estimate", path.name)
        for estimator, values in result["estimates"].items():
            ci = values.get("ci") or [None, None]
            rows.append([path.stem, estimator, values.get("value"), fmt(ci), result.get("n"),
                         result.get("ess"), result.get("logged_value")])  # fmt: skip
            if None not in ci:
                points.append({"estimate": f"{path.stem} {estimator}", "value": values["value"],
                               "low": ci[0], "high": ci[1]})  # fmt: skip
    if not rows:
        section.empty("Off-policy estimates", "none yet (feedforge ope --target VERSION)")
        return
    section.table(
        "Off-policy estimates of value per feed",
        ["target", "estimator", "value", "95 % interval", "feeds", "ESS", "as logged"],
        rows,
    )
    section.chart(
        "Off-policy estimates",
        charts.estimates(points, "estimate", "value", "low", "high", zero_rule=False),
    )


def _loop(section: Section, workdir: Workdir) -> None:
    try:
        runs = list_runs(workdir)
    except FeedforgeError as exc:
        section.empty("Continuous training", f"the loop's runs could not be read: {exc}")
        return
    if not runs:
        section.empty("Continuous training", "no loop run yet (feedforge loop run)")
        return
    rows = []
    for run in runs[-20:]:
        data = run.data
        gates = ", ".join(
            f"{g.get('name')} "
            + ("skipped" if g.get("skipped") else "pass" if g.get("passed") else "fail")
            for g in data.get("gates", [])
            if isinstance(g, dict)
        )
        row: list[Any] = [run.run_id, data.get("trigger"), run.status, data.get("incumbent"),
                          data.get("candidate"), gates, data.get("decision")]  # fmt: skip
        rows.append(row)
    section.table(
        "Continuous-training runs (latest 20)",
        ["run", "trigger", "status", "incumbent", "candidate", "gates", "decision"],
        rows,
    )
