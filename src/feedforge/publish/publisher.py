"""Publishing: trained models + fresh features -> a new version in the online store.

A publish

1. writes a *serving bundle* ``WORKDIR/bundles/<version>/`` (item id order, the ranker, the
   ANN index over the served item embeddings in ``ann/``, of the kind ``serving.ann`` names;
   see :mod:`feedforge.index.ann`; the ranker's reference profile, the baseline of drift,
   :mod:`feedforge.publish.reference`). The served items are the retrieval model's, completed
   with content-mapped vectors for catalog items it has none for (``serving.cold_items``,
   :mod:`feedforge.publish.coldstart`), so the whole catalog can be retrieved,
2. writes every key of the version into the online store (user and item embeddings as float32
   bytes, user and item feature records, the metadata with the popularity fallback list),
3. flips the store's ``current`` pointer to the new version in one atomic write, and
4. marks the version it replaced as retired, and deletes versions older than the newest
   ``store.keep_versions`` once they have been retired for ``store.retire_grace_s``
   (:mod:`feedforge.publish.versions`; never the current one).

Readers resolve ``current`` once per request, so they see either the old or the new version,
never a mix.

Feature records hold the raw counters of :mod:`feedforge.features.definitions`, counted from
every event strictly before the snapshot time (the log's last event).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime

import numpy as np
import polars as pl

from feedforge.artifacts import Manifest, new_version, write_manifest
from feedforge.config import ServingConfig, Settings
from feedforge.datasets.idmap import IdMap
from feedforge.datasets.load import load_dataset
from feedforge.errors import ArtifactError, DataError, StoreError
from feedforge.events.catalog import read_catalog, unavailable_items
from feedforge.events.log import EventLog
from feedforge.events.schema import CONSUMED_EVENTS
from feedforge.features.content import CONTENT_MAP_FILE
from feedforge.features.definitions import FEATURES
from feedforge.features.offline import snapshot_counters, snapshot_time_of
from feedforge.features.online import item_records, user_records
from feedforge.index.ann import AnnIndex, AnnKind
from feedforge.models.base import EmbeddingRecommender
from feedforge.models.registry import RANKERS, load_ranker, load_recommender
from feedforge.publish.coldstart import cold_item_embeddings
from feedforge.publish.reference import training_reference
from feedforge.publish.versions import prune_versions, retire
from feedforge.store.base import OnlineStore
from feedforge.store.bundle import (
    ANN_DIR,
    BUNDLE_ARTIFACT,
    BUNDLE_SCHEMA_VERSION,
    ITEM_IDS_FILE,
    RANKER_DIR,
    REFERENCE_PROFILE_FILE,
)
from feedforge.store.keys import ITEM_EMB, ITEM_FEAT, USER_EMB, USER_FEAT
from feedforge.store.last_current import remember_current
from feedforge.store.live_items import prune_folded
from feedforge.workdir import Workdir

POPULAR_LIST_SIZE = 1_000
ANN_SEED = 0
_CHUNK = 10_000

Progress = Callable[[str], None]


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]


def build_serving_index(
    item_embeddings: np.ndarray,
    user_embeddings: np.ndarray,
    serving: ServingConfig,
    kind: AnnKind | None = None,
) -> AnnIndex:
    """The ANN index a published version serves from, as ``serving`` configures it
    (``ann`` unless ``kind`` overrides it, ``ann_m``, ``ann_ef_construction``,
    ``ann_ef_search``, ``ann_metric`` probed with the users' vectors at
    ``candidates``, seed :data:`ANN_SEED`)."""
    return AnnIndex.build(
        item_embeddings,
        kind=kind or serving.ann,
        m=serving.ann_m,
        ef_construction=serving.ann_ef_construction,
        ef_search=serving.ann_ef_search,
        seed=ANN_SEED,
        metric=serving.ann_metric,
        probe_queries=user_embeddings,
        probe_k=serving.candidates,
    )


def publish(
    workdir: Workdir,
    settings: Settings,
    store: OnlineStore,
    progress: Progress | None = None,
    *,
    make_current: bool = True,
    version: str | None = None,
) -> str:
    """Publish the trained models of ``workdir`` as a new version and make it current.

    With ``make_current=False`` the version is *staged*: written to the store and the
    bundles, but the ``current`` pointer is left alone (a canary serves it through an
    experiment; :func:`promote` makes it current later). Nothing is retired or pruned then.

    Returns:
        The new version id.

    Raises:
        feedforge.errors.ArtifactError: the dataset or a model is missing.
        feedforge.errors.StoreError: the online store failed; the current version is unchanged.
    """
    say = progress or (lambda _msg: None)
    command = workdir.command("train")
    dataset = load_dataset(workdir)
    retrieval = load_recommender(
        settings.models.retrieval, workdir.model_dir(settings.models.retrieval), command
    )
    if not isinstance(retrieval, EmbeddingRecommender):
        raise DataError(f"retrieval model {settings.models.retrieval!r} has no embeddings")
    popularity = load_recommender("popularity", workdir.model_dir("popularity"), command)
    # No ranker is trained on logs without impressions (imported rating data): the version
    # then ranks candidates by their retrieval score.
    ranker_name = settings.models.ranker.type
    ranker_dir = workdir.model_dir(ranker_name)
    others = [name for name in RANKERS if name != ranker_name and workdir.model_dir(name).is_dir()]
    if not ranker_dir.is_dir() and others:
        # A ranker was trained, but not the configured one: publishing without it would
        # silently serve retrieval order.
        raise ArtifactError(
            ranker_dir,
            f"missing the configured ranker models.ranker.type={ranker_name!r} "
            f"(trained rankers here: {others})",
            workdir.command("train"),
        )
    ranker = (
        load_ranker(ranker_name, ranker_dir, command, expected_features=list(FEATURES))
        if ranker_dir.is_dir()
        else None
    )
    # Item updates appended from now on are not in this version: they stay in the service's
    # live items (store.live_items) after it becomes current.
    catalog_read_at = datetime.now(UTC)
    _, items, _ = read_catalog(workdir)
    withdrawn = unavailable_items(workdir)
    say("computing feature snapshot")
    log = EventLog(workdir.events_dir)
    with log.reading():  # no compaction removes a file of the log while it is read
        events = log.scan()
        snapshot_time = snapshot_time_of(events)
        user_counts, item_counts, user_cats = snapshot_counters(events, items, snapshot_time)
        seen = (
            events.filter(pl.col("event_type").is_in(CONSUMED_EVENTS))
            .group_by("user_id")
            .agg(pl.col("item_id").unique().alias("seen"))
            .collect()
        )

    version = version or new_version()
    say(f"writing serving bundle {version}")
    bundle = workdir.bundles_dir / version
    bundle.mkdir(parents=True)
    # The bundle's lineage: the dataset and each model version it was built from (read from
    # each model directory's manifest when the model was loaded).
    models = [popularity, retrieval] + ([ranker] if ranker is not None else [])
    inputs = {"dataset": dataset.version, **{m.artifact(): m.artifact_version for m in models}}
    if ranker is not None:
        # The bundle's copy of the ranker was built from the trained one.
        ranker.save(bundle / RANKER_DIR, inputs={ranker.artifact(): inputs[ranker.artifact()]})
        say("profiling the ranker's training rows (the drift reference)")
        reference = training_reference(dataset, retrieval, ranker, settings, version)
        if reference is not None:
            reference.save(bundle / REFERENCE_PROFILE_FILE)
    u_emb, i_emb = retrieval.user_embeddings(), retrieval.item_embeddings()
    serving = settings.serving
    i_ids = dataset.items.ids.to_list()
    cold_stats: dict[str, str | float | int | None] = {"method": "none", "content_items": 0}
    if serving.cold_items == "content":
        say("mapping catalog attributes to embeddings for items without learned ones")
        cold = cold_item_embeddings(items, i_ids, i_emb, snapshot_time)
        i_ids, i_emb = cold.ids, cold.vectors
        cold_stats = {"method": "content", "content_items": cold.n_content, "r2": cold.r2}
        if cold.mapping is not None:
            # Items posted after this publish get their vectors from the same map.
            cold.mapping.save(bundle / CONTENT_MAP_FILE)
    if withdrawn:
        # Withdrawn items leave the served items even when the retrieval model learned them.
        keep = np.array([i not in withdrawn for i in i_ids], dtype=bool)
        i_ids, i_emb = [i for i, k in zip(i_ids, keep, strict=True) if k], i_emb[keep]
    IdMap(i_ids).save(bundle / ITEM_IDS_FILE)
    say(f"building the {serving.ann} ANN index over {len(i_emb)} item embeddings")
    index = build_serving_index(i_emb, u_emb, serving)
    if index.params.probe_recall:
        say(f"ANN graph {index.params.metric} (probe recall {index.params.probe_recall})")
    index.save(bundle / ANN_DIR)

    user_ids, user_recs = user_records(user_counts, user_cats, seen)
    item_ids, item_recs = item_records(item_counts)

    say("writing embeddings and features to the online store")
    u_ids = dataset.users.ids.to_list()
    for s in _chunks(len(u_ids)):
        store.put_vectors(version, USER_EMB, u_ids[s], u_emb[s])
    for s in _chunks(len(i_ids)):
        store.put_vectors(version, ITEM_EMB, i_ids[s], i_emb[s])
    for s in _chunks(len(user_ids)):
        store.put_records(version, USER_FEAT, user_ids[s], user_recs[s])
    for s in _chunks(len(item_ids)):
        store.put_records(version, ITEM_FEAT, item_ids[s], item_recs[s])

    popular_idx = np.argsort(-popularity.score(np.zeros(1, dtype=np.int64))[0], kind="stable")
    popular = dataset.items.id_of(popular_idx[:POPULAR_LIST_SIZE])
    meta = {
        "version": version,
        "published_at": datetime.now(UTC).isoformat(),
        "snapshot_time": snapshot_time.isoformat(),
        "objective": settings.objective,
        "retrieval_model": settings.models.retrieval,
        "ranker": ranker_name if ranker is not None else None,
        "features": list(FEATURES),
        "n_categories": dataset.n_categories,
        "dim": int(i_emb.shape[1]),
        "n_items": len(i_ids),
        "cold_items": cold_stats,
        "n_users": len(u_ids),
        "popular": popular,
        "bundle": str(bundle),
        "ann": {"dir": ANN_DIR, **asdict(index.params)},
        "dataset_version": dataset.version,
        "catalog_read_at": catalog_read_at.isoformat(),
    }
    write_manifest(
        bundle,
        Manifest(
            artifact=BUNDLE_ARTIFACT,
            schema_version=BUNDLE_SCHEMA_VERSION,
            version=version,
            inputs=inputs,
            counts={"items": len(i_ids), "users": len(u_ids)},
            # The popular list too: the service's fallback when it starts with the store down.
            extra=meta,
        ),
    )
    store.put_meta(version, meta)
    if not make_current:
        say(f"version {version} is staged (not current)")
        return version
    promote(workdir, settings, store, version)
    say(f"version {version} is live")
    return version


def promote(workdir: Workdir, settings: Settings, store: OnlineStore, version: str) -> None:
    """Make a published (or staged) version current: flip the pointer, remember it for a
    service starting with the store down, retire the replaced version and prune old ones.

    Raises:
        feedforge.errors.StoreError: ``version`` is not in the store.
    """
    meta = store.get_meta(version)
    if meta is None:
        raise StoreError(f"version {version!r} is not in the store (kept: {store.versions()})")
    previous = store.current_version()
    store.set_current(version)
    remember_current(workdir.current_dir, store, version, list(meta.get("popular") or []))
    if previous is not None and previous != version:
        retire(store, previous)
    if meta.get("catalog_read_at"):
        prune_folded(store, datetime.fromisoformat(str(meta["catalog_read_at"])).timestamp())
    prune_versions(workdir, store, settings.store.keep_versions, settings.store.retire_grace_s)
