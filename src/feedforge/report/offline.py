"""The report's first four steps: clarify (the objective and the budget), frame (the
pipeline as configured), data (the dataset card, the event log, the long tail) and models
(training time and curves, feature importances, the printable baselines)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl

from feedforge.artifacts import MANIFEST, Manifest
from feedforge.config import Settings
from feedforge.datasets.load import Dataset
from feedforge.errors import FeedforgeError
from feedforge.events.log import EventLog
from feedforge.features.objectives import settings_value
from feedforge.loop.gates import leakage_checks
from feedforge.models.registry import RANKERS, load_ranker
from feedforge.report import charts
from feedforge.report.blocks import Section, read_json
from feedforge.workdir import Workdir

_VALUE_WORDS = {
    "clicked": "click",
    "watch_seconds": "second watched",
    "revenue": "unit of revenue",
}
_TAIL_POINTS = 400


def clarify(settings: Settings, config_source: str) -> Section:
    """Step 1: what the feed maximises, what an impression is worth, the latency budget."""
    section = Section("clarify", "1. Clarify", "The goal and the budget, from the configuration.")
    value = settings_value(settings)
    worth = " + ".join(f"{w:g} per {_VALUE_WORDS.get(k, k)}" for k, w in value.items())
    section.facts(
        "Objective",
        [
            ("objective", settings.objective),
            ("one impression is worth", worth),
            ("online latency budget", f"{settings.serving.latency_budget_ms:g} ms per feed"),
            ("latency SLO", f"{settings.monitoring.latency_slo:.2%} of feeds within budget"),
            ("feed length (k)", settings.evaluation.k),
            ("configuration", config_source),
        ],
    )
    section.source("configuration", config_source)
    return section


def frame(settings: Settings, manifests: dict[str, Manifest]) -> Section:
    """Step 2: retrieval -> ranking -> re-ranking with the configured models."""
    section = Section(
        "frame",
        "2. Frame",
        "Candidate retrieval, then ranking, then re-ranking, with the configured models.",
    )
    models = settings.models
    rerank = settings.reranking
    stages = [
        (
            "retrieval",
            f"{models.retrieval} ({settings.serving.ann} index), "
            f"{settings.serving.candidates} candidates per feed",
            _params(manifests.get(models.retrieval)),
        ),
        (
            "ranking",
            f"{models.ranker.type} ranker on the candidates' features",
            _params(manifests.get(models.ranker.type)),
        ),
        (
            "re-ranking",
            "business rules, diversity and exploration",
            {
                "category_cap": rerank.category_cap,
                "mmr_lambda": rerank.mmr_lambda,
                "freshness_boost": rerank.freshness_boost,
                "rules": len(rerank.rules),
                "exploration": rerank.exploration.type,
            },
        ),
    ]
    section.table(
        "The pipeline",
        ["stage", "what", "settings"],
        [[name, what, params] for name, what, params in stages],
    )
    return section


def _params(manifest: Manifest | None) -> dict[str, Any] | str:
    if manifest is None:
        return "not trained"
    params = manifest.extra.get("params") or {}
    return {k: v for k, v in params.items() if not isinstance(v, dict | list)}


def data(workdir: Workdir, dataset: Dataset | None) -> Section:
    """Step 3: the dataset card, leakage checks, events per day and the popularity tail."""
    section = Section(
        "data", "3. Data", "Raw interactions -> event log -> leak-free training dataset."
    )
    if dataset is None:
        section.empty("Dataset", f"no dataset built yet: run {workdir.command('build')}")
    else:
        _dataset_card(section, dataset)
    _events(section, workdir)
    if dataset is not None:
        _long_tail(section, dataset)
    return section


def _dataset_card(section: Section, dataset: Dataset) -> None:
    section.source("dataset", dataset.version)
    card_path = dataset.root / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    section.facts(
        "Dataset card",
        [
            ("version", dataset.version),
            ("events", card.get("events")),
            ("users in the id map", card.get("users_in_id_map", len(dataset.users))),
            ("items in the id map", card.get("items_in_id_map", len(dataset.items))),
            ("catalog items", card.get("catalog_items")),
            ("impressions dropped at split edges", card.get("impressions_dropped_at_split_edges")),
            ("split", dataset.split_bounds),
        ],
    )
    splits = card.get("splits", {})
    if splits:
        rates = sorted({r for s in splits.values() for r in s.get("label_rates", {})})
        section.table(
            "Splits",
            ["split", "positives", "users", "items", "impressions", *[f"{r} rate" for r in rates]],
            [
                [
                    name,
                    s.get("positives"),
                    s.get("users"),
                    s.get("items"),
                    s.get("impressions"),
                    *[s.get("label_rates", {}).get(r) for r in rates],
                ]
                for name, s in splits.items()
            ],
        )
    try:
        leaks = leakage_checks(dataset)
    except FeedforgeError as exc:
        section.empty("Leakage checks", f"could not run: {exc}")
        return
    passed = not leaks["failures"]
    top = leaks.get("most_predictive")
    section.facts(
        "Leakage checks",
        [
            ("passed", passed),
            ("rows outside their split's time window", "none" if passed else leaks["failures"]),
            ("features checked (single-feature AUC on validation)", leaks["features_checked"]),
            ("most predictive feature", f"{top[0]} (AUC {top[1]:.4f})" if top else None),
        ],
    )


def _events(section: Section, workdir: Workdir) -> None:
    log = EventLog(workdir.events_dir)
    try:
        with log.reading():
            per_day = (
                log.scan()
                .group_by(pl.col("timestamp").dt.date().alias("day"), "event_type")
                .agg(pl.len().alias("events"))
                .sort("day", "event_type")
                .collect()
            )
    except (FeedforgeError, pl.exceptions.PolarsError, OSError):
        per_day = pl.DataFrame()
    if per_day.is_empty():
        section.empty("Events per day", f"the event log {workdir.events_dir} is empty")
        return
    section.source("event log", f"{len(log.files())} files")
    rows = per_day.with_columns(pl.col("day").cast(pl.String)).to_dicts()
    section.chart(
        "Events per day by type",
        charts.stacked_bars(rows, "day", "events", "event_type", y_title="events"),
    )
    totals = per_day.group_by("event_type").agg(pl.col("events").sum()).sort("event_type")
    section.table("Events by type", ["event type", "events"], totals.rows())


def _long_tail(section: Section, dataset: Dataset) -> None:
    counts = np.asarray(
        dataset.positives("train")
        .drop_nulls("item_idx")
        .group_by("item_idx")
        .len()
        .get_column("len")
        .sort(descending=True)
        .to_numpy(),
        dtype=np.float64,
    )
    if counts.size == 0:
        section.empty("Popularity long tail", "the train split has no positives")
        return
    share = np.cumsum(counts) / counts.sum()
    # At most _TAIL_POINTS points (evenly spaced ranks), so the page stays small.
    ranks = np.unique(np.linspace(0, len(counts) - 1, min(_TAIL_POINTS, len(counts))).astype(int))
    rows = [
        {"rank": int(r) + 1, "interactions": float(counts[r]), "cumulative_share": float(share[r])}
        for r in ranks
    ]
    top = max(1, round(0.2 * len(counts)))
    section.chart(
        "Popularity long tail (train positives per item)",
        charts.long_tail(rows),
        note=f"The top 20 % of items ({top:,}) hold {share[top - 1]:.1%} of the train "
        f"positives; {len(dataset.items) - len(counts):,} id-mapped items have none.",
    )


def model_manifests(workdir: Workdir) -> dict[str, Manifest]:
    """Every trained model's manifest, by model directory name."""
    manifests: dict[str, Manifest] = {}
    if not workdir.models_dir.is_dir():
        return manifests
    for directory in sorted(workdir.models_dir.iterdir()):
        if not (directory / MANIFEST).is_file():
            continue
        raw = read_json(directory / MANIFEST)
        if not isinstance(raw, dict):
            continue
        try:
            manifests[directory.name] = Manifest(**raw)
        except TypeError:
            continue  # not a manifest this feedforge can read; the section lists what is
    return manifests


def models(workdir: Workdir, settings: Settings, manifests: dict[str, Manifest]) -> Section:
    """Step 4: baselines and stronger models, training time and curves, the ranker's
    feature importances and printable form."""
    section = Section(
        "models",
        "4. Models",
        "Interpretable baselines first (popularity, a linear or tree ranker), then the "
        "stronger models.",
    )
    if not manifests:
        section.empty("Models", f"no model trained yet: run {workdir.command('train')}")
        return section
    rows = []
    for name, manifest in manifests.items():
        section.source(f"model {name}", manifest.version)
        role = (
            "baseline"
            if name == "popularity" or name in ("logistic", "tree")
            else ("ranker" if name in RANKERS else "retrieval")
        )
        warm = manifest.extra.get("warm_start")
        rows.append(
            [
                name,
                role,
                manifest.version,
                manifest.extra.get("fit_seconds"),
                manifest.created_at[:19].replace("T", " "),
                "yes" if warm else "no",
            ]
        )
    section.table(
        "Trained models",
        ["model", "role", "version", "fit seconds", "trained at (UTC)", "warm start"],
        rows,
    )
    for name, manifest in manifests.items():
        curve = manifest.extra.get("training_curve")
        if not curve:
            continue
        points = [
            {curve.get("x", "step"): i + 1, "loss": float(v), "series": series}
            for series, values in curve.get("series", {}).items()
            for i, v in enumerate(values)
        ]
        section.chart(
            f"Training curve: {name}",
            charts.lines(points, curve.get("x", "step"), "loss", "series", points=len(points) < 60),
        )
    without = [n for n, m in manifests.items() if not m.extra.get("training_curve")]
    if without:
        section.text(
            f"No training curve recorded for: {', '.join(without)} (a closed-form "
            "or single-pass fit, or trained by an older feedforge)."
        )
    _ranker(section, workdir, settings, manifests)
    return section


def _ranker(
    section: Section, workdir: Workdir, settings: Settings, manifests: dict[str, Manifest]
) -> None:
    name = settings.models.ranker.type
    if name not in manifests:
        section.empty("The ranker", f"no {name} ranker trained")
        return
    try:
        ranker = load_ranker(name, workdir.model_dir(name), build_command=workdir.command("train"))
    except FeedforgeError as exc:
        section.empty("The ranker", f"the {name} ranker could not be loaded: {exc}")
        return
    weights: dict[str, float] = {}
    what = ""
    if hasattr(ranker, "coefficients"):
        weights, what = ranker.coefficients(), "coefficient (standardised feature)"
    elif hasattr(ranker, "feature_importance"):
        weights, what = ranker.feature_importance(), "importance (gain)"
    elif attribution := getattr(ranker, "attribution_", None):
        weights, what = dict(attribution), "share of |gradient x input|"
    if weights:
        rows = [{"feature": k, "weight": float(v)} for k, v in weights.items()]
        section.chart(
            f"Feature importances: {name}",
            charts.horizontal_bars(rows, "feature", "weight", title=what),
        )
    section.pre(f"The {name} ranker, printed", ranker.describe())
