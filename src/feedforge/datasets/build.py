"""Build training-ready, leak-free datasets from the event log and the catalog.

The split is a global temporal one: ``train < t1 <= validation < t2 <= test``, with ``t2`` the
log's last timestamp minus ``dataset.test_days`` and ``t1`` another ``validation_days``
earlier. Id maps are fitted on the train split only. Outputs (all Parquet, in
``WORKDIR/dataset``):

* ``ids/users.parquet``, ``ids/items.parquet``: the id maps.
* ``positives_<split>.parquet``: positive engagement events, one row each, with a flag per
  kind of engagement (click, watch, like, purchase, rated) and a ``weight`` for retrieval
  training; an objective's relevance is the union of its flags
  (:func:`~feedforge.features.objectives.positive_flags`).
* ``ranking_<split>.parquet``: one row per impression with point-in-time raw counters (see
  :mod:`feedforge.features.definitions`) and labels attributed from later events of the same
  request within ``dataset.attribution_seconds``. Impressions whose attribution window
  crosses a split boundary (or the end of the log) are dropped, so no label leaks across.
* ``snapshot/users.parquet``, ``snapshot/items.parquet``, ``snapshot/user_categories.parquet``:
  the feature snapshot at the test window's start ``t2``, i.e. the three frames of
  :func:`~feedforge.features.offline.snapshot_counters` (counters from every event before
  ``t2``, as the online store would hold them then); the evaluation's two-stage pipeline
  scores the test window with it.
* ``outcomes_test.parquet``: the observed outcomes of the test window ``[t2, end]`` per
  (user, item) (:func:`observed_outcomes`): clicks, watch seconds and revenue, unweighted, so
  the evaluation applies any objective's weights to them (:data:`OUTCOME_COLUMNS`).
* ``card.json`` / ``card.md``: rows, users, items, label rates and split dates.

Everything a later stage needs from the log and the catalog is in these files: ``train`` and
``evaluate`` never open the log, so events ingested after a build cannot change what a
dataset version measures. The manifest's ``counts`` give the rows of every file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from feedforge.artifacts import Manifest, write_json_atomic, write_manifest
from feedforge.config import DatasetConfig, Settings
from feedforge.datasets.idmap import IdMap
from feedforge.errors import DataError
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.features.definitions import RAW_COUNTERS
from feedforge.features.objectives import positive_flags, settings_value
from feedforge.features.offline import point_in_time_counters, snapshot_counters
from feedforge.workdir import Workdir

DATASET_ARTIFACT = "dataset"
DATASET_SCHEMA_VERSION = 2
"""2: adds the feature snapshot at ``t2`` and the test window's observed outcomes."""
SPLITS = ("train", "validation", "test")
SNAPSHOT_FRAMES = ("users", "items", "user_categories")
"""The files of ``snapshot/``, in :func:`~feedforge.features.offline.snapshot_counters`'s
order."""
OUTCOME_COLUMNS: dict[str, str] = {
    "clicked": "clicks",
    "watch_seconds": "watch_seconds",
    "revenue": "revenue",
}
"""Valued outcome (:data:`~feedforge.features.objectives.VALUED_OUTCOMES`) -> its column in
``outcomes_test.parquet``."""

_WEIGHTS = {"click": 1.0, "watch": 2.0, "like": 2.0, "purchase": 3.0, "rating": 1.0}

Progress = Callable[[str], None]


def split_bounds(events: pl.LazyFrame, config: DatasetConfig) -> dict[str, datetime]:
    """The split boundaries ``t1`` and ``t2`` (and the log's ``start`` and ``end``).

    Raises:
        DataError: the log is empty or the train window would be empty.
    """
    span = events.select(
        pl.col("timestamp").min().alias("start"), pl.col("timestamp").max().alias("end")
    ).collect()
    return bounds_from_span(span.item(0, "start"), span.item(0, "end"), config)


def bounds_from_span(
    start: datetime | None, end: datetime | None, config: DatasetConfig
) -> dict[str, datetime]:
    """The split boundaries of a log whose first and last events are at ``start`` and
    ``end`` (``None``: the log is empty). See :func:`split_bounds`.

    Raises:
        DataError: the log is empty or the train window would be empty.
    """
    if start is None or end is None:
        raise DataError("the event log is empty; run `feedforge simulate` (or import data) first")
    t2 = end - timedelta(days=config.test_days)
    t1 = t2 - timedelta(days=config.validation_days)
    if t1 <= start:
        raise DataError(
            f"the log spans {start} .. {end}: too short for {config.validation_days} validation "
            f"and {config.test_days} test days with any training data left"
        )
    return {"start": start, "t1": t1, "t2": t2, "end": end}


def write_item_categories(out: Path, item_map: IdMap, items: pl.DataFrame) -> None:
    """``ids/item_categories.parquet``: the categories of the id-mapped items, in id-map
    order, for models that use side information."""
    pl.DataFrame({"item_id": item_map.ids}).join(
        items.select("item_id", "categories"), on="item_id", how="left", maintain_order="left"
    ).write_parquet(out / "ids" / "item_categories.parquet")


def _split_expr(bounds: dict[str, datetime]) -> pl.Expr:
    ts = pl.col("timestamp")
    return (
        pl.when(ts < bounds["t1"])
        .then(pl.lit("train"))
        .when(ts < bounds["t2"])
        .then(pl.lit("validation"))
        .otherwise(pl.lit("test"))
        .alias("split")
    )


def label_positives(
    events: pl.LazyFrame, items: pl.DataFrame, config: DatasetConfig
) -> pl.LazyFrame:
    """Positive engagement events with one boolean flag per kind of positive.

    A watch is positive at ``watch_seconds >= watch_completion * duration_seconds`` (any
    positive watch time when the duration is unknown); a rating at ``value >=
    rating_threshold``; clicks, likes and purchases always.
    """
    durations = items.select("item_id", "duration_seconds").lazy()
    et = pl.col("event_type")
    watch_ok = (
        pl.when(pl.col("duration_seconds").is_null())
        .then(pl.col("watch_seconds") > 0)
        .otherwise(pl.col("watch_seconds") >= config.watch_completion * pl.col("duration_seconds"))
    )
    rated = (et == "rating") & (pl.col("value") >= config.rating_threshold)
    flagged = events.join(durations, on="item_id", how="left").with_columns(
        (et == "click").alias("click"),
        ((et == "watch") & watch_ok.fill_null(False)).alias("watch"),
        (et == "like").alias("like"),
        (et == "purchase").alias("purchase"),
        rated.fill_null(False).alias("rated"),
    )
    engaged = pl.any_horizontal("click", "watch", "like", "purchase", "rated")
    weight = pl.col("event_type").replace_strict(_WEIGHTS, default=0.0, return_dtype=pl.Float32)
    return (
        flagged.filter(engaged)
        .with_columns(weight.alias("weight"))
        .select(
            "event_id",
            "timestamp",
            "user_id",
            "item_id",
            "event_type",
            "click",
            "watch",
            "like",
            "purchase",
            "rated",
            "weight",
        )
    )


def ranking_examples(
    events: pl.LazyFrame, items: pl.DataFrame, config: DatasetConfig
) -> pl.LazyFrame:
    """One row per impression with point-in-time counters and attributed labels."""
    impressions = events.filter(pl.col("event_type") == "impression").select(
        "event_id", "request_id", "timestamp", "user_id", "item_id", "position", "device"
    )
    window = timedelta(seconds=config.attribution_seconds)
    outcomes = events.filter(
        pl.col("event_type").is_in(["click", "watch", "like", "purchase"])
    ).select(
        "request_id",
        "user_id",
        "item_id",
        pl.col("timestamp").alias("label_ts"),
        "event_type",
        "watch_seconds",
        "price",
    )
    durations = items.select("item_id", "duration_seconds").lazy()
    et = pl.col("event_type")
    labels = (
        impressions.select("event_id", "request_id", "user_id", "item_id", "timestamp")
        .join(outcomes, on=["request_id", "user_id", "item_id"], how="inner")
        .filter(
            (pl.col("label_ts") >= pl.col("timestamp"))
            & (pl.col("label_ts") < pl.col("timestamp") + window)
        )
        .group_by("event_id")
        .agg(
            (et == "click").any().alias("clicked"),
            pl.col("watch_seconds").filter(et == "watch").sum().alias("watch_seconds"),
            (et == "like").any().alias("liked"),
            (et == "purchase").any().alias("purchased"),
            pl.col("price").filter(et == "purchase").sum().alias("revenue"),
        )
    )
    examples = (
        point_in_time_counters(impressions, events, items)
        .join(labels, on="event_id", how="left")
        .join(durations, on="item_id", how="left")
        .with_columns(
            pl.col("clicked").fill_null(False),
            pl.col("watch_seconds").fill_null(0.0),
            pl.col("liked").fill_null(False),
            pl.col("purchased").fill_null(False),
            pl.col("revenue").fill_null(0.0),
        )
    )
    watched = (
        pl.when(pl.col("duration_seconds").is_null())
        .then(pl.col("watch_seconds") > 0)
        .otherwise(pl.col("watch_seconds") >= config.watch_completion * pl.col("duration_seconds"))
    )
    return examples.with_columns(watched.alias("watched")).drop("duration_seconds")


def observed_outcomes(events: pl.LazyFrame, bounds: dict[str, datetime]) -> pl.LazyFrame:
    """Observed outcomes of the test window ``[t2, end]``, summed per (user, item).

    Columns: ``user_id``, ``item_id``, ``clicks`` (click events), ``watch_seconds`` (summed
    over watch events) and ``revenue`` (summed prices of purchase events). Bounded by the
    build's ``end`` too, so the window is the manifest's and no later event can enter it.
    """
    et = pl.col("event_type")
    window = (pl.col("timestamp") >= bounds["t2"]) & (pl.col("timestamp") <= bounds["end"])
    return (
        events.filter(window & et.is_in(["click", "watch", "purchase"]))
        .group_by("user_id", "item_id")
        .agg(
            (et == "click").sum().cast(pl.Int64).alias("clicks"),
            pl.col("watch_seconds").filter(et == "watch").sum().cast(pl.Float64),
            pl.col("price").filter(et == "purchase").sum().cast(pl.Float64).alias("revenue"),
        )
        .sort("user_id", "item_id")
    )


def build_dataset(
    workdir: Workdir, settings: Settings, progress: Progress | None = None
) -> Manifest:
    """Build every dataset file of ``workdir`` from its event log and catalog.

    ``dataset.engine`` picks what computes it: polars here, or Spark
    (:func:`feedforge.datasets.spark.build_dataset_spark`, the same files row for row).

    Returns:
        The manifest of the written dataset.

    Raises:
        feedforge.errors.ArtifactError: the catalog is missing.
        DataError: the log is empty or too short for the configured split.
    """
    if settings.dataset.engine == "spark":
        from feedforge.datasets.spark import build_dataset_spark

        return build_dataset_spark(workdir, settings, progress)
    say = progress or (lambda _msg: None)
    log = EventLog(workdir.events_dir)
    with log.reading():  # no compaction removes a file of the log while it is read
        return _build_dataset(workdir, settings, say, log)


def _build_dataset(
    workdir: Workdir, settings: Settings, say: Callable[[str], None], log: EventLog
) -> Manifest:
    config = settings.dataset
    catalog_manifest, items, _users = read_catalog(workdir)
    events = log.scan()
    bounds = split_bounds(events, config)
    out = workdir.dataset_dir
    out.mkdir(parents=True, exist_ok=True)

    say("labelling positives")
    positives = label_positives(events, items, config).with_columns(_split_expr(bounds)).collect()
    train_events = events.filter(pl.col("timestamp") < bounds["t1"])
    users = IdMap.fit(train_events.select("user_id").unique().collect().get_column("user_id"))
    item_map = IdMap.fit(train_events.select("item_id").unique().collect().get_column("item_id"))
    users.save(out / "ids" / "users.parquet")
    item_map.save(out / "ids" / "items.parquet")
    write_item_categories(out, item_map, items)

    def with_idx(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            users.index(frame.get_column("user_id")).alias("user_idx"),
            item_map.index(frame.get_column("item_id")).alias("item_idx"),
        )

    # Joins do not keep row order: sort, so the same log always builds the same files (and
    # order-sensitive learners, e.g. bagged GBDTs, the same models).
    positives = with_idx(positives).sort("timestamp", "event_id")
    say("computing point-in-time ranking examples")
    window = timedelta(seconds=config.attribution_seconds)
    ranking = with_idx(
        ranking_examples(events, items, config).with_columns(_split_expr(bounds)).collect()
    )
    boundary_ok = pl.lit(True)
    for edge in (bounds["t1"], bounds["t2"]):
        boundary_ok &= ~((pl.col("timestamp") < edge) & (pl.col("timestamp") + window > edge))
    boundary_ok &= pl.col("timestamp") + window <= bounds["end"] + timedelta(microseconds=1)
    censored = ranking.height
    ranking = ranking.filter(boundary_ok).sort("timestamp", "request_id", "position", "event_id")
    censored -= ranking.height

    counts: dict[str, int] = {}
    say("snapshotting features and outcomes of the test window")
    snapshot = snapshot_counters(events, items, bounds["t2"])
    (out / "snapshot").mkdir(exist_ok=True)
    for name, frame in zip(SNAPSHOT_FRAMES, snapshot, strict=True):
        # group_by gives no row order: sort, so the same log writes the same files.
        key = [c for c in ("user_id", "item_id", "category") if c in frame.columns]
        frame.sort(key).write_parquet(out / "snapshot" / f"{name}.parquet", compression="zstd")
        counts[f"snapshot_{name}"] = frame.height
    outcomes = with_idx(observed_outcomes(events, bounds).collect())
    outcomes.write_parquet(out / "outcomes_test.parquet", compression="zstd")
    counts["outcomes_test"] = outcomes.height

    for split in SPLITS:
        pos = positives.filter(pl.col("split") == split).drop("split")
        rank = ranking.filter(pl.col("split") == split).drop("split")
        pos.write_parquet(out / f"positives_{split}.parquet", compression="zstd")
        rank.write_parquet(out / f"ranking_{split}.parquet", compression="zstd")
    summary = BuildSummary.of(
        bounds,
        (users, item_map),
        items,
        events=int(events.select(pl.len()).collect().item()),
        censored=censored,
        inputs={"catalog": catalog_manifest.version, "events": f"{len(log.files())} files"},
        engine="polars",
    )
    return finish_build(out, settings, summary, counts)


@dataclass(frozen=True)
class BuildSummary:
    """What the dataset card and manifest say about a build beside its files' contents."""

    bounds: dict[str, datetime]
    users_in_id_map: int
    items_in_id_map: int
    catalog_items: int
    n_categories: int
    events: int
    censored: int
    """Impressions dropped because their attribution window crossed a split edge."""
    inputs: dict[str, str]
    engine: str

    @classmethod
    def of(
        cls,
        bounds: dict[str, datetime],
        id_maps: tuple[IdMap, IdMap],
        items: pl.DataFrame,
        *,
        events: int,
        censored: int,
        inputs: dict[str, str],
        engine: str,
    ) -> BuildSummary:
        """The summary of a build with these bounds, (user, item) id maps and catalog."""
        users, item_map = id_maps
        return cls(
            bounds=bounds,
            users_in_id_map=len(users),
            items_in_id_map=len(item_map),
            catalog_items=items.height,
            n_categories=int(items.select(pl.col("categories").list.first()).n_unique()),
            events=events,
            censored=censored,
            inputs=inputs,
            engine=engine,
        )


def finish_build(
    out: Path, settings: Settings, summary: BuildSummary, counts: dict[str, int]
) -> Manifest:
    """Write the card and the manifest of a dataset whose split files are in ``out``.

    Both engines end here: the per-split numbers of the card are read back from the written
    ``positives_<split>`` and ``ranking_<split>`` files, so the card describes the files.

    Raises:
        DataError: the train split has no positive interaction.
    """
    card_splits: dict[str, Any] = {}
    for split in SPLITS:
        pos = pl.scan_parquet(out / f"positives_{split}.parquet")
        rank = pl.scan_parquet(out / f"ranking_{split}.parquet")
        card_splits[split] = _split_card(pos, rank)
        counts[f"positives_{split}"] = card_splits[split]["positives"]
        counts[f"ranking_{split}"] = card_splits[split]["impressions"]
    if counts["positives_train"] == 0:
        raise DataError("the train split has no positive interactions; nothing to learn from")

    card = {
        "objective": settings.objective,
        "objective_label": " | ".join(positive_flags(settings_value(settings))),
        "split": {k: v.isoformat() for k, v in summary.bounds.items()},
        "users_in_id_map": summary.users_in_id_map,
        "items_in_id_map": summary.items_in_id_map,
        "catalog_items": summary.catalog_items,
        "events": summary.events,
        "impressions_dropped_at_split_edges": summary.censored,
        "splits": card_splits,
        "raw_counters": list(RAW_COUNTERS),
        "engine": summary.engine,
    }
    write_json_atomic(out / "card.json", card)
    (out / "card.md").write_text(render_card(card), encoding="utf-8")
    return write_manifest(
        out,
        Manifest(
            artifact=DATASET_ARTIFACT,
            schema_version=DATASET_SCHEMA_VERSION,
            inputs=summary.inputs,
            counts=counts,
            extra={
                "split": card["split"],
                "objective": settings.objective,
                "n_categories": summary.n_categories,
                "engine": summary.engine,
            },
        ),
    )


_KINDS = ("click", "watch", "like", "purchase", "rated")
_LABEL_RATES = {"click": "clicked", "watch": "watched", "like": "liked", "purchase": "purchased"}


def _split_card(pos: pl.LazyFrame, rank: pl.LazyFrame) -> dict[str, Any]:
    p = pos.select(
        pl.len().alias("rows"),
        pl.col("user_id").n_unique().alias("users"),
        pl.col("item_id").n_unique().alias("items"),
        *(pl.col(k).sum().alias(k) for k in _KINDS),
    ).collect()
    r = rank.select(
        pl.len().alias("rows"), *(pl.col(c).sum().alias(c) for c in _LABEL_RATES.values())
    ).collect()
    n = max(int(r.item(0, "rows")), 1)
    return {
        "positives": int(p.item(0, "rows")),
        "users": int(p.item(0, "users")),
        "items": int(p.item(0, "items")),
        "impressions": int(r.item(0, "rows")),
        "label_rates": {k: int(r.item(0, c) or 0) / n for k, c in _LABEL_RATES.items()},
        "positives_by_kind": {k: int(p.item(0, k) or 0) for k in _KINDS},
    }


def render_card(card: dict[str, Any]) -> str:
    """The dataset card as Markdown."""
    lines = [
        "# Dataset card",
        "",
        f"Objective: `{card['objective']}` (positive label: `{card['objective_label']}`)",
        "",
        "Split (global, by time): " + ", ".join(f"{k} = {v}" for k, v in card["split"].items()),
        "",
        f"Id maps (fitted on train): {card['users_in_id_map']} users, "
        f"{card['items_in_id_map']} items; catalog {card['catalog_items']} items; "
        f"{card['events']} events. Built with {card.get('engine', 'polars')}.",
        "",
        "| split | positives | users | items | impressions | click | watch | like | purchase |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, s in card["splits"].items():
        r = s["label_rates"]
        lines.append(
            f"| {split} | {s['positives']} | {s['users']} | {s['items']} | {s['impressions']} "
            f"| {r['click']:.4f} | {r['watch']:.4f} | {r['like']:.4f} | {r['purchase']:.4f} |"
        )
    lines.append("")
    lines.append(
        f"Impressions dropped because their attribution window crossed a split edge: "
        f"{card['impressions_dropped_at_split_edges']}."
    )
    return "\n".join(lines) + "\n"
