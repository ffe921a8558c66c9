"""Batch scoring, the offline alternative to online serving: top-N for every user, in chunks.

``feedforge batch-score`` runs the same two stages as the evaluation's two-stage pipeline
(:func:`~feedforge.models.two_stage.two_stage_recommend`): the retrieval model's top
``serving.candidates`` per user, minus every item the user consumed in the event log,
re-scored by the trained ranker on features snapshotted at the log's end, as publish does.
Chunks of users go:

* to Parquet (``user_id``, ``rank``, ``item_id``, ``score``, ``version``, ``computed_at``),
  written chunk by chunk so memory stays bounded by one chunk;
* optionally to the online store, as the precomputed feed of each user under the current
  published version (key kind :data:`feedforge.store.keys.FEED`). A service with
  ``serving.precomputed: true`` answers from it while it is younger than
  ``serving.precomputed_max_age_s`` (dropping items consumed since, and re-ranking the rest
  with the online re-ranking stage: rules, caps, freshness, exploration), and runs the online
  pipeline otherwise.

Precomputed feeds are only written when the published version was built from the same
dataset as the trained models, so their item ids are the served version's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from feedforge.config import Settings
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.errors import ConfigError, NotPublishedError, StoreError
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import CONSUMED_EVENTS
from feedforge.features.offline import snapshot_counters, snapshot_time_of
from feedforge.models.base import EmbeddingRecommender
from feedforge.models.registry import load_ranker, load_recommender
from feedforge.models.two_stage import two_stage_recommend
from feedforge.store.base import OnlineStore
from feedforge.store.keys import FEED
from feedforge.workdir import Workdir

Progress = Callable[[int, int], None]
"""``(users done, users in all)``."""

_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("version", pa.string()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class BatchResult:
    """What a batch run wrote."""

    users: int
    rows: int
    path: Path | None
    version: str | None  # the published version the feeds were stored under, if any


def batch_score(
    workdir: Workdir,
    settings: Settings,
    top_n: int,
    out: Path | None,
    store: OnlineStore | None = None,
    chunk_users: int = 2_000,
    progress: Progress | None = None,
) -> BatchResult:
    """Score every user of the dataset and write the top ``top_n`` (see the module docs).

    Args:
        workdir: The trained work directory.
        settings: Models, candidates and the ranker type.
        top_n: Items per user.
        out: The Parquet file to write, or None.
        store: Write the feeds to this store as precomputed feeds (None: do not).
        chunk_users: Users scored per chunk.
        progress: Called after each chunk.

    Raises:
        ConfigError: the retrieval model has no embeddings, or nowhere to write.
        NotPublishedError / StoreError: ``store`` has no current version built from this
            dataset.
    """
    if out is None and store is None:
        raise ConfigError("batch-score needs --out (Parquet) or --to-store, or both")
    if top_n < 1 or chunk_users < 1:
        raise ConfigError("top_n and chunk_users must be >= 1")
    command = workdir.command("train")
    dataset = load_dataset(workdir)
    retrieval = load_recommender(
        settings.models.retrieval, workdir.model_dir(settings.models.retrieval), command
    )
    if not isinstance(retrieval, EmbeddingRecommender):
        raise ConfigError(f"models.retrieval={settings.models.retrieval!r} has no embeddings")
    ranker_dir = workdir.model_dir(settings.models.ranker.type)
    ranker = None
    if ranker_dir.is_dir():
        ranker = load_ranker(settings.models.ranker.type, ranker_dir, command)
    version = _store_version(store, dataset.version) if store is not None else None

    _, items, _ = read_catalog(workdir)
    log = EventLog(workdir.events_dir)
    with log.reading():  # no compaction removes a file of the log while it is read
        events = log.scan()
        now = snapshot_time_of(events)
        snapshot = snapshot_counters(events, items, now)
        exclude = _consumed(events, dataset)
    computed_at = datetime.now(UTC)

    n_users = len(dataset.users)
    writer = pq.ParquetWriter(out, _SCHEMA, compression="zstd") if out is not None else None
    rows = 0
    try:
        for start in range(0, n_users, chunk_users):
            users = np.arange(start, min(start + chunk_users, n_users), dtype=np.int64)
            idx, scores = two_stage_recommend(
                retrieval,
                ranker,
                dataset,
                snapshot,
                now,
                users,
                top_n,
                settings.serving.candidates,
                exclude,
            )
            valid = np.isfinite(scores)
            user_ids = dataset.users.id_of(users)
            per_user = [
                (dataset.items.id_of(idx[r][valid[r]]), scores[r][valid[r]].tolist())
                for r in range(len(users))
            ]
            if writer is not None:
                writer.write_table(_table(user_ids, per_user, version, computed_at))
            if store is not None and version is not None:
                records = [
                    {"items": ids, "scores": s, "computed_at_s": computed_at.timestamp()}
                    for ids, s in per_user
                ]
                store.put_records(version, FEED, user_ids, records)
            rows += int(valid.sum())
            if progress is not None:
                progress(int(users[-1]) + 1, n_users)
    finally:
        if writer is not None:
            writer.close()
    if store is not None and version is not None:
        # The run's time, for the freshness of precomputed feeds (feedforge monitor freshness).
        meta = store.get_meta(version) or {}
        store.put_meta(version, {**meta, "precomputed_at": computed_at.isoformat()})
    return BatchResult(users=n_users, rows=rows, path=out, version=version)


def _store_version(store: OnlineStore, dataset_version: str) -> str:
    version = store.current_version()
    if version is None:
        raise NotPublishedError("nothing is published: publish before storing precomputed feeds")
    meta = store.get_meta(version) or {}
    if meta.get("dataset_version") != dataset_version:
        raise StoreError(
            f"the current version {version} was published from dataset "
            f"{meta.get('dataset_version')}, the models here from {dataset_version}: publish "
            "these models first, so the precomputed feeds hold the served version's items"
        )
    return version


def _consumed(events: pl.LazyFrame, dataset: Dataset) -> sp.csr_matrix:
    """``(n_users, n_items)`` CSR of every item each known user consumed in the log."""
    pairs = (
        events.filter(pl.col("event_type").is_in(CONSUMED_EVENTS))
        .select("user_id", "item_id")
        .unique()
        .collect()
    )
    pairs = pairs.with_columns(
        dataset.users.index(pairs.get_column("user_id")).alias("u"),
        dataset.items.index(pairs.get_column("item_id")).alias("i"),
    ).drop_nulls(["u", "i"])
    return sp.csr_matrix(
        (
            np.ones(pairs.height, dtype=np.float32),
            (pairs.get_column("u").to_numpy(), pairs.get_column("i").to_numpy()),
        ),
        shape=(len(dataset.users), len(dataset.items)),
    )


def _table(
    user_ids: list[str],
    per_user: list[tuple[list[str], list[float]]],
    version: str | None,
    computed_at: datetime,
) -> pa.Table:
    users, ranks, items, scores = [], [], [], []
    for user, (ids, s) in zip(user_ids, per_user, strict=True):
        users += [user] * len(ids)
        ranks += list(range(1, len(ids) + 1))
        items += ids
        scores += s
    n = len(users)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "rank": pa.array(ranks, pa.int32()),
            "item_id": pa.array(items, pa.string()),
            "score": pa.array(scores, pa.float32()),
            "version": pa.array([version] * n, pa.string()),
            "computed_at": pa.array([computed_at] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=_SCHEMA,
    )
