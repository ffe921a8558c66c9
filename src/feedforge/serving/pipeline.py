"""The online pipeline: retrieve -> rank -> re-rank, against the online store.

The service holds no state of its own beyond a cache of the *current published version*
(item ids, the item embedding matrix loaded from the store, the ranker from the version's
bundle). Every request resolves the store's ``current`` pointer and reloads the cache when a
new version was published, so a running service follows publishes without a restart.

The user vector (documented behaviour):

* a user with a published embedding ``u`` and live history items ``H`` (events ingested
  through ``POST /events``) is scored with ``q = u + w * mean(V[H])`` where ``w`` is
  ``serving.history_weight``;
* a user with only live history gets ``q = mean(V[H])``;
* a user with neither gets the popularity feed (cold start).

Items the user already consumed (published ``seen`` list plus live history) never appear.

After the ranker, the re-ranking stage (:mod:`feedforge.serving.rerank`, ``reranking``
config) applies business rules, freshness, category caps or MMR diversity and optional
exploration; every served item carries the propensity with which it was picked.

Candidate retrieval (the ``max(serving.candidates, k)`` items of largest ``V[i] · q`` the
ranker re-scores) goes through the version's ANN index (:mod:`feedforge.publish.ann`):

* ``serving.ann = "hnsw"`` (default): the HNSW index of the version's bundle, searched with an
  over-fetch of the number of consumed items, which are then dropped. When fewer candidates
  than needed survive, that request falls back to exact search. A version whose index is
  missing or corrupt is served with exact search (a warning is logged at load).
* ``serving.ann = "exact"``: ``item_matrix @ q`` over every item, the published index unused.

:attr:`Feed.retrieval` says which search answered.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from feedforge.config import ServingConfig, Settings
from feedforge.datasets.features import FEATURES, derive_features, raw_from_records
from feedforge.datasets.idmap import IdMap
from feedforge.errors import ArtifactError, ConfigError, NotPublishedError, ValidationError
from feedforge.events.log import AppendResult, EventLog
from feedforge.events.schema import Event, EventType
from feedforge.models.base import Ranker
from feedforge.models.ranker_utils import feature_difference
from feedforge.models.registry import load_ranker
from feedforge.monitoring.metrics import ServiceMetrics
from feedforge.publish.ann import AnnIndex, RetrievalMethod, load_or_exact
from feedforge.publish.publisher import ANN_DIR, ITEM_EMB, ITEM_FEAT, USER_EMB, USER_FEAT
from feedforge.publish.store import OnlineStore
from feedforge.serving.rerank import Candidates, needs_item_metadata, pinned_item_ids, rerank
from feedforge.workdir import Workdir

HISTORY_EVENTS = frozenset(
    {EventType.CLICK, EventType.WATCH, EventType.LIKE, EventType.PURCHASE, EventType.RATING}
)
"""Event types that enter a user's live history (impressions and skips do not)."""

_LOAD_CHUNK = 10_000


@dataclass(frozen=True)
class LoadedVersion:
    """One published version, loaded in memory."""

    version: str
    meta: dict[str, Any]
    items: IdMap
    item_matrix: np.ndarray  # (n_items, D) float32
    index: AnnIndex  # candidate retrieval over item_matrix
    ranker: Ranker | None  # None: candidates are ordered by their retrieval score
    popular: list[str]
    snapshot_time: float  # epoch seconds
    published_at: float  # epoch seconds

    def now(self) -> float:
        """The scoring clock: the snapshot time advanced by the wall time since publishing."""
        return self.snapshot_time + (datetime.now(UTC).timestamp() - self.published_at)


def _age_days(records: list[dict[str, Any] | None], now_s: float) -> np.ndarray:
    """``(N,)`` item ages in days at ``now_s`` from feature records (NaN when unknown)."""
    created = [r.get("created_at_s") if r is not None else None for r in records]
    return np.array([np.nan if c is None else (now_s - c) / 86_400.0 for c in created])


@dataclass(frozen=True)
class Feed:
    user_id: str
    version: str
    strategy: str
    item_ids: list[str]
    scores: list[float]
    retrieval: RetrievalMethod | None = None  # the search that found the candidates
    propensities: list[float] | None = None  # per item; None means all 1 (deterministic)


def load_version(
    store: OnlineStore,
    version: str,
    meta: dict[str, Any],
    serving: ServingConfig | None = None,
) -> LoadedVersion:
    """Load a published version's item embeddings (store), ranker and ANN index (bundle).

    Args:
        store: The online store.
        version: The version to load.
        meta: Its metadata.
        serving: ``ann`` picks the index (``exact`` ignores the bundle's) and
            ``ann_ef_search`` its search beam; default :class:`ServingConfig`'s defaults.
    """
    cfg = serving or ServingConfig()
    bundle = Path(meta["bundle"])
    command = "feedforge publish"
    items = IdMap.load(bundle / "item_ids.parquet", command)
    ids = items.ids.to_list()
    parts = []
    for start in range(0, len(ids), _LOAD_CHUNK):
        vectors, _found = store.get_vectors(version, ITEM_EMB, ids[start : start + _LOAD_CHUNK])
        parts.append(vectors)
    matrix = np.vstack(parts) if parts else np.zeros((0, int(meta["dim"])), dtype=np.float32)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if cfg.ann == "exact":
        index = AnnIndex.exact(matrix)
    else:
        ann_dir = bundle / str((meta.get("ann") or {}).get("dir", ANN_DIR))
        index = load_or_exact(ann_dir, matrix, ef_search=cfg.ann_ef_search)
    ranker = None
    if meta.get("ranker"):
        published = [str(f) for f in meta.get("features", [])]
        if published != list(FEATURES):
            # The service computes today's features; a ranker trained on others would be fed
            # the wrong columns.
            raise ArtifactError(
                bundle,
                f"version {version} was published with another feature list ("
                + feature_difference(published, list(FEATURES))
                + "); train and publish it again with this code",
                "feedforge train && feedforge publish",
            )
        ranker = load_ranker(
            meta["ranker"], bundle / "ranker", command, expected_features=published
        )
        try:
            ranker.use_device(cfg.ranker_device)
        except ValidationError as exc:
            raise ConfigError(f"serving.ranker_device: {exc}") from exc
    return LoadedVersion(
        version=version,
        meta=meta,
        items=items,
        item_matrix=matrix,
        index=index,
        ranker=ranker,
        popular=list(meta["popular"]),
        snapshot_time=datetime.fromisoformat(meta["snapshot_time"]).timestamp(),
        published_at=datetime.fromisoformat(meta["published_at"]).timestamp(),
    )


class FeedService:
    """Serves feeds and ingests events for one work directory and one online store."""

    def __init__(self, settings: Settings, workdir: Workdir, store: OnlineStore) -> None:
        self.settings = settings
        self.workdir = workdir
        self.store = store
        self.log = EventLog(workdir.events_dir)
        self._loaded: LoadedVersion | None = None
        self._lock = threading.Lock()
        self.metrics = ServiceMetrics()
        """The Prometheus metrics (``GET /metrics``), e.g. candidates scored with default
        features because the snapshot had no record for them."""

    # -- version cache ------------------------------------------------------------------------
    def current(self) -> LoadedVersion:
        """The loaded current version, reloaded when the store's pointer moved.

        Raises:
            NotPublishedError: nothing was published yet.
            feedforge.errors.StoreUnavailableError: the store cannot be reached.
        """
        version = self.store.current_version()
        if version is None:
            raise NotPublishedError(
                f"nothing is published yet; run `{self.workdir.command('publish')}`"
            )
        loaded = self._loaded
        if loaded is not None and loaded.version == version:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.version != version:
                meta = self.store.get_meta(version)
                if meta is None:
                    raise NotPublishedError(f"version {version} has no metadata in the store")
                self._loaded = load_version(self.store, version, meta, self.settings.serving)
                self.metrics.serving(version)
            return self._loaded

    # -- feeds ------------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int, device: str | None = None) -> Feed:
        """The top-``k`` feed of a user (see the module docs for the pipeline).

        ``device`` is the request's device (a ranking feature); None uses the user's last.
        """
        state = self.current()
        cfg = self.settings.serving
        metrics = self.metrics
        with metrics.stage("retrieve"):
            vectors, found = self.store.get_vectors(state.version, USER_EMB, [user_id])
            user_record = self.store.get_records(state.version, USER_FEAT, [user_id])[0]
            record = user_record or {}
            history = self.store.get_history(user_id, cfg.history_length)
            seen = set(record.get("seen", ())) | set(history)
            hist_idx = [i for i in (state.items.get(h) for h in history) if i is not None]

            if not found[0] and not hist_idx:
                return self._popular(state, user_id, k, seen)
            query = np.zeros(state.item_matrix.shape[1], dtype=np.float32)
            if found[0] and vectors.shape[1] == query.shape[0]:
                query += vectors[0]
            if hist_idx:
                weight = cfg.history_weight if found[0] else 1.0
                query += weight * state.item_matrix[hist_idx].mean(axis=0)

            seen_idx = [i for i in (state.items.get(s) for s in seen) if i is not None]
            # At least k candidates: a feed of k > serving.candidates must not be cut short.
            found_cand = state.index.retrieve(query, max(cfg.candidates, k), exclude=seen_idx)
            cand, cand_scores = list(found_cand.ids), list(found_cand.scores)
            # Pinned items join the candidates even when retrieval missed them (unless seen).
            for item_id in pinned_item_ids(self.settings.reranking):
                idx = state.items.get(item_id)
                if idx is not None and item_id not in seen and idx not in cand:
                    cand.append(idx)
                    cand_scores.append(float(state.item_matrix[idx] @ query))
            if not cand:
                return self._popular(state, user_id, k, seen)
        cand_ids = state.items.id_of(np.asarray(cand, dtype=np.int64))
        reranking = self.settings.reranking
        retrieval_scores = np.asarray(cand_scores, dtype=np.float64)
        # One batched read of the candidates' feature records, when the ranker or re-ranking
        # (categories, ages) reads them.
        records: list[dict[str, Any] | None] = [None] * len(cand_ids)
        X = None
        with metrics.stage("features"):
            if state.ranker is not None or needs_item_metadata(reranking):
                records = self.store.get_records(state.version, ITEM_FEAT, cand_ids)
            if state.ranker is not None:
                X = self._features(state, user_record, records, retrieval_scores, device)
        with metrics.stage("score"):
            # The ranker's one batched call; without a ranker, the retrieval order.
            ranker = state.ranker
            scores = retrieval_scores if ranker is None or X is None else ranker.score(X)
        with metrics.stage("rerank"):
            shown = rerank(
                Candidates(
                    item_ids=cand_ids,
                    scores=scores,
                    categories=[(r or {}).get("category", "") for r in records],
                    age_days=_age_days(records, state.now()),
                    vectors=state.item_matrix[cand] if reranking.mmr_lambda is not None else None,
                ),
                k,
                reranking,
            )
        metrics.feeds.labels(strategy="personalized").inc()
        return Feed(
            user_id=user_id,
            version=state.version,
            strategy="personalized",
            item_ids=shown.item_ids,
            scores=shown.scores,
            retrieval=found_cand.method,
            propensities=shown.propensities,
        )

    def _features(
        self,
        state: LoadedVersion,
        user: dict[str, Any] | None,
        records: list[dict[str, Any] | None],
        retrieval: np.ndarray,
        device: str | None,
    ) -> np.ndarray:
        """The ranker's ``(N, F)`` features of the candidates from the user's and their
        records (read in one batch).

        A user or candidate missing from the snapshot takes the documented defaults
        (:func:`~feedforge.datasets.features.raw_from_records`) and is counted in
        ``feedforge_missing_features_total{kind="user"|"item"}``.
        """
        raw, missing = raw_from_records(user, records, state.now(), device)
        if user is None:
            self.metrics.missing_features.labels(kind="user").inc()
        if missing:
            self.metrics.missing_features.labels(kind="item").inc(missing)
        return derive_features(raw, retrieval, int(state.meta["n_categories"]))

    def _popular(self, state: LoadedVersion, user_id: str, k: int, seen: set[str]) -> Feed:
        self.metrics.feeds.labels(strategy="popular").inc()
        picked = [item for item in state.popular if item not in seen][:k]
        return Feed(
            user_id=user_id,
            version=state.version,
            strategy="popular",
            item_ids=picked,
            scores=[1.0 / (rank + 1) for rank in range(len(picked))],
        )

    # -- events -----------------------------------------------------------------------------
    def ingest(self, events: list[Event]) -> AppendResult:
        """Store events durably, then append their items to the users' live histories."""
        result = self.log.append(events)
        per_user: dict[str, list[str]] = {}
        for event in sorted(events, key=lambda e: e.timestamp):
            if event.event_type in HISTORY_EVENTS:
                per_user.setdefault(event.user_id, []).append(event.item_id)
        for user_id, items in per_user.items():
            self.store.append_history(user_id, items, self.settings.serving.history_length)
        return result

    # -- health -----------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, str]]:
        """Whether the store answers and a published version is loadable, with details."""
        checks: dict[str, str] = {}
        ok = self.store.ping()
        checks["store"] = "ok" if ok else "unreachable"
        if ok:
            try:
                checks["version"] = self.current().version
            except Exception as exc:
                checks["version"] = f"unavailable: {exc}"
                ok = False
        return ok, checks
