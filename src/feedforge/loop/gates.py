"""The gates a candidate passes before any user sees it.

Each gate returns a :class:`Gate`: its name, whether it passed, a one-line reason and the
numbers it decided on (all kept in the run's record).

* **data** (:func:`data_gate`), on the candidate's dataset before training: enough training
  interactions and labelled ranking examples; the examples' positive rate within
  ``loop.label_rate_range`` and within ``loop.max_label_rate_change`` (relative) of the
  current version's dataset when that dataset is still on disk; and leakage checks: every
  split's examples and positives lie inside the split's time window, and no single feature
  predicts the label almost perfectly (a feature computed from the label gives an AUC near 1: above
  :data:`MAX_FEATURE_AUC` the gate fails and names it).
* **offline** (:func:`offline_gate`): the candidate against the current version, both
  measured on the candidate's test window
  (:func:`~feedforge.evaluation.compare.compare_pipelines`; the current version's
  embeddings and ranker are read from the store and its bundle): the relative lift of
  ``loop.offline_metric`` (default: the ranker's AUC on the window's logged impressions)
  must be at least ``loop.offline_min_lift``, and the two-stage feed's observed value may not
  fall by more than ``loop.offline_max_feed_drop``. The feed metrics are not the default
  gate because the window's outcomes were logged under the current version's feeds, which
  credits it for its own exposures: in the loop benchmark candidates their canary then
  promoted scored up to 36 % below it on them (``docs/benchmarks/loop.json``).
* **off-policy** (:func:`ope_gate`), once the candidate is staged in the store: the doubly
  robust estimates of both versions' value per feed from the feed log of the last
  ``loop.ope_window_s`` (:func:`~feedforge.loop.ope.replay`); the relative lift must be at
  least ``loop.ope_min_lift``. Skipped, saying why, when fewer than ``loop.ope_min_feeds``
  feeds were logged or the logging policy never explored (no propensity to weight by).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from feedforge.config import Settings
from feedforge.datasets.load import Dataset
from feedforge.errors import DataError, ValidationError
from feedforge.evaluation.compare import PublishedRetrieval, compare_pipelines, gate_metric_name
from feedforge.events.log import EventLog
from feedforge.experiments.definition import Variant
from feedforge.experiments.online import read_feed_log
from feedforge.features.definitions import FEATURES
from feedforge.features.objectives import settings_value
from feedforge.loop.ope import logged_slates, replay
from feedforge.models.base import EmbeddingRecommender, Ranker
from feedforge.models.registry import load_ranker
from feedforge.serving.pipeline import FeedService
from feedforge.store.base import OnlineStore
from feedforge.store.bundle import RANKER_DIR
from feedforge.store.keys import ITEM_EMB, USER_EMB
from feedforge.workdir import Workdir

MAX_FEATURE_AUC = 0.99
"""A single raw feature whose AUC for the label is above this (or below 1 - this) is taken
for a leak."""
_LABEL = "clicked"
_NOT_FEATURES = {
    "event_id", "request_id", "timestamp", "user_id", "item_id", "device", "category",
    "clicked", "watch_seconds", "liked", "purchased", "revenue", "watched", "user_idx",
    "item_idx",
}  # fmt: skip
_CHUNK = 10_000


@dataclass
class Gate:
    """One gate's verdict."""

    name: str
    passed: bool
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _lift(candidate: float, current: float) -> float:
    if current == 0:
        return 0.0 if candidate == 0 else float(np.sign(candidate)) * float("inf")
    return (candidate - current) / abs(current)


def _positive_rate(dataset: Dataset) -> float:
    card = json.loads((dataset.root / "card.json").read_text(encoding="utf-8"))
    return float(card["splits"]["validation"]["label_rates"]["click"])


def data_gate(dataset: Dataset, settings: Settings, previous: Dataset | None) -> Gate:
    """The data checks of a candidate's dataset (see the module docs)."""
    cfg = settings.loop
    failures: list[str] = []
    counts = dataset.manifest.counts
    train_rows = int(counts.get("positives_train", 0))
    ranking_rows = int(counts.get("ranking_validation", 0))
    numbers: dict[str, Any] = {"train_rows": train_rows, "ranking_rows": ranking_rows}
    if train_rows < cfg.min_train_rows:
        failures.append(f"{train_rows} training interactions < loop.min_train_rows")
    if ranking_rows < cfg.min_ranking_rows:
        failures.append(f"{ranking_rows} ranking examples < loop.min_ranking_rows")
    rate = _positive_rate(dataset)
    numbers["label_rate"] = rate
    low, high = cfg.label_rate_range
    if not low <= rate <= high:
        failures.append(f"label rate {rate:.4g} outside loop.label_rate_range [{low}, {high}]")
    if previous is not None:
        before = _positive_rate(previous)
        change = abs(_lift(rate, before))
        numbers["previous_label_rate"] = before
        numbers["label_rate_change"] = change
        if change > cfg.max_label_rate_change:
            failures.append(
                f"label rate moved {change:.1%} from {before:.4g} (> loop.max_label_rate_change)"
            )
    leaks = leakage_checks(dataset)
    numbers["leakage"] = leaks
    failures += leaks["failures"]
    if failures:
        return Gate("data", False, "; ".join(failures), numbers)
    return Gate("data", True, "row counts, label rate and leakage checks within bounds", numbers)


def leakage_checks(dataset: Dataset) -> dict[str, Any]:
    """Split windows and single-feature AUCs (see the module docs)."""
    bounds = {k: datetime.fromisoformat(str(v)) for k, v in dataset.split_bounds.items()}
    failures: list[str] = []
    windows = {
        "train": (bounds.get("start"), bounds["t1"]),
        "validation": (bounds["t1"], bounds["t2"]),
        "test": (bounds["t2"], bounds.get("end")),
    }
    for split, (start, end) in windows.items():
        for kind, frame in (
            ("ranking", dataset.ranking(split)),
            ("positives", dataset.positives(split)),
        ):
            if not frame.height:
                continue
            ts = frame.get_column("timestamp")
            early = int((ts < start).sum()) if start is not None else 0
            late = int((ts > end).sum() if split == "test" else (ts >= end).sum()) if end else 0
            if early or late:
                failures.append(f"{early + late} {split} {kind} rows outside the split's window")
    ranking = dataset.ranking("validation")
    aucs: dict[str, float] = {}
    if ranking.height and ranking.get_column(_LABEL).n_unique() == 2:
        label = ranking.get_column(_LABEL).cast(pl.Int8).to_numpy()
        for name in ranking.columns:
            if name in _NOT_FEATURES or not ranking.schema[name].is_numeric():
                continue
            values = ranking.get_column(name).cast(pl.Float64).fill_null(0.0).to_numpy()
            if np.ptp(values) == 0:
                continue
            auc = float(roc_auc_score(label, values))
            aucs[name] = round(auc, 4)
            if max(auc, 1 - auc) > MAX_FEATURE_AUC:
                failures.append(f"feature {name!r} predicts the label with AUC {auc:.4f} (leak?)")
    top = max(aucs.items(), key=lambda kv: max(kv[1], 1 - kv[1]), default=None)
    return {"failures": failures, "features_checked": len(aucs), "most_predictive": top}


def published_pipeline(
    workdir: Workdir, store: OnlineStore, version: str, dataset: Dataset
) -> tuple[PublishedRetrieval, Ranker | None]:
    """A published version's embeddings (from the store) aligned to ``dataset``'s id maps,
    and its ranker (from its bundle); users without a vector get the train popularity."""
    meta = store.get_meta(version)
    if meta is None:
        raise ValidationError(f"version {version!r} is not in the store")
    dim = int(meta["dim"])

    def vectors(kind: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts, masks = [], []
        for start in range(0, len(ids), _CHUNK):
            vec, found = store.get_vectors(version, kind, ids[start : start + _CHUNK])
            parts.append(vec if vec.shape[1] else np.zeros((len(found), dim), np.float32))
            masks.append(found)
        if not parts:
            return np.zeros((0, dim), np.float32), np.zeros(0, bool)
        return np.vstack(parts), np.concatenate(masks)

    users, user_known = vectors(USER_EMB, dataset.users.ids.to_list())
    items, item_known = vectors(ITEM_EMB, dataset.items.ids.to_list())
    popularity = np.asarray(dataset.train_interactions().to_csr().sum(axis=0)).reshape(-1)
    retrieval = PublishedRetrieval(users, items, user_known, item_known, popularity)
    ranker = None
    if meta.get("ranker"):
        bundle = workdir.bundles_dir / version
        ranker = load_ranker(
            str(meta["ranker"]),
            bundle / RANKER_DIR,
            "feedforge publish",
            expected_features=list(FEATURES),
        )
    return retrieval, ranker


def offline_gate(
    dataset: Dataset,
    settings: Settings,
    candidate: tuple[EmbeddingRecommender, Ranker | None],
    current: tuple[EmbeddingRecommender, Ranker | None] | None,
) -> Gate:
    """The candidate against the current version on the candidate's test window."""
    pipelines = {"candidate": candidate}
    if current is not None:
        pipelines["current"] = current
    report = compare_pipelines(dataset, settings, pipelines)
    cfg = settings.loop
    metric = gate_metric_name(settings, cfg.offline_metric)
    feed = gate_metric_name(settings, "value")
    numbers: dict[str, Any] = {"metric": metric, "feed_metric": feed, **report}
    models = report["models"]
    if models["candidate"].get(metric) is None:
        # No ranker (a log without impressions): judge the feed metric instead.
        metric = numbers["metric"] = feed
    cand = float(models["candidate"][metric])
    if current is None:
        return Gate("offline", True, f"nothing is serving: candidate {metric} {cand:.4g}", numbers)
    cur = float(models["current"].get(metric) or 0.0)
    lift = _lift(cand, cur)
    feed_lift = _lift(float(models["candidate"][feed]), float(models["current"][feed]))
    numbers.update(lift=lift, feed_lift=feed_lift)
    verdict = f"{metric}: candidate {cand:.4g} vs current {cur:.4g} (lift {lift:+.2%})"
    failures = []
    if lift < cfg.offline_min_lift:
        failures.append(f"{verdict} < loop.offline_min_lift {cfg.offline_min_lift:+.2%}")
    if feed_lift < -cfg.offline_max_feed_drop:
        failures.append(
            f"{feed} fell {-feed_lift:.1%} (> loop.offline_max_feed_drop "
            f"{cfg.offline_max_feed_drop:.0%})"
        )
    if failures:
        return Gate("offline", False, "; ".join(failures), numbers)
    return Gate("offline", True, f"{verdict}; {feed} lift {feed_lift:+.2%}", numbers)


def ope_gate(
    workdir: Workdir,
    settings: Settings,
    service: FeedService,
    candidate: str,
    current: str | None,
    now: datetime | None = None,
) -> Gate:
    """Off-policy estimates of the staged candidate and the current version (module docs)."""
    cfg = settings.loop
    if current is None:
        return Gate("ope", True, "nothing is serving: no log to compare on", skipped=True)
    since = (now or datetime.now(UTC)) - timedelta(seconds=cfg.ope_window_s)
    log = EventLog(workdir.events_dir)
    try:
        feed_log = read_feed_log(workdir.feedlog_dir, since=since)
        with log.reading():
            events = log.scan().filter(pl.col("timestamp") >= since).collect()
        logged = logged_slates(
            feed_log, events, settings_value(settings), settings.loop.ope_window_s, since
        )
    except DataError as exc:
        return Gate("ope", True, f"skipped: {exc}", skipped=True)
    if logged.height < cfg.ope_min_feeds:
        return Gate(
            "ope",
            True,
            f"skipped: {logged.height} feeds logged since {since.isoformat()} "
            f"(< loop.ope_min_feeds {cfg.ope_min_feeds})",
            {"feeds": logged.height},
            skipped=True,
        )
    estimates: dict[str, Any] = {}
    try:
        for name, version in (("candidate", candidate), ("current", current)):
            result = replay(service, logged, Variant(name=name, weight=1.0, version=version))
            estimates[name] = {
                "dr": result["estimates"]["dr"],
                "snips": result["estimates"]["snips"],
                "ess": result["ess"],
                "support": result["support"],
            }
    except ValidationError as exc:
        return Gate("ope", True, f"skipped: {exc}", {"feeds": logged.height}, skipped=True)
    cand = float(estimates["candidate"]["dr"]["value"])
    cur = float(estimates["current"]["dr"]["value"])
    lift = _lift(cand, cur)
    numbers = {"feeds": logged.height, "estimates": estimates, "lift": lift}
    verdict = f"DR value per feed: candidate {cand:.4g} vs current {cur:.4g} (lift {lift:+.2%}"
    if lift < cfg.ope_min_lift:
        return Gate(
            "ope", False, f"{verdict} < loop.ope_min_lift {cfg.ope_min_lift:+.2%})", numbers
        )
    return Gate("ope", True, f"{verdict} >= {cfg.ope_min_lift:+.2%})", numbers)
