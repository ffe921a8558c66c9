"""The quality benchmark: every retrieval model and the peers on one real dataset and protocol.

``feedforge bench quality --dataset ml-100k --data-dir ../shared/data/ml-100k
--protocol msr-stratified`` imports the dataset into a temporary work directory (through the
same importer as ``feedforge import``), splits it with the named protocol, chooses each
model's hyper-parameters on the protocol's **validation** fold only, refits the chosen
setting on the test fold's training data, evaluates it on the test fold, and writes one table
to ``docs/benchmarks/quality_<dataset>_<protocol>.json`` and ``.md``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedforge.bench.peers import ImplicitPeer
from feedforge.bench.report import run_info, write_report
from feedforge.config import ServingConfig
from feedforge.errors import ConfigError
from feedforge.evaluation.protocols import PROTOCOLS, ProtocolSplit, evaluate_fold
from feedforge.events.importers import import_dataset
from feedforge.events.log import EventLog
from feedforge.models.base import EmbeddingRecommender, Recommender
from feedforge.models.registry import RECOMMENDERS
from feedforge.workdir import Workdir

Progress = Callable[[str], None]

PUBLISHED_ML100K_MSR: list[dict[str, Any]] = [
    {
        "model": "BiVAE",
        "metrics": {
            "ndcg@10": 0.475,
            "map_total@10": 0.146,
            "precision@10": 0.412,
            "recall_total@10": 0.219,
        },
    },
    {"model": "BPR (cornac)", "metrics": {"ndcg@10": 0.442}},
    {"model": "LightGCN", "metrics": {"ndcg@10": 0.420}},
    {"model": "NCF", "metrics": {"ndcg@10": 0.396}},
    {"model": "SAR", "metrics": {"ndcg@10": 0.382}},
]
"""The Microsoft Recommenders README's ML-100k table (source: "published"). Its ``MAP`` and
``Recall@10`` divide by the user's total number of test items: our ``map_total@10`` and
``recall_total@10``."""


def grid(**axes: list[Any]) -> list[dict[str, Any]]:
    """Every combination of the given hyper-parameter values."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in product(*axes.values())]


@dataclass(frozen=True)
class ModelSpec:
    """A model of the benchmark: how to build it and which settings to try on validation."""

    name: str
    source: str
    build: Callable[[dict[str, Any]], Recommender]
    grid: list[dict[str, Any]] = field(default_factory=lambda: [{}])


def _ours(name: str) -> Callable[[dict[str, Any]], Recommender]:
    return lambda params: RECOMMENDERS[name](**params)


def default_specs(quick: bool = False) -> list[ModelSpec]:
    """The benchmark's models. ``quick`` shrinks every grid to one small setting (tests)."""
    specs = [
        ModelSpec("popularity", "feedforge", _ours("popularity"), [{"window_days": 1e5}]),
        ModelSpec(
            "ease",
            "feedforge",
            _ours("ease"),
            [{"l2": 200.0}] if quick else grid(l2=[50.0, 100.0, 200.0, 300.0, 500.0, 1000.0]),
        ),
        ModelSpec(
            "rp3beta",
            "feedforge",
            _ours("rp3beta"),
            [{"neighbors": 50}]
            if quick
            else grid(
                alpha=[0.6, 0.8, 1.0],
                beta=[0.3, 0.5, 0.7, 0.9],
                neighbors=[100, 200, 400, 800],
            ),
        ),
        ModelSpec(
            "als",
            "feedforge",
            _ours("als"),
            [{"factors": 16, "iterations": 3}]
            if quick
            else grid(
                factors=[16, 32, 64, 128],
                regularization=[0.05, 1.0, 10.0],
                alpha=[1.0, 5.0, 20.0],
                iterations=[15],
            ),
        ),
        ModelSpec(
            "bpr",
            "feedforge",
            _ours("bpr"),
            [{"factors": 16, "iterations": 5}]
            if quick
            # implicit samples BPR negatives by popularity: long training buries popular
            # items, so the iteration count is part of the search.
            else grid(
                factors=[64, 128],
                learning_rate=[0.01, 0.05],
                regularization=[0.01],
                iterations=[30, 60, 100],
            ),
        ),
        ModelSpec(
            "multvae",
            "feedforge",
            _ours("multvae"),
            [{"epochs": 2, "hidden_dim": 32, "latent_dim": 8}]
            if quick
            # A first search (beta 0.1-0.4, annealing over 200 or 2,000 updates, 100 or 200
            # epochs) chose its edges on ML-100k: short annealing, fewer epochs, strong beta.
            else grid(beta_max=[0.2, 0.4, 0.8], anneal_steps=[200], epochs=[50, 100]),
        ),
        ModelSpec("two_tower", "feedforge", _ours("two_tower"), [{"epochs": 1}] if quick else [{}]),
        ModelSpec("sasrec", "feedforge", _ours("sasrec"), [{"epochs": 1}] if quick else [{}]),
        ModelSpec(
            "implicit ALS (defaults)",
            "peer",
            lambda p: ImplicitPeer("als", p),
            [{"iterations": 2} if quick else {}],
        ),
        ModelSpec(
            "implicit BPR (defaults)",
            "peer",
            lambda p: ImplicitPeer("bpr", p),
            [{"iterations": 2} if quick else {}],
        ),
        ModelSpec(
            "implicit ALS (tuned)",
            "peer",
            lambda p: ImplicitPeer("als", p),
            [{"factors": 16, "iterations": 2}]
            if quick
            else grid(
                factors=[16, 32, 64, 128],
                regularization=[0.01, 0.1, 1.0],
                alpha=[1.0, 10.0, 40.0],
            ),
        ),
        ModelSpec(
            "implicit BPR (tuned)",
            "peer",
            lambda p: ImplicitPeer("bpr", p),
            [{"factors": 16, "iterations": 2}]
            if quick
            else grid(
                factors=[64, 128],
                learning_rate=[0.01, 0.05],
                regularization=[0.01],
                iterations=[30, 60, 100],
            ),
        ),
    ]
    # Models not registered (yet) are left out rather than failing the whole benchmark.
    return [s for s in specs if s.source == "peer" or s.name in RECOMMENDERS]


def interactions_frame(workdir: Workdir) -> pl.DataFrame:
    """``user_id, item_id, timestamp, rating`` of every interaction event in a work directory's
    log (ratings carry their value; other interactions a null rating)."""
    log = EventLog(workdir.events_dir)
    with log.reading():
        return (
            log.scan()
            .filter(pl.col("event_type") != "impression")
            .select("user_id", "item_id", "timestamp", pl.col("value").alias("rating"))
            .sort("timestamp", "user_id", "item_id")
            .collect()
        )


def _primary(split: ProtocolSplit) -> str:
    return next((m for m in split.metrics if m.startswith("ndcg")), split.metrics[0])


def tune(spec: ModelSpec, split: ProtocolSplit, say: Progress) -> tuple[dict[str, Any], float]:
    """The setting with the best primary metric on the validation fold."""
    primary = _primary(split)
    best: tuple[dict[str, Any], float] = (spec.grid[0], -np.inf)
    if len(spec.grid) == 1:
        return spec.grid[0], float("nan")
    for params in spec.grid:
        model = spec.build(params).fit(split.validation.train)
        value = evaluate_fold(model, split.validation, split.metrics, split.k)[primary]
        say(f"{spec.name} {params}: validation {primary} {value:.4f}")
        if value > best[1]:
            best = (params, value)
    return best


def ann_recall(model: EmbeddingRecommender, serving: ServingConfig | None = None) -> dict[str, Any]:
    """Recall of the HNSW index against exact search, with the users' vectors as queries.

    The index is built exactly as ``feedforge publish`` builds it (``serving.ann_m``,
    ``ann_ef_construction``, ``ann_metric`` with the users' vectors as probes, the publish
    seed) and searched with the serving beam (``ann_ef_search``), so the numbers are those of
    the served feed. Recall is reported at 10
    and at ``serving.candidates`` (the retrieval depth the ranker sees).
    """
    from feedforge.index.ann import recall_at_k_vs_exact
    from feedforge.publish.publisher import build_serving_index

    serving = serving or ServingConfig()
    items = np.ascontiguousarray(model.item_embeddings(), dtype=np.float32)
    queries = np.ascontiguousarray(model.user_embeddings(), dtype=np.float32)
    index = build_serving_index(items, queries, serving, kind="hnsw")
    depths = sorted({10, serving.candidates})
    return {
        "model": model.name,
        "index": "faiss HNSW",
        "metric": index.params.metric,
        "probe_recall": index.params.probe_recall,
        "m": serving.ann_m,
        "ef_construction": serving.ann_ef_construction,
        "ef_search": serving.ann_ef_search,
        "recall_vs_exact": {
            f"@{k}": recall_at_k_vs_exact(index, items, queries, k) for k in depths
        },
        "items": int(items.shape[0]),
        "queries": int(queries.shape[0]),
    }


GENERIC_SOURCES = ("csv", "parquet", "user-item-text")
"""Importers of files that are not one named dataset: tables take the file's name."""
NEEDS_TIMESTAMPS = ("temporal",)
"""Protocols that split by time across users: meaningless on synthesised timestamps."""


def run_quality(
    dataset: str,
    data_dir: Path,
    protocol: str,
    out_dir: Path | None,
    *,
    negatives: int | None = None,
    models: list[str] | None = None,
    quick: bool = False,
    progress: Progress | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark and (when ``out_dir`` is given) write its JSON and Markdown table,
    ``quality_<name>_<protocol>``.

    Args:
        name: The dataset's name in the tables and the file name; default: the importer's
            name for a named dataset (``ml-100k``), the file's (or folder's) name for a
            generic one (``csv``, ``parquet``, ``user-item-text``), so two files do not
            overwrite each other's tables.

    Raises:
        ConfigError: an unknown protocol or model name, or ``negatives`` with a protocol
            that ranks every item.
    """
    say = progress or (lambda _msg: None)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    if negatives is not None and protocol != "leave-one-out":
        raise ConfigError(f"--negatives applies to leave-one-out only; {protocol} ranks every item")
    name = name or (Path(data_dir).stem if dataset in GENERIC_SOURCES else dataset)
    specs = default_specs(quick)
    if models:
        unknown = set(models) - {s.name for s in specs}
        if unknown:
            raise ConfigError(
                f"unknown benchmark model(s) {sorted(unknown)}; known: {[s.name for s in specs]}"
            )
        specs = [s for s in specs if s.name in models]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="feedforge-bench-") as tmp:
        workdir = Workdir.at(tmp)
        say(f"importing {dataset} from {data_dir}")
        summary = import_dataset(dataset, Path(data_dir), workdir)
        frame = interactions_frame(workdir)
    warnings = []
    if summary.synthetic_timestamps and protocol in NEEDS_TIMESTAMPS:
        warnings.append(
            f"{name} has no timestamps (they were synthesised from line order), so the "
            f"{protocol} split cuts the file by line, not by time; leave-one-out fits such data"
        )
        say(f"warning: {warnings[-1]}")
    options: dict[str, Any] = {"negatives": negatives} if protocol == "leave-one-out" else {}
    split = PROTOCOLS[protocol](frame, **options)
    rows: list[dict[str, Any]] = []
    ann: list[dict[str, Any]] = []
    primary = _primary(split)
    for spec in specs:
        say(f"tuning {spec.name} on validation ({len(spec.grid)} settings)")
        params, validation = tune(spec, split, say)
        model = spec.build(params)
        t0 = time.perf_counter()
        model.fit(split.test.train)
        seconds = time.perf_counter() - t0
        metrics = evaluate_fold(model, split.test, split.metrics, split.k)
        say(f"{spec.name}: test {primary} {metrics[primary]:.4f} ({seconds:.1f}s)")
        rows.append(
            {
                "model": spec.name,
                "source": spec.source,
                "metrics": metrics,
                "train_seconds": round(seconds, 3),
                "params": params,
                "validation": {
                    primary: None if np.isnan(validation) else validation,
                    "settings_tried": len(spec.grid),
                },
            }
        )
        if spec.source == "feedforge" and isinstance(model, EmbeddingRecommender):
            ann.append(ann_recall(model))
    if dataset == "ml-100k" and protocol == "msr-stratified":
        rows += [{**r, "source": "published", "train_seconds": None} for r in PUBLISHED_ML100K_MSR]
    report: dict[str, Any] = {
        "dataset": name,
        "importer": dataset,
        "warnings": warnings,
        "protocol": protocol if negatives is None else f"{protocol} ({negatives} negatives)",
        "k": split.k,
        "metrics": list(split.metrics),
        "rows": rows,
        "split": split.info,
        "import": {"events": summary.events_written, "duplicates": summary.duplicates},
        "ann": ann,
        **run_info(started),
    }
    if out_dir is not None:
        table = f"quality_{name}_{protocol}" + ("" if negatives is None else f"_{negatives}neg")
        write_report(out_dir, table, report, render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    metrics = report["metrics"]
    lines = [
        f"# Quality: {report['dataset']}, protocol `{report['protocol']}`",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['platform']}; "
        f"total {report['total_seconds']} s. Hyper-parameters chosen on the validation fold "
        "only; the test fold is used once per model.",
        "",
        *(f"**Warning:** {w}.\n" for w in report.get("warnings", [])),
        "| model | source | " + " | ".join(metrics) + " | train s |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for row in report["rows"]:
        cells = [f"{row['metrics'][m]:.4f}" if m in row["metrics"] else "" for m in metrics]
        secs = "" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}"
        lines.append(f"| {row['model']} | {row['source']} | " + " | ".join(cells) + f" | {secs} |")
    if report.get("ann"):
        first = report["ann"][0]
        depths = list(first["recall_vs_exact"])
        lines += [
            "",
            f"ANN recall against exact search, each model's user vectors as queries: "
            f"{first['index']}, m={first['m']}, efConstruction={first['ef_construction']}, "
            f"efSearch={first['ef_search']}, graph space chosen by `serving.ann_metric` "
            "(the index `feedforge publish` builds and the beam the service searches with); "
            f"{first['items']} items, {first['queries']} queries.",
            "",
            "| model | graph | " + " | ".join(f"recall{d}" for d in depths) + " |",
            "|---|---|" + "---|" * len(depths),
        ]
        for entry in report["ann"]:
            cells = [f"{entry['recall_vs_exact'][d]:.4f}" for d in depths]
            graph = entry.get("metric", "l2-reduction")
            lines.append(f"| {entry['model']} | {graph} | " + " | ".join(cells) + " |")
    lines += ["", "Parameters chosen:", ""]
    lines += [f"- {r['model']}: `{r['params']}`" for r in report["rows"] if "params" in r]
    return "\n".join(lines) + "\n"
