"""One feed request under the running experiments, and its record in the feed log.

:func:`serve_request` (``FeedService.serve``, what ``GET /recommend`` and the closed loop
call) assigns the user to the running experiments
(:class:`~feedforge.serving.experiments.ExperimentFollower`), serves the feed of the user's
variants (in an interleaving experiment, a team-draft merge of both variants' feeds,
:func:`~feedforge.experiments.interleaving.team_draft`, each slot credited to its team), and
logs it (:mod:`feedforge.serving.feedlog`) with its exposures (experiment, variant, version)
and the service's own time for it (``latency_ms``). A request that fails is logged too, with
its exposures and the error's kind, so each variant's error rate can be computed; then the
error propagates. A failing disk never fails a request: it is logged and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from feedforge.experiments.interleaving import team_draft
from feedforge.serving.experiments import Assigned
from feedforge.serving.explain import Explanation
from feedforge.serving.feed import Feed
from feedforge.serving.rerank import request_rng

if TYPE_CHECKING:
    from feedforge.serving.pipeline import FeedService

logger = logging.getLogger("feedforge.serving")


def serve_request(
    service: FeedService, user_id: str, k: int, device: str | None, request_id: str
) -> Feed:
    """Answer one feed request: assign the user to the running experiments, serve the
    feed of its variants (a team-draft interleaving of both variants' feeds in an
    interleaving experiment), and log it with its exposures and latency. A request that
    fails is logged too (``error``), with its exposures, then the error propagates.
    """
    started = time.perf_counter()
    assigned = service.experiments.assign(user_id)
    try:
        interleaving = assigned.interleaving()
        if interleaving is not None:
            feed = _interleaved(service, user_id, k, device, assigned, request_id)
        else:
            plan = service.experiments.plan(assigned)
            feed = service.recommend(user_id, k, device, plan, request_id)
    except Exception as exc:
        _log_failure(service, user_id, request_id, device, assigned, exc, started)
        raise
    if assigned.assignments:
        exposures = [a.exposure(feed.version) for a in assigned.assignments]
        if interleaving is not None:
            for exposure in exposures:
                if exposure["experiment"] == interleaving.experiment.id:
                    exposure["variant"] = "interleaved"
        for assignment in assigned.assignments:
            service.metrics.experiment_feeds.labels(
                experiment=assignment.experiment.id,
                variant="interleaved" if assignment is interleaving else assignment.variant.name,
            ).inc()
        feed = replace(feed, experiments=exposures)
    log_feed(service, feed, request_id, device, (time.perf_counter() - started) * 1000)
    return feed


def _interleaved(
    service: FeedService,
    user_id: str,
    k: int,
    device: str | None,
    assigned: Assigned,
    request_id: str,
) -> Feed:
    """Both variants' feeds of the interleaving experiment, merged by team draft (the
    coin flips, like exploration, are drawn from the request id: a replay of the request
    gives the same feed)."""
    interleaving = assigned.interleaving()
    assert interleaving is not None
    variants = interleaving.experiment.variants
    feeds = [
        service.recommend(
            user_id, k, device, service.experiments.plan(assigned, v), f"{request_id}:{v.name}"
        )
        for v in variants
    ]
    rng = request_rng(f"interleave:{request_id}", None)
    merged = team_draft(feeds[0].item_ids, feeds[1].item_ids, k, rng)
    picked = [(feeds[t], r) for t, r in zip(merged.teams, merged.source_ranks, strict=True)]

    return Feed(
        user_id=user_id,
        version=feeds[0].version,
        strategy=feeds[0].strategy,
        item_ids=merged.item_ids,
        scores=[f.scores[r] for f, r in picked],
        retrieval=feeds[0].retrieval,
        propensities=[(f.propensities or [1.0] * len(f.item_ids))[r] for f, r in picked],
        explanations=[
            (f.explanations or [Explanation("")] * len(f.item_ids))[r] for f, r in picked
        ],
        degraded=feeds[0].degraded or feeds[1].degraded,
        teams=[variants[t].name for t in merged.teams],
    )


def log_feed(
    service: FeedService,
    feed: Feed,
    request_id: str,
    device: str | None,
    latency_ms: float | None = None,
) -> None:
    """Append a served feed to the feed log; a failing disk is logged and counted, never
    turned into a failed request."""
    if service.feed_log is None:
        return
    record: dict[str, Any] = {
        "request_id": request_id,
        "user_id": feed.user_id,
        "version": feed.version,
        "strategy": feed.strategy,
        "degraded": feed.degraded,
        "device": device,
        "items": feed.item_ids,
        "scores": [float(s) for s in feed.scores],
        "propensities": feed.propensities or [1.0] * len(feed.item_ids),
    }
    if latency_ms is not None:
        record["latency_ms"] = round(latency_ms, 3)
    if feed.experiments:
        record["experiments"] = feed.experiments
    if feed.teams is not None:
        record["teams"] = feed.teams
    _write_log(service, record)


def _log_failure(
    service: FeedService,
    user_id: str,
    request_id: str,
    device: str | None,
    assigned: Assigned,
    exc: Exception,
    started: float,
) -> None:
    """Log a failed request (the error rate of each variant comes from these lines)."""
    if service.feed_log is None:
        return
    record: dict[str, Any] = {
        "request_id": request_id,
        "user_id": user_id,
        "device": device,
        "error": type(exc).__name__,
        "items": [],
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if assigned.assignments:
        record["experiments"] = [
            {"experiment": a.experiment.id, "variant": a.variant.name, "version": None}
            for a in assigned.assignments
        ]
    _write_log(service, record)


def _write_log(service: FeedService, record: dict[str, Any]) -> None:
    assert service.feed_log is not None
    try:
        service.feed_log.write(record)
    except OSError as exc:
        service.metrics.feed_log_errors.inc()
        logger.error("could not write the feed log: %s", exc)
