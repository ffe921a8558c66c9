"""The ranking benchmark: every ranker against the logistic-regression baseline, on simulator
data, with the simulator's ground truth measuring the feeds each one would serve.

``feedforge bench ranking`` simulates a world (``simulator`` config), builds the dataset and
trains the configured retrieval model on the train split, exactly as ``feedforge demo`` does.
Then, for each ranker:

1. **fit** on the validation split's impressions (features point in time; a single-task
   ranker on the label and weight of :func:`~feedforge.features.objectives.ranking_target`,
   the multi-task DCN on clicks and the outcome targets; request = group), as
   ``feedforge train`` does;
2. **impression metrics** on the test split's logged impressions: AUC of the objective's
   label by the ranker's score, log loss and expected calibration error (10 equal-mass
   bins) of its probability where it is one (the unweighted ``clicks`` objective, and the
   multi-task ranker's p(click)), NDCG@10 of the order within each request
   (:func:`~feedforge.evaluation.ranking_metrics.request_ndcg`, gain = the objective's
   value), and every head of the multi-task ranker
   (:func:`~feedforge.evaluation.evaluate.head_metrics`);
3. **feed metrics** with ground truth: for up to ``feed_users`` test users, the two-stage
   feed at the test boundary (top ``evaluation.candidates`` from retrieval, features from the
   snapshot the online store would hold, ranked by ``score``, top 10 shown at positions
   0..9) is scored by the simulator's response model
   (:func:`~feedforge.events.response.response_probabilities`): expected clicks, watch
   minutes and revenue per feed; catalog coverage and intra-list category diversity;
4. **scoring latency**: median milliseconds of ``score`` (what serving calls) on 1,000
   candidate rows.

A ``retrieval order`` row (the candidates by retrieval score, no ranker) is the reference
for the feed metrics. The **objective switch** section trains LightGBM and the DCN once per
objective (``clicks``, ``watch_time``, ``revenue`` and a ``mix``, :data:`SWITCH_MIX`) and
reports the ground-truth value of each trained feed, so the table shows what choosing one
objective over another does to the feed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedforge.bench.report import run_info, write_report
from feedforge.config import ModelsConfig, ObjectiveWeights, Settings
from feedforge.datasets.build import build_dataset
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.errors import ConfigError
from feedforge.evaluation.evaluate import ranker_metrics
from feedforge.evaluation.ranking_metrics import (
    intra_list_diversity,
)
from feedforge.events.response import response_probabilities
from feedforge.events.simulator import WORLD_FILE, simulate
from feedforge.events.world import World
from feedforge.features.definitions import FEATURES
from feedforge.features.objectives import objective_value, settings_value
from feedforge.models.base import EmbeddingRecommender, Ranker
from feedforge.models.ranking_data import ranker_training_data
from feedforge.models.registry import create_ranker, create_recommender
from feedforge.models.two_stage import two_stage_recommend
from feedforge.workdir import Workdir

Progress = Callable[[str], None]
FEED_K = 10
OBJECTIVES = ("clicks", "watch_time", "revenue", "mix")
SWITCH_MIX = ObjectiveWeights(watch_minutes=1.0, revenue=50.0)
"""The objective switch's ``mix``: a minute watched is worth 1, a unit of revenue 50 (the
default world earns ~0.1-0.7 revenue and ~30-55 watch minutes per feed)."""


@dataclass(frozen=True)
class RankerSpec:
    """One row of the table: a registered ranker and its ``models.params``."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def build(self, models: ModelsConfig, value: dict[str, float]) -> Ranker:
        config = models.model_copy(update={"params": {**models.params, self.name: self.params}})
        return create_ranker(self.name, config, value=value)


def switch_specs() -> list[RankerSpec]:
    """The rankers of the objective switch: one of each kind (trees, deep multi-task)."""
    return [
        RankerSpec("lightgbm (binary)", "lightgbm", {"objective": "binary"}),
        RankerSpec("dcn-v2 (multi-task)", "dcn"),
    ]


def default_specs() -> list[RankerSpec]:
    """The benchmark's rankers, baseline first."""
    return [
        RankerSpec("logistic", "logistic"),
        RankerSpec("tree", "tree"),
        RankerSpec("lightgbm (binary)", "lightgbm", {"objective": "binary"}),
        RankerSpec("lightgbm (lambdarank)", "lightgbm", {"objective": "lambdarank"}),
        RankerSpec("dcn-v2 (multi-task)", "dcn"),
    ]


@dataclass
class Bench:
    """The simulated world, its dataset and the trained retrieval model, shared by every row."""

    dataset: Dataset
    world: World
    retrieval: EmbeddingRecommender
    snapshot: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]
    cutoff: datetime
    feed_users: np.ndarray  # dataset user indices
    world_users: np.ndarray  # the same users' world indices
    world_item_of: np.ndarray  # dataset item index -> world item index
    n_candidates: int
    exclude: sp.csr_matrix  # the train interactions, never recommended

    def feeds(self, ranker: Ranker | None) -> np.ndarray:
        """``(U, FEED_K)`` dataset item indices of the two-stage (or retrieval-only) feeds."""
        exclude = self.exclude
        if ranker is None:
            items, _ = self.retrieval.recommend(self.feed_users, FEED_K, exclude=exclude)
            return items
        items, _ = two_stage_recommend(
            self.retrieval,
            ranker,
            self.dataset,
            self.snapshot,
            self.cutoff,
            self.feed_users,
            FEED_K,
            self.n_candidates,
            exclude,
        )
        return items

    def feed_value(self, feeds: np.ndarray) -> dict[str, float]:
        """Ground-truth expected outcomes per feed, coverage and diversity."""
        valid = feeds >= 0
        items = self.world_item_of[np.where(valid, feeds, 0)]
        truth = response_probabilities(
            self.world,
            self.world_users[:, None],
            items,
            np.arange(feeds.shape[1])[None, :],
            self.cutoff.timestamp(),
        )

        def per_feed(values: np.ndarray) -> float:
            return float(np.where(valid, values, 0.0).sum(axis=1).mean())

        categories = np.where(valid, self.world.item_category[items, 0], -1)
        return {
            "feed_clicks": per_feed(truth.p_click),
            "feed_watch_minutes": per_feed(truth.expected_watch_seconds) / 60.0,
            "feed_revenue": per_feed(truth.expected_revenue),
            "coverage": float(np.unique(feeds[valid]).size / len(self.dataset.items)),
            "diversity": intra_list_diversity(categories),
        }


def prepare(settings: Settings, workdir: Workdir, feed_users: int, say: Progress) -> Bench:
    """Simulate, build and train retrieval into ``workdir`` (the feature snapshot at the test
    boundary is the dataset's)."""
    say(
        f"simulating {settings.simulator.n_users} users x {settings.simulator.n_items} items "
        f"x {settings.simulator.n_days} days"
    )
    simulate(settings.simulator, workdir)
    say("building the dataset")
    build_dataset(workdir, settings)
    dataset = load_dataset(workdir)
    say(f"training retrieval ({settings.models.retrieval})")
    train = dataset.train_interactions()
    retrieval = create_recommender(settings.models.retrieval, settings.models)
    retrieval.fit(train)
    if not isinstance(retrieval, EmbeddingRecommender):
        raise ConfigError(
            f"models.retrieval={settings.models.retrieval!r} has no embeddings; the ranking "
            "stage needs an embedding retrieval model"
        )
    world = World.load(workdir.catalog_dir / WORLD_FILE)
    # The snapshot the build wrote at t2: the same one `feedforge evaluate` scores with.
    cutoff = dataset.test_start
    snapshot = dataset.feature_snapshot()
    test_users = (
        dataset.ranking("test").get_column("user_idx").drop_nulls().unique().sort().to_numpy()
    )
    rng = np.random.default_rng(0)
    if len(test_users) > feed_users:
        test_users = np.sort(rng.choice(test_users, feed_users, replace=False))
    world_user = {u: j for j, u in enumerate(world.user_ids().to_list())}
    world_item = {i: j for j, i in enumerate(world.item_ids().to_list())}
    return Bench(
        dataset=dataset,
        world=world,
        retrieval=retrieval,
        snapshot=snapshot,
        cutoff=cutoff,
        feed_users=test_users.astype(np.int64),
        world_users=np.array([world_user[u] for u in dataset.users.id_of(test_users)]),
        world_item_of=np.array([world_item[i] for i in dataset.items.ids.to_list()]),
        n_candidates=settings.evaluation.candidates,
        exclude=train.to_csr(),
    )


def scoring_ms(ranker: Ranker, X: np.ndarray, rows: int = 1_000, repeats: int = 50) -> float:
    """Median milliseconds of one ``score`` call (what serving calls) on ``rows`` rows."""
    batch = X[np.arange(rows) % len(X)]
    ranker.score(batch)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ranker.score(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run_ranking(
    settings: Settings,
    out_dir: Path | None,
    *,
    feed_users: int = 2_000,
    quick: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the benchmark and (when ``out_dir`` is given) write ``ranking_simulator.json`` and
    ``.md``. ``quick`` skips the objective switch and the latency loop (tests)."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    objective = settings.objective
    value = settings_value(settings)
    rows: list[dict[str, Any]] = []
    switch: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="feedforge-bench-ranking-") as tmp:
        bench = prepare(settings, Workdir.at(tmp), feed_users, say)
        train = ranker_training_data(bench.dataset, "validation", bench.retrieval, value)
        test = ranker_training_data(bench.dataset, "test", bench.retrieval, value)
        say("retrieval-order feeds")
        rows.append(
            {
                "model": "retrieval order (no ranker)",
                "metrics": bench.feed_value(bench.feeds(None)),
                "train_seconds": None,
            }
        )
        for spec in default_specs():
            say(f"fitting {spec.label} on {len(train.y)} validation impressions")
            ranker = spec.build(settings.models, value)
            t0 = time.perf_counter()
            train.fit(ranker)
            seconds = time.perf_counter() - t0
            metrics = ranker_metrics(ranker, test, FEED_K)
            say(f"{spec.label}: ground-truth feeds")
            metrics |= bench.feed_value(bench.feeds(ranker))
            if not quick:
                metrics["score_ms_1000"] = scoring_ms(ranker, test.X)
                metrics["score_device"] = ranker.scoring_device
            rows.append(
                {
                    "model": spec.label,
                    "ranker": spec.name,
                    "params": ranker.get_params(),
                    "metrics": metrics,
                    "train_seconds": round(seconds, 3),
                    "describe": ranker.describe(),
                }
            )
        if not quick:
            for spec in switch_specs():
                for goal in OBJECTIVES:
                    say(f"objective switch: {spec.label}, {goal}")
                    goal_value = objective_value(goal, SWITCH_MIX)
                    data = ranker_training_data(
                        bench.dataset, "validation", bench.retrieval, goal_value
                    )
                    ranker = data.fit(spec.build(settings.models, goal_value))
                    value_of = bench.feed_value(bench.feeds(ranker))
                    mix = SWITCH_MIX.watch_minutes * value_of["feed_watch_minutes"]
                    mix += SWITCH_MIX.revenue * value_of["feed_revenue"]
                    mix += SWITCH_MIX.clicks * value_of["feed_clicks"]
                    switch.append(
                        {"model": spec.label, "objective": goal, **value_of, "feed_mix_value": mix}
                    )
        info = {
            "impressions_train": len(train.y),
            "impressions_test": len(test.y),
            "feed_users": len(bench.feed_users),
            "items": len(bench.dataset.items),
            "candidates": bench.n_candidates,
            "split": bench.dataset.split_bounds,
        }
    report: dict[str, Any] = {
        "dataset": "simulator",
        "objective": objective,
        "value": value,
        "label": "clicked"
        if value == {"clicked": 1.0}
        else "value > 0, positives weighted by value "
        f"({' + '.join(f'{w:g} x {k}' for k, w in value.items())})",
        "multi_task_label": "clicked; heads on watch_seconds, purchased, revenue",
        "retrieval": settings.models.retrieval,
        "simulator": settings.simulator.model_dump(mode="json"),
        "features": list(FEATURES),
        "rows": rows,
        "objective_switch": switch,
        "data": info,
        **run_info(started),
    }
    if out_dir is not None:
        write_report(out_dir, "ranking_simulator", report, render_markdown(report))
    return report


_IMPRESSION_COLUMNS = ("auc", "log_loss", "ece", f"ndcg@{FEED_K}")
_FEED_COLUMNS = ("feed_clicks", "feed_watch_minutes", "feed_revenue", "coverage", "diversity")


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    sim = report["simulator"]
    data = report["data"]
    lines = [
        f"# Ranking: simulator, objective `{report['objective']}`",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Simulator: {sim['n_users']} users, {sim['n_items']} items, {sim['n_days']} days, seed "
        f"{sim['seed']}. Rankers fit on {data['impressions_train']} validation impressions "
        f"(label `{report['label']}`), measured on {data['impressions_test']} test "
        f"impressions; feeds for {data['feed_users']} test users re-rank the top "
        f"{data['candidates']} `{report['retrieval']}` candidates and are scored with the "
        "simulator's ground-truth response model (expected outcomes per 10-item feed). "
        f"Machine: {report['machine']['cpus']} CPUs; total {report['total_seconds']} s.",
        "",
        "| model | " + " | ".join((*_IMPRESSION_COLUMNS, *_FEED_COLUMNS)) + " | score ms / 1000 "
        "| train s |",
        "|---|" + "---|" * (len(_IMPRESSION_COLUMNS) + len(_FEED_COLUMNS) + 2),
    ]
    for row in report["rows"]:
        m = row["metrics"]
        cells = [_cell(m.get(c)) for c in (*_IMPRESSION_COLUMNS, *_FEED_COLUMNS)]
        ms = m.get("score_ms_1000")
        secs = row["train_seconds"]
        lines.append(
            f"| {row['model']} | " + " | ".join(cells) + f" | {'' if ms is None else f'{ms:.3f}'} "
            f"| {'' if secs is None else f'{secs:.1f}'} |"
        )
    heads = [row for row in report["rows"] if row["metrics"].get("heads")]
    if heads:
        lines += [
            "",
            "## Multi-task heads on the test impressions",
            "",
            "click / purchase: AUC, log loss and calibration error of p(click) and p(purchase); "
            "watch / revenue: AUC of the expected value for any watch / purchase, and the "
            "calibration ratio sum(expected) / sum(observed).",
            "",
            "| model | head | auc | log_loss | ece | calibration_ratio | mean predicted "
            "| mean observed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in heads:
            for head, m in row["metrics"]["heads"].items():
                cells = [
                    _cell(m.get(c))
                    for c in (
                        "auc",
                        "log_loss",
                        "ece",
                        "calibration_ratio",
                        "mean_predicted",
                        "mean_observed",
                    )
                ]
                lines.append(f"| {row['model']} | {head} | " + " | ".join(cells) + " |")
    if report["objective_switch"]:
        lines += [
            "",
            "## Objective switch (one ranker trained per objective)",
            "",
            "Ground-truth value per feed of each objective's feed; `mix` values a watched "
            f"minute at {SWITCH_MIX.watch_minutes:g} and a unit of revenue at "
            f"{SWITCH_MIX.revenue:g}:",
            "",
            "| model | trained for | " + " | ".join((*_FEED_COLUMNS, "feed_mix_value")) + " |",
            "|---|---|" + "---|" * (len(_FEED_COLUMNS) + 1),
        ]
        for entry in report["objective_switch"]:
            cells = [_cell(entry.get(c)) for c in (*_FEED_COLUMNS, "feed_mix_value")]
            label = entry.get("model", "lightgbm (binary)")
            lines.append(f"| {label} | {entry['objective']} | " + " | ".join(cells) + " |")
    lines += ["", "## The interpretable baselines", ""]
    for row in report["rows"]:
        if row.get("ranker") in ("logistic", "tree"):
            lines += [f"{row['model']}:", "", "```", row["describe"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"
