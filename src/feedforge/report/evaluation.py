"""The report's step 5: every model's offline metrics with their confidence intervals,
metric@K curves, calibration, coverage and diversity, the objective's value@K, and the latest
evaluation run against the earlier ones."""

from __future__ import annotations

from typing import Any

from feedforge.report import charts
from feedforge.report.blocks import Section, interval
from feedforge.workdir import Workdir

_VALUE_PREFIXES = ("watch_minutes@", "revenue@", "value@")
_HEAD_TITLES = {
    "label": "p(label)",
    "click": "p(click)",
    "purchase": "p(purchase)",
    "watch": "watch seconds",
    "revenue": "revenue",
}


Runs = list[tuple[str, dict[str, Any]]]
"""The kept evaluation runs, oldest first (:func:`~feedforge.evaluation.history.
evaluation_history`)."""


def evaluate(workdir: Workdir, runs: Runs, unreadable: list[str]) -> Section:
    """Step 5 from the kept evaluation runs (the latest and the earlier ones) and the names
    of the history files that could not be read."""
    section = Section(
        "evaluate",
        "5. Evaluate",
        "Offline: every model on the test split (temporal protocol), with bootstrap "
        "confidence intervals over the test users.",
    )
    if unreadable:
        section.text(f"Unreadable evaluation files, skipped: {', '.join(unreadable)}.")
    if not runs:
        section.empty("Offline evaluation", f"no evaluation yet: run {workdir.command('evaluate')}")
        return section
    name, report = runs[-1]
    section.source("evaluation run", name)
    section.source("dataset (evaluated)", report.get("dataset_version"))
    for model, version in report.get("model_versions", {}).items():
        section.source(f"model {model} (evaluated)", version)
    k = report["k"]
    _metrics_table(section, report, k)
    _curves(section, report)
    _coverage(section, report, k)
    _calibration(section, report)
    _history(section, runs, k)
    return section


def _metrics_table(section: Section, report: dict[str, Any], k: int) -> None:
    models: dict[str, dict[str, float]] = report["models"]
    intervals: dict[str, dict[str, list[float]]] = report.get("intervals", {})
    first = next(iter(models.values()), {})
    names = [f"{m}@{k}" for m in ("ndcg", "recall", "map", "hitrate")]
    names += [n for n in first if n.startswith(_VALUE_PREFIXES)]
    level = report.get("confidence")
    section.facts(
        "The evaluation run",
        [
            ("objective", report.get("objective")),
            ("protocol", report.get("protocol")),
            ("test users", report.get("users_evaluated")),
            ("run at (UTC)", str(report.get("created_at", "–"))[:19].replace("T", " ")),
            (
                "intervals",
                f"{level:.0%} percentile bootstrap, {report.get('bootstrap_resamples')} "
                "resamples of the test users"
                if level
                else "none (evaluated by an older feedforge)",
            ),
        ],
    )
    section.table(
        f"Metrics at k = {k} (mean [interval])",
        ["model", *names],
        [
            [model, *(interval(m.get(n), intervals.get(model, {}).get(n)) for n in names)]
            for model, m in models.items()
        ],
    )
    primary = names[-1] if names[-1].startswith(_VALUE_PREFIXES) else f"ndcg@{k}"
    rows = [
        {
            "model": model,
            "value": m[primary],
            "low": intervals.get(model, {}).get(primary, [m[primary]] * 2)[0],
            "high": intervals.get(model, {}).get(primary, [m[primary]] * 2)[1],
        }
        for model, m in models.items()
        if m.get(primary) is not None
    ]
    section.chart(
        f"Baselines against stronger models: {primary}",
        charts.estimates(rows, "model", "value", "low", "high", title=primary, zero_rule=False),
    )


def _curves(section: Section, report: dict[str, Any]) -> None:
    curves: dict[str, dict[str, list[float]]] = report.get("curves", {})
    rows = [
        {"model": model, "K": k, "metric": metric, "value": value}
        for model, curve in curves.items()
        for metric, values in curve.items()
        if metric not in ("k", "precision")
        for k, value in zip(curve["k"], values, strict=True)
    ]
    if not rows:
        section.empty("Metric@K curves", "the run has no curves (evaluated by an older feedforge)")
        return
    section.chart(
        "Metric@K curves (the objective's value@K among them)",
        charts.lines(rows, "K", "value", "model", facet="metric", x_title="K", y_title=None),
    )


def _coverage(section: Section, report: dict[str, Any], k: int) -> None:
    rows = [
        {"measure": measure, "model": model, "value": m[f"{measure}@{k}"]}
        for model, m in report["models"].items()
        for measure in ("coverage", "diversity")
        if m.get(f"{measure}@{k}") is not None
    ]
    section.chart(
        f"Catalog coverage and intra-list diversity at k = {k}",
        charts.grouped_bars(rows, "measure", "value", "model"),
        note="Coverage: share of the catalog in some user's top k. Diversity: mean share of "
        "item pairs in a top-k list whose categories differ.",
    )


def _calibration(section: Section, report: dict[str, Any]) -> None:
    ranker = report.get("ranker")
    if not ranker:
        section.empty("Ranker calibration", "no ranker was evaluated")
        return
    section.facts(
        f"Ranker {ranker['model']} on {ranker.get('impressions', 0):,} test impressions",
        [
            ("AUC", ranker.get("auc")),
            ("log loss", ranker.get("log_loss")),
            ("expected calibration error", ranker.get("ece")),
            (f"request NDCG@{report['k']}", ranker.get(f"ndcg@{report['k']}")),
        ],
    )
    diagrams = [("label", ranker.get("reliability") or [])]
    heads = ranker.get("heads") or {}
    if heads:
        diagrams = [(head, m.get("reliability") or []) for head, m in heads.items()]
        section.table(
            "Heads",
            [
                "head",
                "AUC",
                "log loss",
                "ECE",
                "calibration ratio",
                "mean predicted",
                "mean observed",
            ],
            [
                [
                    head,
                    m.get("auc"),
                    m.get("log_loss"),
                    m.get("ece"),
                    m.get("calibration_ratio"),
                    m.get("mean_predicted"),
                    m.get("mean_observed"),
                ]
                for head, m in heads.items()
            ],
        )
    drawn = 0
    for head, bins in diagrams:
        if bins:
            title = _HEAD_TITLES.get(head, head)
            section.chart(f"Reliability: {title}", charts.reliability(bins, title))
            drawn += 1
    if drawn:
        return
    by_score = ranker.get("value_by_score") or []
    section.text(
        "The ranker's score is a value odds, not a probability (a value-weighted single-task "
        "ranker), so it has no reliability diagram; below, the observed value of the test "
        "impressions in equal-mass bins of its score (it should rise with the score).",
        title="Reliability",
    )
    rows = [
        {"score": b["predicted"], "observed value": b["observed"], "n": b["n"]} for b in by_score
    ]
    section.chart(
        "Observed value by ranker score",
        charts.lines(rows, "score", "observed value", x_title="ranker score (bin mean)"),
    )


def _history(section: Section, runs: Runs, k: int) -> None:
    metric = f"ndcg@{k}"
    if len(runs) < 2:
        section.text(
            "This is the only evaluation run kept: later runs will be compared with it.",
            title="Earlier runs",
        )
        return
    rows = []
    for index, (name, report) in enumerate(runs):
        for model, m in report["models"].items():
            if m.get(metric) is not None:
                rows.append({"run": index + 1, "model": model, metric: m[metric], "file": name})
    section.chart(
        f"{metric} over the kept evaluation runs",
        charts.lines(rows, "run", metric, "model", x_title="run (oldest first)"),
    )
    latest, previous = runs[-1][1], runs[-2][1]
    table = []
    for model, m in latest["models"].items():
        before = previous["models"].get(model, {}).get(metric)
        now = m.get(metric)
        change = None if before in (None, 0) or now is None else (now - before) / before
        table.append([model, before, now, f"{change:+.1%}" if change is not None else "new"])
    section.table(
        f"Latest run against the previous one ({runs[-2][0]})",
        ["model", f"{metric} before", f"{metric} now", "change"],
        table,
    )


def glance(runs: Runs) -> list[tuple[str, str]]:
    """The latest evaluation's headline for the report's first screen: the best model on
    the objective's value (else NDCG) at k, with its interval, against popularity."""
    if not runs:
        return []
    report = runs[-1][1]
    k, models = report["k"], report["models"]
    first: dict[str, float] = next(iter(models.values()), {})
    metric = next((n for n in first if n.startswith(_VALUE_PREFIXES)), f"ndcg@{k}")
    best = max(models, key=lambda m: models[m].get(metric) or 0.0)
    ci = report.get("intervals", {}).get(best, {}).get(metric)
    facts = [(f"best model on {metric}", f"{best}: {interval(models[best][metric], ci)}")]
    if "popularity" in models and best != "popularity":
        base = models["popularity"].get(metric)
        if base:
            facts.append(("against the popularity baseline", f"{models[best][metric] / base:.1f}x"))
    facts.append(
        (
            f"its NDCG@{k}",
            interval(
                models[best].get(f"ndcg@{k}"),
                report.get("intervals", {}).get(best, {}).get(f"ndcg@{k}"),
            ),
        )
    )
    return facts
