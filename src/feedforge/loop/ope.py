"""``feedforge ope``: what a target policy that was never deployed would have earned, from the
feed log, by replaying the target through the service's own pipeline.

The logged data (:func:`logged_slates`): every personalized feed of the feed log (since a
time, not interleaved, not failed), its items and the logging policy's propensities, and each
slot's reward: the configured objective's value of the events that carry the feed's request
id and item, within the attribution window (clicks, watch seconds or revenue, or the mix).

The target is a variant: a published version and/or serving overrides
(:class:`~feedforge.experiments.definition.Variant`). For each logged feed the service
computes the target's scored candidates for that user
(:meth:`~feedforge.serving.pipeline.FeedService.scored_candidates`) and the probability the
target's re-ranking had of showing the logged feed, slot by slot
(:func:`~feedforge.serving.rerank.slate_propensities`). The direct model of ``dr`` is the
target's ranker score calibrated per slot to the logged rewards (``q_j = c_j * score``,
``c_j`` by least squares of the logged slots' rewards on the target's scores of the logged
items), used both for the logged items (the correction term) and for the target's slates,
whose direct value is the mean over :data:`DM_DRAWS` slates drawn from the target (one for a
deterministic target). One reward model for both terms keeps the estimate doubly robust, and
fitting it on the target's own scores makes it independent of their scale: a target version
whose ranker scores on another scale than the logging one is not under- or over-valued for
it.

**An approximation to know.** The replay scores candidates with the user's state *now* (live
history, the version's snapshot), not as it was when the feed was logged. The logged feed's
own items stay candidates (the user consumed some of them because of that feed), but other
items consumed since are excluded and the query vector includes the newer history, so the
target's propensities of old feeds drift. Run it soon after logging (the benchmark's
targets are replayed at logging time and are exact).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from feedforge.errors import DataError, ValidationError
from feedforge.experiments.definition import Variant
from feedforge.experiments.online import objective_expr
from feedforge.experiments.ope import Slates, check_exploration, estimate
from feedforge.serving.experiments import Plan, variant_fields
from feedforge.serving.pipeline import FeedService
from feedforge.serving.rerank import rerank, slate_propensities
from feedforge.serving.version import load_version

DM_DRAWS = 20


def logged_slates(
    feed_log: pl.DataFrame,
    events: pl.DataFrame,
    objective: dict[str, float],
    window_s: float,
    since: datetime | None = None,
) -> pl.DataFrame:
    """One row per logged personalized feed: ``request_id``, ``user_id``, ``items``,
    ``propensities``, ``scores`` and ``rewards`` (per slot).

    Raises:
        DataError: no feed to estimate from.
    """
    frame = feed_log
    if "error" in frame.columns:
        frame = frame.filter(pl.col("error").is_null())
    if "teams" in frame.columns:
        frame = frame.filter(pl.col("teams").is_null())
    frame = frame.filter(pl.col("strategy") == "personalized")
    if since is not None:
        frame = frame.filter(pl.col("ts") >= since)
    if not frame.height:
        raise DataError("ope: no personalized feed in the feed log (since the given time)")
    frame = frame.unique(subset="request_id", keep="first", maintain_order=True)
    value = objective_expr(objective)
    slots = frame.select(
        "request_id",
        "ts",
        pl.col("items").alias("item_id"),
        pl.int_ranges(0, pl.col("items").list.len()).alias("slot"),
    ).explode(["item_id", "slot"], empty_as_null=False, keep_nulls=False)
    window = timedelta(seconds=window_s)
    rewards = (
        events.filter(pl.col("request_id").is_not_null())
        .join(slots, on=["request_id", "item_id"], how="inner")
        .filter(
            (pl.col("timestamp") >= pl.col("ts")) & (pl.col("timestamp") <= pl.col("ts") + window)
        )
        .group_by("request_id", "slot")
        .agg(value.sum().alias("reward"))
    )
    per_slot = (
        slots.join(rewards, on=["request_id", "slot"], how="left")
        .with_columns(pl.col("reward").fill_null(0.0))
        .sort("request_id", "slot")
        .group_by("request_id", maintain_order=True)
        .agg(pl.col("reward").alias("rewards"))
    )
    return frame.select("request_id", "user_id", "items", "propensities", "scores").join(
        per_slot, on="request_id", how="left"
    )


def target_plan(service: FeedService, target: Variant) -> Plan:
    """The serving plan of a target variant (its version loaded beside the current one)."""
    version = None
    if target.version is not None:
        meta = service.store.get_meta(target.version)
        if meta is None:
            raise ValidationError(f"ope: target version {target.version!r} is not published")
        version = load_version(
            service.store, target.version, meta, service.settings.serving,
            service.workdir.bundles_dir,
        )  # fmt: skip
    return replace(service.experiments.default, **variant_fields(target, version))  # type: ignore[arg-type]


def replay(
    service: FeedService,
    logged: pl.DataFrame,
    target: Variant,
    *,
    clip: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The estimates of ``target``'s value per feed from ``logged`` (see the module docs).

    Raises:
        ValidationError: the logging policy never explored.
    """
    k = max(len(items) for items in logged.get_column("items").to_list())
    n = logged.height
    mu, mask = np.ones((n, k)), np.zeros((n, k), dtype=bool)
    for i, props in enumerate(logged.get_column("propensities").to_list()):
        mu[i, : len(props)] = props
        mask[i, : len(props)] = True
    check_exploration(mu, mask)
    plan = target_plan(service, target)
    rng = np.random.default_rng(seed)
    pi, rewards = np.zeros((n, k)), np.zeros((n, k))
    # The direct model is the target's own scores: of the logged items (for the correction
    # term) and of the target's slates, calibrated per slot on the logged rewards.
    logged_scores, target_scores = np.zeros((n, k)), np.zeros((n, k))
    replayed = 0
    for i, row in enumerate(logged.iter_rows(named=True)):
        items = list(row["items"])
        rewards[i, : len(items)] = row["rewards"] or [0.0] * len(items)
        cands = service.scored_candidates(row["user_id"], len(items), plan, keep=frozenset(items))
        if cands is None:
            continue
        replayed += 1
        pi[i, : len(items)] = slate_propensities(cands, items, plan.reranking)
        draws = 1 if plan.reranking.exploration.type == "none" else DM_DRAWS
        score_of = dict(
            zip(cands.item_ids, np.asarray(cands.scores, dtype=np.float64), strict=True)
        )
        logged_scores[i, : len(items)] = [score_of.get(x, 0.0) for x in items]
        drawn = [rerank(cands, len(items), plan.reranking, rng).item_ids for _ in range(draws)]
        for slate in drawn:
            target_scores[i, : len(slate)] += [score_of[x] / draws for x in slate]
    calibration = (logged_scores * rewards * mask).sum(axis=0) / np.maximum(
        (logged_scores**2 * mask).sum(axis=0), 1e-12
    )
    slates = Slates(
        mu=mu,
        pi=pi,
        rewards=rewards,
        mask=mask,
        q_logged=logged_scores * calibration,
        q_target=(target_scores * calibration).sum(axis=1),
    )
    result = estimate(slates, clip=clip, n_bootstrap=n_bootstrap, seed=seed)
    logged_value = float((rewards * mask).sum(axis=1).mean())
    return {
        **result,
        "target": target.model_dump(mode="json"),
        "logged_value": logged_value,
        "replayed_feeds": replayed,
        "not_replayed": n - replayed,
    }
