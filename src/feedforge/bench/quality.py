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
from feedforge.evaluation.protocols import (
    PROTOCOLS,
    EvalFold,
    ProtocolSplit,
    evaluate_fold,
    fold_metrics,
    per_user_values,
    rank_fold,
)
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


_S3REC_CAVEAT = (
    "read from the authors' repositories and papers' tables; same files, the sampled rows "
    "rank against 99 negatives (ours: 100)"
)


def _hr_ndcg(model: str, hr: float, ndcg: float) -> dict[str, Any]:
    return {"model": model, "metrics": {"hr@10": hr, "ndcg@10": ndcg}}


PUBLISHED_S3REC: dict[tuple[str, bool], list[dict[str, Any]]] = {
    ("Sports_and_Outdoors", False): [
        _hr_ndcg("SASRec (P5, RecSys 2022, Table 3)", 0.0350, 0.0192),
        _hr_ndcg("S3-Rec (P5, RecSys 2022, Table 3)", 0.0385, 0.0204),
        _hr_ndcg("SASRec, sampled softmax (eSASRec, RecSys 2025)", 0.0569, 0.0314),
        _hr_ndcg("eSASRec (eSASRec, RecSys 2025)", 0.0560, 0.0323),
    ],
    ("Toys_and_Games", False): [
        _hr_ndcg("SASRec (P5, RecSys 2022, Table 3)", 0.0675, 0.0374),
        _hr_ndcg("S3-Rec (P5, RecSys 2022, Table 3)", 0.0700, 0.0376),
        _hr_ndcg("SASRec, sampled softmax (eSASRec, RecSys 2025)", 0.0970, 0.0580),
        _hr_ndcg("eSASRec (eSASRec, RecSys 2025)", 0.0939, 0.0538),
    ],
    ("Sports_and_Outdoors", True): [
        _hr_ndcg("SASRec (S3-Rec, CIKM 2020, 99 negatives)", 0.4622, 0.2869),
        _hr_ndcg("S3-Rec (S3-Rec, CIKM 2020, 99 negatives)", 0.5614, 0.3538),
    ],
    ("Toys_and_Games", True): [
        _hr_ndcg("SASRec (S3-Rec, CIKM 2020, 99 negatives)", 0.4663, 0.3136),
        _hr_ndcg("S3-Rec (S3-Rec, CIKM 2020, 99 negatives)", 0.5530, 0.3629),
    ],
}
"""Published numbers on S3-Rec's Amazon files (``leave-one-out``; key: file name, sampled).
Full ranking: P5 (Geng et al., RecSys 2022, Table 3, the S3-Rec code's baselines) and the
eSASRec paper's own runs (Petrov et al., RecSys 2025, ``blondered/transformer_benchmark``
README, "Recall@10" = HR@10 with one target). Sampled: the S3-Rec paper (Zhou et al., CIKM
2020; ``aHuiWang/CIKM2020-S3Rec`` README), 99 negatives."""


def published_rows(dataset: str, name: str, protocol: str, negatives: int | None) -> list[dict]:
    """The published rows that belong in this table (none for most datasets)."""
    if dataset == "ml-100k" and protocol == "msr-stratified":
        return PUBLISHED_ML100K_MSR
    if protocol == "leave-one-out":
        return PUBLISHED_S3REC.get((name, negatives is not None), [])
    return []


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
    refit: bool = True
    """False: the model chosen on validation is not fitted again on the test fold's
    training data; its users' histories are extended instead (``with_histories``), as the
    SASRec paper tests (trained once; the test input includes the validation item)."""


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
            [{"l2": 200.0}] if quick else grid(l2=[50.0, 200.0, 500.0, 1000.0]),
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
        ModelSpec(
            "sasrec",
            "feedforge",
            _ours("sasrec"),
            [{"epochs": 1}]
            if quick
            # Early stopping on held-out NDCG@10 picks the epochs inside every fit; 2,048
            # sampled negatives (the full softmax on smaller catalogs) keep a fit of Amazon
            # Sports within minutes on 2 cores. Dropout is what the data's density decides.
            else grid(dropout=[0.2, 0.5], negatives=[2048]),
            refit=False,
        ),
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


def _cell(row: dict[str, Any], metric: str) -> str:
    if metric not in row["metrics"]:
        return ""
    se = row.get("stderr", {}).get(metric)
    return f"{row['metrics'][metric]:.4f}" + ("" if se is None else f" ± {se:.4f}")


def _primary(split: ProtocolSplit) -> str:
    return next((m for m in split.metrics if m.startswith("ndcg")), split.metrics[0])


def tune(
    spec: ModelSpec, split: ProtocolSplit, say: Progress
) -> tuple[dict[str, Any], float, tuple[Recommender, float] | None]:
    """The setting with the best primary metric on the validation fold, its value, and
    (``spec.refit`` False only) its model fitted on the validation fold with the seconds the
    fit took."""
    primary = _primary(split)
    best: tuple[dict[str, Any], float, tuple[Recommender, float] | None] = (
        spec.grid[0],
        -np.inf,
        None,
    )
    if len(spec.grid) == 1 and spec.refit:
        return spec.grid[0], float("nan"), None
    for params in spec.grid:
        t0 = time.perf_counter()
        model = spec.build(params).fit(split.validation.train)
        seconds = time.perf_counter() - t0
        value = evaluate_fold(model, split.validation, split.metrics, split.k)[primary]
        say(f"{spec.name} {params}: validation {primary} {value:.4f}")
        if value > best[1]:
            best = (params, value, None if spec.refit else (model, seconds))
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


@dataclass
class _Table:
    """One table of a run: the test fold it scores and what it has measured so far."""

    fold: EvalFold
    negatives: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_user: dict[str, np.ndarray] = field(default_factory=dict)

    def measure(self, spec: ModelSpec, model: Recommender, split: ProtocolSplit) -> dict:
        """Score a fitted model on this table's fold; returns the row (also kept)."""
        primary = _primary(split)
        recommended = rank_fold(model, self.fold, split.k)
        metrics = fold_metrics(recommended, self.fold, split.metrics, split.k)
        stderr = {}
        for metric in split.metrics:
            if metric.startswith("coverage@"):
                continue  # a catalog metric: no per-user values
            values = per_user_values(recommended, self.fold, metric, split.k)
            values = values[~np.isnan(values)]
            stderr[metric] = float(values.std(ddof=1) / np.sqrt(len(values)))
        self.per_user[spec.name] = per_user_values(recommended, self.fold, primary, split.k)
        row = {"model": spec.name, "source": spec.source, "metrics": metrics, "stderr": stderr}
        self.rows.append(row)
        return row


def run_quality(
    dataset: str,
    data_dir: Path,
    protocol: str,
    out_dir: Path | None,
    *,
    negatives: int | None = None,
    also_sampled: int | None = None,
    models: list[str] | None = None,
    quick: bool = False,
    progress: Progress | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark and (when ``out_dir`` is given) write its JSON and Markdown table,
    ``quality_<name>_<protocol>`` (``..._<N>neg`` for sampled negatives).

    Args:
        negatives: ``leave-one-out`` only: rank each target among this many sampled
            negatives (tuned on the sampled validation fold) instead of the whole catalog.
        also_sampled: ``leave-one-out`` with full ranking only: also score every model,
            as fitted and tuned for full ranking, against this many sampled negatives and
            write that table too (one training for both tables).
        name: The dataset's name in the tables and the file name; default: the importer's
            name for a named dataset (``ml-100k``), the file's (or folder's) name for a
            generic one (``csv``, ``parquet``, ``user-item-text``), so two files do not
            overwrite each other's tables.

    Returns:
        The report of the main table (the sampled one, if any, under ``"also_sampled"``).

    Raises:
        ConfigError: an unknown protocol or model name, ``negatives`` with a protocol
            that ranks every item, or ``also_sampled`` other than with full-ranking
            ``leave-one-out``.
    """
    say = progress or (lambda _msg: None)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    if negatives is not None and protocol != "leave-one-out":
        raise ConfigError(f"--negatives applies to leave-one-out only; {protocol} ranks every item")
    if also_sampled is not None and (protocol != "leave-one-out" or negatives is not None):
        raise ConfigError("--also-sampled applies to leave-one-out with full ranking only")
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
    tables = [_Table(split.test, negatives)]
    if also_sampled is not None:
        sampled = PROTOCOLS[protocol](frame, negatives=also_sampled)
        tables.append(_Table(sampled.test, also_sampled))
    ann: list[dict[str, Any]] = []
    primary = _primary(split)
    for spec in specs:
        say(f"tuning {spec.name} on validation ({len(spec.grid)} settings)")
        params, validation, tuned = tune(spec, split, say)
        if tuned is None:
            model = spec.build(params)
            t0 = time.perf_counter()
            model.fit(split.test.train)
            seconds = time.perf_counter() - t0
        else:  # trained once, on the validation fold; the test input is one item longer
            model, seconds = tuned
            model.with_histories(split.test.train)  # type: ignore[attr-defined]
        fit_stats = getattr(model, "fit_stats_", None)
        for table in tables:
            row = table.measure(spec, model, split)
            row.update(
                {
                    "train_seconds": round(seconds, 3),
                    **({"fit_stats": fit_stats} if fit_stats else {}),
                    "params": params,
                    "refit_on_test_train": spec.refit,
                    "validation": {
                        primary: None if np.isnan(validation) else validation,
                        "settings_tried": len(spec.grid),
                    },
                }
            )
            say(f"{spec.name}: test {primary} {row['metrics'][primary]:.4f} ({seconds:.1f}s)")
        if spec.source == "feedforge" and isinstance(model, EmbeddingRecommender):
            ann.append(ann_recall(model))
    reports = []
    for j, table in enumerate(tables):
        published = published_rows(dataset, name, protocol, table.negatives)
        rows = table.rows + [{**r, "source": "published", "train_seconds": None} for r in published]
        label = protocol if table.negatives is None else f"{protocol} ({table.negatives} negatives)"
        report: dict[str, Any] = {
            "dataset": name,
            "importer": dataset,
            "warnings": warnings
            + (
                [
                    "the models were tuned on the full-ranking validation fold (one training "
                    "for this table and the full-ranking one)"
                ]
                if j
                else []
            ),
            "protocol": label,
            "k": split.k,
            "metrics": list(split.metrics),
            "rows": rows,
            "comparisons": paired_comparisons(table.per_user, primary, rows),
            "split": {**split.info, "negatives": table.negatives},
            "import": {"events": summary.events_written, "duplicates": summary.duplicates},
            "ann": ann,
            **run_info(started),
        }
        if out_dir is not None:
            stem = f"quality_{name}_{protocol}"
            stem += "" if table.negatives is None else f"_{table.negatives}neg"
            write_report(out_dir, stem, report, render_markdown(report))
        reports.append(report)
    if len(reports) > 1:
        reports[0]["also_sampled"] = reports[1]
    return reports[0]


FOCUS_MODEL = "sasrec"
"""The model whose lead the comparisons report besides the best row's (the targets are about
the sequential model)."""


def paired_comparisons(
    per_user: dict[str, np.ndarray], metric: str, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The best measured model, and :data:`FOCUS_MODEL`, against every other measured model:
    the mean per-user difference of ``metric`` on the same test users, its paired standard
    error (``std(d) / sqrt(n)``) and ``z = difference / se``; also the unpaired margin
    (difference over the larger of the two rows' standard errors).
    """
    measured = [r for r in rows if r["model"] in per_user]
    if len(measured) < 2:
        return []
    best = max(measured, key=lambda r: r["metrics"][metric])["model"]
    leaders = [best] + ([FOCUS_MODEL] if FOCUS_MODEL in per_user and best != FOCUS_MODEL else [])
    stderr = {r["model"]: r["stderr"][metric] for r in measured}
    out = []
    for leader in leaders:
        for other in measured:
            if other["model"] == leader:
                continue
            a, b = per_user[leader], per_user[other["model"]]
            both = ~(np.isnan(a) | np.isnan(b))
            d = a[both] - b[both]
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            diff = float(d.mean())
            out.append(
                {
                    "model": leader,
                    "against": other["model"],
                    "metric": metric,
                    "difference": diff,
                    "paired_se": se,
                    "z": diff / se if se > 0 else float("nan"),
                    "unpaired_margin_in_se": diff / max(stderr[leader], stderr[other["model"]]),
                }
            )
    return out


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
        "Each measured value is the mean over the test users ± its standard error.",
        "",
        "| model | source | " + " | ".join(metrics) + " | train s |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for row in report["rows"]:
        cells = [_cell(row, m) for m in metrics]
        secs = "" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}"
        lines.append(f"| {row['model']} | {row['source']} | " + " | ".join(cells) + f" | {secs} |")
    if report.get("comparisons"):
        lines += [
            "",
            "Paired comparisons on the same test users (difference of the per-user "
            "values; z = difference / its standard error; margin = difference / the larger "
            "of the two rows' standard errors):",
            "",
            "| model | against | metric | difference | paired SE | z | margin in SE |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['model']} | {c['against']} | {c['metric']} | {c['difference']:+.4f} | "
            f"{c['paired_se']:.4f} | {c['z']:+.1f} | {c['unpaired_margin_in_se']:+.1f} |"
            for c in report["comparisons"]
        ]
    timed = [r for r in report["rows"] if r.get("fit_stats")]
    if timed:
        lines += [
            "",
            "Training with early stopping (the fit whose model is tested): epochs run, "
            "best epoch, optimizer steps, ms per step, seconds to the best held-out score "
            "and in all:",
            "",
            "| model | epochs | best epoch | steps | ms/step | s to best | s |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['model']} | {f['epochs_run']} | {f['best_epoch']} | {f['steps']} | "
            f"{f['ms_per_step']} | {f['seconds_to_best']} | {f['seconds']} |"
            for r in timed
            for f in [r["fit_stats"]]
        ]
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
    once = [r["model"] for r in report["rows"] if r.get("refit_on_test_train") is False]
    if once:
        lines += [
            "",
            f"Trained once, on the validation fold's training data, as the SASRec paper "
            f"does: {', '.join(once)}; the test input includes the validation item (the "
            "other models are refitted on the test fold's training data).",
        ]
    if any(r["source"] == "published" for r in report["rows"]) and report["importer"] != "ml-100k":
        lines += ["", f"Published rows: {_S3REC_CAVEAT}."]
    lines += ["", "Parameters chosen:", ""]
    lines += [f"- {r['model']}: `{r['params']}`" for r in report["rows"] if "params" in r]
    return "\n".join(lines) + "\n"
