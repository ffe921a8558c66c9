"""The online pipeline: retrieve -> rank -> re-rank, against the online store.

Over ~400 lines on purpose: a request's path, read to re-rank, reads top to bottom in one class.

The service holds no state of its own beyond a cache of the *current published version*
(item ids, the item embedding matrix loaded from the store, the ranker from the version's
bundle). Every request reads the store's ``current`` pointer in the same round trip as its
user's embedding, record and live history (:meth:`~feedforge.store.base.OnlineStore.read_user`)
and hands the pointer to its :class:`~feedforge.serving.following.VersionFollower`, which
starts loading a newly published version in the background, so a running service follows
publishes without a restart. A version that fails to load is retried after
``serving.load_retry_s``, doubling, while the previous one keeps serving.

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
ranker re-scores) goes through the version's ANN index (:mod:`feedforge.index.ann`):

* ``serving.ann = "hnsw"`` (default): the HNSW index of the version's bundle, searched with an
  over-fetch of the number of consumed items, which are then dropped. When fewer candidates
  than needed survive, that request falls back to exact search. A version whose index is
  missing or corrupt is served with exact search (a warning is logged at load).
* ``serving.ann = "exact"``: ``item_matrix @ q`` over every item, the published index unused.

:attr:`Feed.retrieval` says which search answered.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from feedforge.config import ReRankConfig, Settings
from feedforge.errors import StoreUnavailableError
from feedforge.events.log import AppendResult, EventLog
from feedforge.events.schema import CONSUMED_EVENTS, Event, EventType
from feedforge.events.stream import RedisEventStream
from feedforge.features.definitions import derive_features
from feedforge.features.item_table import raw_from_table
from feedforge.monitoring.metrics import ServiceMetrics
from feedforge.serving.experiments import ExperimentFollower, Plan
from feedforge.serving.explain import DEGRADED, POPULAR, Explanation, explain_by_history
from feedforge.serving.exposure import serve_request
from feedforge.serving.fallback import DiskFallback, StoreGuard
from feedforge.serving.feed import Feed
from feedforge.serving.feedlog import FeedLog
from feedforge.serving.following import VersionFollower
from feedforge.serving.held import SCAN_INTERVAL_S, PendingHistories
from feedforge.serving.live import LiveItems
from feedforge.serving.monitor import ServiceMonitor
from feedforge.serving.rerank import (
    Candidates,
    Reranked,
    pinned_item_ids,
    request_rng,
    rerank,
)
from feedforge.serving.version import LoadedVersion
from feedforge.store.base import OnlineStore, UserRead
from feedforge.store.keys import FEED, USER_EMB, USER_FEAT
from feedforge.workdir import Workdir

logger = logging.getLogger("feedforge.serving")

_MAX_READS = 3  # user reads per request while versions keep changing under it

HISTORY_EVENTS = frozenset(EventType(name) for name in CONSUMED_EVENTS)
"""Event types that enter a user's live history (impressions and skips do not)."""


_Scored = tuple[
    LoadedVersion,
    np.ndarray,
    list[str],
    np.ndarray,
    dict[str, Any],
    list[str],
    Any,
    np.ndarray | None,
    float,
]
"""What :meth:`FeedService._score` gives re-ranking: the version, candidate indices, ids and
scores, the user's record and history, the search method, the feature matrix (None without a
ranker) and the scoring clock."""


class FeedService:
    """Serves feeds and ingests events for one work directory and one online store."""

    def __init__(self, settings: Settings, workdir: Workdir, store: OnlineStore) -> None:
        self.settings = settings
        self.workdir = workdir
        self.store = store
        self.log = EventLog(workdir.events_dir)
        self.metrics = ServiceMetrics()
        """The Prometheus metrics (``GET /metrics``), e.g. candidates scored with default
        features because the snapshot had no record for them."""
        self.versions = VersionFollower(store, settings.serving, workdir, self.metrics)
        """The published version this worker serves (:mod:`feedforge.serving.following`)."""
        self.guard = StoreGuard(settings.serving.store_retry_s)
        self.feed_log = (
            FeedLog.from_settings(workdir.feedlog_dir, settings.serving)
            if settings.serving.feed_log
            else None
        )
        self.stream = (
            RedisEventStream(settings.events) if settings.events.stream == "redis" else None
        )
        """The shared event stream ``POST /events`` appends to (``events.stream: redis``);
        None: the service appends to the event log itself."""
        self.pending = PendingHistories(workdir.held_dir)
        """Held live-history updates, journalled durably (:mod:`feedforge.serving.held`)."""
        self._disk_fallback = DiskFallback(workdir.current_dir, store)
        self.experiments = ExperimentFollower(
            store, settings, workdir, lambda: self.versions.loaded
        )
        """The running experiments (:mod:`feedforge.serving.experiments`); started by the
        app, so a service used without it serves every user the default plan."""
        self.monitor = ServiceMonitor(
            settings, workdir, store, self.metrics, lambda: self.versions.loaded, self.log
        )
        """Serving profile, drift, skew sample, freshness and KPIs
        (:mod:`feedforge.serving.monitor`); its thread is started by the app."""
        self.live = LiveItems(store, settings.serving.live_items_refresh_s)
        """Items posted or withdrawn since the last publish (:mod:`feedforge.serving.live`);
        its refresh thread is started by the app."""
        self._stopping = threading.Event()  # ends the held-history replay thread
        self._replayer: threading.Thread | None = None

    # -- feeds ------------------------------------------------------------------------------
    def serve(self, user_id: str, k: int, device: str | None, request_id: str) -> Feed:
        """Answer one feed request under the running experiments and log it
        (:func:`feedforge.serving.exposure.serve_request`)."""
        return serve_request(self, user_id, k, device, request_id)

    def recommend(
        self,
        user_id: str,
        k: int,
        device: str | None = None,
        plan: Plan | None = None,
        request_id: str | None = None,
    ) -> Feed:
        """The top-``k`` feed of a user (see the module docs for the pipeline).

        ``device`` is the request's device (a ranking feature); None uses the user's last.
        ``plan`` is an experiment variant's (default: the service's settings). Exploration
        draws from ``request_id`` (with ``exploration.seed``), so a request's feed is
        reproducible from the feed log; None draws from ``exploration.seed`` alone.
        While the store is unavailable the answer is the in-process fallback, marked
        ``degraded`` (:mod:`feedforge.serving.fallback`). The store read is bounded by
        ``store.read_timeout_ms``; the service's routes call this off the event loop.

        Raises:
            feedforge.errors.NotPublishedError: the store answers but nothing was published yet.
            StoreUnavailableError: the store is unavailable and there is nothing to fall
                back to (no version loaded, no bundle on disk).
        """
        if self.guard.available():
            try:
                if self.guard.last_error is not None and len(self.pending):
                    # After a failure, the deadline-bound read probes the store before the
                    # held updates are written with the slower write timeout.
                    self._read_user(user_id)
                # Never waits: an ingest thread flushing a backlog holds the lock.
                self.pending.flush(self.store, self.settings.serving.history_length, wait=False)
                feed = self._personalized(
                    user_id, k, device, plan or self.experiments.default, request_id
                )
            except StoreUnavailableError as exc:
                self.guard.failed(exc)
            else:
                self.guard.succeeded()
                return feed
        return self._degraded(user_id, k)

    def replay_held_histories(self) -> None:
        """Adopt the held history updates of workers that are gone (a crash, or a stop while
        the store was down) and write them if the store answers: once now (at start-up), then
        every :data:`~feedforge.serving.held.SCAN_INTERVAL_S` on a background thread, so no
        request pays for the scan."""
        self._replay_once()
        self._replayer = threading.Thread(
            target=self._replay_loop, name="feedforge-held-replay", daemon=True
        )
        self._replayer.start()

    def _replay_once(self) -> None:
        self.pending.adopt_orphans()
        if len(self.pending) and self.guard.available():
            try:
                self.pending.flush(self.store, self.settings.serving.history_length, None)
            except StoreUnavailableError as exc:
                self.guard.failed(exc)

    def _replay_loop(self) -> None:
        while not self._stopping.wait(SCAN_INTERVAL_S):
            try:
                self._replay_once()
            except Exception:  # the thread must outlive any one failed scan
                logger.exception("replaying held history updates failed")

    def close(self) -> None:
        """Stop the replay thread, write held history updates (journal what the store does
        not take), close the feed log."""
        self._stopping.set()
        if self._replayer is not None:
            self._replayer.join()
        self.experiments.close()
        self.live.close()
        self.monitor.close()
        self.pending.close(self.store, self.settings.serving.history_length)
        if self.feed_log is not None:
            self.feed_log.close()
        if self.stream is not None:
            self.stream.close()

    def _degraded(self, user_id: str, k: int) -> Feed:
        """The popular items of the last loaded version (else the newest bundle on disk)."""
        self.metrics.degraded.inc()
        loaded = self.versions.loaded
        if loaded is not None:
            version, popular = loaded.version, loaded.popular
        else:
            version, popular = self._disk_fallback.get(self.guard.last_error)
        blocked = self.live.blocked()
        picked = [item for item in popular if item not in blocked][:k]
        return Feed(
            user_id=user_id,
            version=version,
            strategy="popular",
            item_ids=picked,
            scores=[1.0 / (rank + 1) for rank in range(len(picked))],
            explanations=[Explanation(DEGRADED)] * len(picked),
            degraded=True,
        )

    def _personalized(
        self, user_id: str, k: int, device: str | None, plan: Plan, request_id: str | None
    ) -> Feed:
        """The pipeline itself; store failures propagate."""
        scored = self._score(user_id, k, device, plan, request_id)
        if isinstance(scored, Feed):
            return scored
        state, cand_idx, cand_ids, scores, record, history, method, X, scored_at = scored
        with self.metrics.stage("rerank"):
            shown = self._rerank(state, cand_idx, cand_ids, scores, k, plan.reranking, request_id)
        if X is not None:
            self.monitor.served(
                state, plan.variant, request_id, user_id, device, cand_ids, X, scores,
                shown.item_ids, scored_at, len(history),
            )  # fmt: skip
        self.metrics.feeds.labels(strategy="personalized").inc()
        explanations = self._explain(state, shown.item_ids, record, history)
        return Feed(
            user_id=user_id,
            version=state.version,
            strategy="personalized",
            item_ids=shown.item_ids,
            scores=shown.scores,
            retrieval=method,
            propensities=shown.propensities,
            explanations=explanations,
        )

    def scored_candidates(
        self,
        user_id: str,
        k: int,
        plan: Plan | None = None,
        device: str | None = None,
        keep: frozenset[str] = frozenset(),
    ) -> Candidates | None:
        """The scored candidates re-ranking would see for this user now (under ``plan``),
        e.g. to compute a target policy's propensities of a logged feed
        (:func:`~feedforge.serving.rerank.slate_propensities`); None when the user gets a
        popularity or precomputed feed instead. Items in ``keep`` stay candidates even when
        the user has consumed them since (the items of the logged feed being replayed)."""
        plan = plan or self.experiments.default
        scored = self._score(user_id, k, device, plan, None, keep)
        if isinstance(scored, Feed):
            return None
        state, cand_idx, cand_ids, scores, *_ = scored
        return self._candidates(state, cand_idx, cand_ids, scores, plan.reranking)

    def _score(
        self,
        user_id: str,
        k: int,
        device: str | None,
        plan: Plan,
        request_id: str | None,
        keep: frozenset[str] = frozenset(),
    ) -> _Scored | Feed:
        """Read, retrieve and score: the candidates re-ranking takes (with the user's record
        and history, the search that found them, the feature matrix the ranker scored and
        the scoring clock), or the feed of a user the pipeline does not score (popular,
        precomputed)."""
        metrics = self.metrics
        with metrics.stage("read"):
            state, user = self._read_user(user_id, plan.version)
            state = self.live.apply(state)  # items posted or withdrawn since the publish
        with metrics.stage("retrieve"):
            user_record = user.record
            record = user_record or {}
            history = user.history
            held = self.pending.held_items(user_id)
            if held:  # acknowledged, not yet in the store (a flush may be in progress)
                history = list(dict.fromkeys([*reversed(held), *history]))
            seen = ((set(record.get("seen", ())) | set(history)) - keep) | state.blocked
            hist_idx = [i for i in (state.items.get(h) for h in history) if i is not None]

            if user.extra is not None:
                precomputed = self._precomputed(
                    state,
                    user_id,
                    k,
                    seen,
                    user.extra,
                    record,
                    history,
                    plan.reranking,
                    request_id,
                )
                if precomputed is not None:
                    return precomputed
            vector = user.vector
            if vector is None and not hist_idx:
                return self._popular(state, user_id, k, seen)
            query = np.zeros(state.item_matrix.shape[1], dtype=np.float32)
            if vector is not None and vector.shape[0] == query.shape[0]:
                query += vector
            if hist_idx:
                weight = plan.history_weight if vector is not None else 1.0
                query += weight * state.item_matrix[hist_idx].mean(axis=0)

            seen_idx = [i for i in (state.items.get(s) for s in seen) if i is not None]
            # At least k candidates: a feed of k > serving.candidates must not be cut short.
            found_cand = state.index.retrieve(query, max(plan.candidates, k), exclude=seen_idx)
            cand_idx, cand_scores = found_cand.ids, found_cand.scores
            # Pinned items join the candidates even when retrieval missed them (unless seen).
            pinned = [
                idx
                for item_id in pinned_item_ids(plan.reranking)
                if item_id not in seen and (idx := state.items.get(item_id)) is not None
            ]
            if pinned:
                present = set(cand_idx.tolist())
                missing = [idx for idx in dict.fromkeys(pinned) if idx not in present]
                cand_idx = np.concatenate([cand_idx, np.asarray(missing, dtype=np.int64)])
                cand_scores = np.concatenate([cand_scores, state.item_matrix[missing] @ query])
            if not len(cand_idx):
                return self._popular(state, user_id, k, seen)
        cand_idx = cand_idx.astype(np.int64, copy=False)
        cand_ids = state.items.id_of(cand_idx)
        retrieval_scores = cand_scores.astype(np.float64)
        X = None
        scored_at = state.now()
        with metrics.stage("features"):
            # The candidates' item features come from the version's in-memory snapshot
            # (read from the store once, at load); the user's from this request's read.
            if state.ranker is not None and plan.use_ranker:
                X = self._features(
                    state, user_record, cand_idx, retrieval_scores, device, scored_at
                )
        with metrics.stage("score"):
            # The ranker's one batched call; without a ranker, the retrieval order.
            ranker = state.ranker if plan.use_ranker else None
            scores = retrieval_scores if ranker is None or X is None else ranker.score(X)
        return (
            state, cand_idx, cand_ids, scores, record, history, found_cand.method, X, scored_at
        )  # fmt: skip

    def _read_user(
        self, user_id: str, pinned: LoadedVersion | None = None
    ) -> tuple[LoadedVersion, UserRead]:
        """The serving version and the user's embedding, record, live history (and
        precomputed feed with ``serving.precomputed``), in one store round trip.

        The read is made for the version in memory and also returns the store's pointer;
        when the pointer moved to a version that is ready (the first one, or a background
        load finished), the user is read again for it. A ``pinned`` version (an experiment
        variant's) is read as it is, whatever the pointer says.
        """
        cfg = self.settings.serving
        extra = FEED if cfg.precomputed else None
        if pinned is not None:
            user = self.store.read_user(
                pinned.version,
                user_id,
                cfg.history_length,
                vector_kind=USER_EMB,
                record_kind=USER_FEAT,
                extra_kind=extra,
            )
            return pinned, user
        loaded = self.versions.loaded or self.versions.current()
        for _ in range(_MAX_READS):
            user = self.store.read_user(
                loaded.version,
                user_id,
                cfg.history_length,
                vector_kind=USER_EMB,
                record_kind=USER_FEAT,
                extra_kind=extra,
            )
            state = self.versions.follow(user.current)
            if state.version == loaded.version:
                break
            loaded = state
        return loaded, user

    def _precomputed(
        self,
        state: LoadedVersion,
        user_id: str,
        k: int,
        seen: set[str],
        stored: dict[str, Any],
        record: dict[str, Any],
        history: list[str],
        reranking: ReRankConfig,
        request_id: str | None,
    ) -> Feed | None:
        """The user's fresh precomputed feed (``stored``) minus consumed items, if it still
        has ``k``."""
        computed_at = float(stored.get("computed_at_s", 0.0))
        self.monitor.precomputed(computed_at)
        age_s = time.time() - computed_at
        if age_s > self.settings.serving.precomputed_max_age_s:
            return None
        # Stored items the user has not consumed and this version still serves.
        kept = [
            (j, i, float(s))
            for i, s in zip(stored["items"], stored["scores"], strict=True)
            if i not in seen and (j := state.items.get(i)) is not None
        ]
        if len(kept) < k:
            return None
        # The same re-ranking as the online path (rules, caps, freshness, exploration), over
        # the stored candidates plus any pinned item.
        floor = min(s for _, _, s in kept)
        stored_ids = {i for _, i, _ in kept}
        for item_id in pinned_item_ids(reranking):
            known = item_id not in seen and item_id not in stored_ids
            if known and (j := state.items.get(item_id)) is not None:
                kept.append((j, item_id, floor))
        idx = np.asarray([j for j, _, _ in kept], dtype=np.int64)
        ids, scores = [i for _, i, _ in kept], [s for _, _, s in kept]
        scored = np.asarray(scores, dtype=np.float64)
        shown = self._rerank(state, idx, ids, scored, k, reranking, request_id)
        self.metrics.feeds.labels(strategy="precomputed").inc()
        return Feed(
            user_id=user_id,
            version=state.version,
            strategy="precomputed",
            item_ids=shown.item_ids,
            scores=shown.scores,
            propensities=shown.propensities,
            explanations=self._explain(state, shown.item_ids, record, history),
        )

    def _rerank(
        self,
        state: LoadedVersion,
        idx: np.ndarray,
        item_ids: list[str],
        scores: np.ndarray,
        k: int,
        reranking: ReRankConfig,
        request_id: str | None = None,
    ) -> Reranked:
        """Re-rank scored candidates (item indices ``idx``, ids ``item_ids``); categories and
        ages come from the version's item snapshot; exploration draws from ``request_id``."""
        return rerank(
            self._candidates(state, idx, item_ids, scores, reranking),
            k,
            reranking,
            request_rng(request_id, reranking.exploration.seed) if request_id else None,
        )

    def _candidates(
        self,
        state: LoadedVersion,
        idx: np.ndarray,
        item_ids: list[str],
        scores: np.ndarray,
        reranking: ReRankConfig,
    ) -> Candidates:
        table = state.item_table
        return Candidates(
            item_ids=item_ids,
            scores=scores,
            categories=table.categories(idx),
            age_days=table.age_days(idx, state.now()),
            vectors=state.item_matrix[idx] if reranking.mmr_lambda is not None else None,
        )

    def _explain(
        self,
        state: LoadedVersion,
        item_ids: list[str],
        record: dict[str, Any],
        history: list[str],
    ) -> list[Explanation]:
        """Explanations of shown items by the user's history (published seen + live)."""
        shown_idx = np.asarray([state.items.get(i) for i in item_ids], dtype=np.int64)
        known_history = [*record.get("seen", ()), *reversed(history)]  # most recent last
        history_idx = [(j, i) for i in known_history if (j := state.items.get(i)) is not None]
        return explain_by_history(
            state.item_matrix,
            shown_idx,
            np.asarray([j for j, _ in history_idx], dtype=np.int64),
            [i for _, i in history_idx],
        )

    def _features(
        self,
        state: LoadedVersion,
        user: dict[str, Any] | None,
        idx: np.ndarray,
        retrieval: np.ndarray,
        device: str | None,
        now_s: float,
    ) -> np.ndarray:
        """The ranker's ``(N, F)`` features of candidates ``idx``: the user's record (read
        this request) and the items' rows of the version's snapshot.

        A user or candidate missing from the snapshot takes the documented defaults
        (:func:`~feedforge.features.item_table.raw_from_table`) and is counted in
        ``feedforge_missing_features_total{kind="user"|"item"}``.
        """
        raw, missing = raw_from_table(user, state.item_table, idx, now_s, device)
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
            explanations=[Explanation(POPULAR)] * len(picked),
        )

    # -- events -----------------------------------------------------------------------------
    def ingest(self, events: list[Event]) -> tuple[AppendResult, bool]:
        """Store events durably, then append the items of those the log newly stored to the
        users' live histories (a re-sent event, or a second use of an ``event_id``, is not
        stored again and changes no history: history and log agree).

        Returns:
            The log's append result, and whether the histories were updated now: False
            while the store is unavailable (the updates are held, journalled durably, and
            written when it answers again; the events are durable in the log either way).
            With ``events.stream: redis`` the events are appended to the shared stream
            instead, as they came (``written`` is the batch's size); ``feedforge ingest``
            de-duplicates them into the log and updates the histories, so the answer says
            ``history_updated: false``.

        Raises:
            feedforge.errors.EventStreamError: the stream did not take the events (503).
            feedforge.errors.EventLogError: the log could not be written (the API's error
                handler logs it with the log's path, which the client's message leaves out).
        """
        if self.stream is not None:
            # The stream's consumers write the log and the histories (feedforge ingest).
            self.stream.publish(events)
            self.monitor.ingested(events)
            return AppendResult(written=len(events), duplicates=0), False
        result = self.log.append(events)
        stored = set(result.stored_ids)
        new: list[Event] = []
        for event in events:  # in batch order: the log keeps the first event of each id
            if event.event_id in stored:
                stored.discard(event.event_id)
                new.append(event)
        self.monitor.ingested(new)
        per_user: dict[str, list[str]] = {}
        for event in sorted(new, key=lambda e: e.timestamp):
            if event.event_type in HISTORY_EVENTS:
                per_user.setdefault(event.user_id, []).append(event.item_id)
        self.pending.add(per_user)
        if not self.guard.available():
            self.pending.persist()  # durable before the answer acknowledges the events
            return result, False
        try:
            # Everything held, this batch's users included: acknowledged history updates
            # must be visible to the very next feed request, whichever worker answers it.
            done = self.pending.flush(
                self.store, self.settings.serving.history_length, max_users=None
            )
        except StoreUnavailableError as exc:
            self.guard.failed(exc)
            self.pending.persist()
            return result, False
        self.guard.succeeded()
        return result, done

    # -- health -----------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, str]]:
        """Whether the store answers and a published version is loadable, with details."""
        checks: dict[str, str] = {}
        ok = self.store.ping()
        checks["store"] = "ok" if ok else "unreachable"
        if ok:
            try:
                checks["version"] = self.versions.current().version
            except Exception as exc:
                checks["version"] = f"unavailable: {exc}"
                ok = False
        return ok, checks
