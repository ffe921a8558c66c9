"""Online metrics of an experiment, from the service's own records: the feed log joined to the
event log by request id.

* **Exposures**: the feed-log lines whose ``experiments`` name the experiment; a unit's
  variant is the one its lines carry (a unit seen under two variants, which a changed
  definition can cause, is counted in ``units_in_several_variants`` and left out).
* **Attribution**: an event counts towards a feed when its ``context.request_id`` is the
  feed's and it happened within ``attribution_window_s`` after the feed was served. Events
  without a request id are counted (``events_without_request_id``) and reported, never
  attributed by guesswork; so are events whose request id no feed of the log carries.
* **Per unit**: ``feeds``, ``impressions``, ``clicks``, ``watch_minutes``, ``revenue`` (the
  price of purchases), ``objective`` (the configured objective's value: clicks, watch
  seconds, revenue or the weighted mix), and ``ctr`` as the ratio metric
  clicks / impressions.
* **Pre-period** (CUPED's covariate): the same unit metrics over the unit's events in the
  period of equal length before the experiment started, from the event log alone (no
  request id needed).
* **Guardrails per variant** (from the feed log): ``latency_p99_ms`` (the service's own
  time per feed, ``latency_ms``), ``error_rate`` (lines with ``error``: failed requests)
  and ``degraded_rate``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from feedforge.errors import DataError
from feedforge.experiments.definition import Experiment

UNIT_METRICS = ("feeds", "impressions", "clicks", "watch_minutes", "revenue", "objective")
"""Per-unit sums (``ctr`` is their ratio clicks / impressions)."""


def read_feed_log(directory: Path, since: datetime | None = None) -> pl.DataFrame:
    """Every logged feed of ``directory`` (all days, processes and rotated files), oldest
    first (lines of one time keep the order they were written in). The format is
    :mod:`feedforge.serving.feedlog`'s. With ``since``, files of UTC days before its day are
    not read (a file holds one day's lines: its name starts with that day); lines before it
    in the files read are kept, for the caller to filter.

    Raises:
        DataError: the directory holds no feed log, or a line is not valid JSON (the message
            names the file and line).
    """
    files = sorted(Path(directory).glob("feeds-*.jsonl"))
    if not files:
        raise DataError(f"no feed log in {directory}")
    if since is not None:
        first_day = since.astimezone(UTC).strftime("%Y%m%d")
        files = [f for f in files if f.name[len("feeds-") : len("feeds-") + 8] >= first_day]
        if not files:
            return pl.DataFrame()
    rows: list[dict[str, Any]] = []
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not a JSON feed record ({exc})") from exc
    frame = pl.DataFrame(rows, infer_schema_length=None)
    frame = frame.with_columns(pl.col("ts").str.to_datetime(time_zone="UTC"))
    return frame.sort("ts", maintain_order=True)


@dataclass(frozen=True)
class OnlineMetrics:
    """What :func:`online_metrics` measured.

    Attributes:
        units: One row per exposed unit: ``user_id``, ``variant``, the
            :data:`UNIT_METRICS`, and ``pre_<metric>`` for each.
        guardrails: variant -> ``{"feeds", "latency_p99_ms", "error_rate",
            "degraded_rate"}``.
        interleaving: For an interleaving experiment, one row per unit: ``user_id`` and
            each team's credit (``credit_<variant>``: the objective's value of the events on
            its slots); else None.
        counts: Data-quality counts (events without request id, events of unknown
            requests, units in several variants, feeds, failed requests).
        start: The first exposure; ``end``: the last.
    """

    units: pl.DataFrame
    guardrails: dict[str, dict[str, float]]
    interleaving: pl.DataFrame | None
    counts: dict[str, int] = field(default_factory=dict)
    start: datetime | None = None
    end: datetime | None = None


def _exposures(feed_log: pl.DataFrame, experiment_id: str) -> pl.DataFrame:
    if "experiments" not in feed_log.columns:
        return feed_log.clear()
    rows = (
        feed_log.explode("experiments", empty_as_null=False, keep_nulls=False)
        .filter(pl.col("experiments").struct.field("experiment") == experiment_id)
        .with_columns(variant=pl.col("experiments").struct.field("variant"))
    )
    return rows


def online_metrics(
    experiment: Experiment,
    feed_log: pl.DataFrame,
    events: pl.LazyFrame,
    objective: Mapping[str, float],
    now: datetime | None = None,
) -> OnlineMetrics:
    """Per-unit metrics and per-variant guardrails of one experiment (see the module docs).

    Args:
        experiment: The experiment.
        feed_log: :func:`read_feed_log`'s frame.
        events: The event log (:meth:`~feedforge.events.log.EventLog.scan`).
        objective: ``{outcome: value}`` of the configured objective
            (:func:`~feedforge.features.objectives.objective_value`).
        now: The end of a running experiment's period (default: the time now).
    """
    exposed = _exposures(feed_log, experiment.id)
    if not exposed.height:
        raise DataError(
            f"experiment {experiment.id!r}: no feed in the log was served under it (has it "
            "started, and did the service log feeds?)"
        )
    if "error" not in exposed.columns:
        exposed = exposed.with_columns(error=pl.lit(None, pl.String))
    for column, dtype in (("degraded", pl.Boolean), ("latency_ms", pl.Float64)):
        if column not in exposed.columns:
            exposed = exposed.with_columns(pl.lit(None, dtype).alias(column))
    counts: dict[str, int] = {"feeds": 0, "failed_requests": 0}
    guardrails: dict[str, dict[str, float]] = {}
    if exposed.height:
        for (variant,), part in exposed.group_by(["variant"], maintain_order=True):
            served = part.filter(pl.col("error").is_null())
            guardrails[str(variant)] = {
                "feeds": float(part.height),
                "latency_p99_ms": float(part.get_column("latency_ms").quantile(0.99) or 0.0),
                "error_rate": _mean(part.get_column("error").is_not_null()),
                "degraded_rate": _mean(served.get_column("degraded").fill_null(False)),
            }
        counts["failed_requests"] = int(exposed.get_column("error").is_not_null().sum())
    served = exposed.filter(pl.col("error").is_null())
    counts["feeds"] = served.height

    # A unit's variant: the only one its feeds carry.
    per_unit = served.group_by("user_id").agg(
        pl.col("variant").n_unique().alias("n_variants"),
        pl.col("variant").first(),
        pl.len().alias("feeds"),
    )
    counts["units_in_several_variants"] = int((per_unit.get_column("n_variants") > 1).sum())
    per_unit = per_unit.filter(pl.col("n_variants") == 1).drop("n_variants")

    start: datetime | None = served.get_column("ts").min() if served.height else None  # type: ignore[assignment]
    end: datetime | None = served.get_column("ts").max() if served.height else None  # type: ignore[assignment]
    window = timedelta(seconds=experiment.attribution_window_s)
    requests = served.select("request_id", "user_id", pl.col("ts").alias("feed_ts")).unique(
        subset="request_id", keep="first"
    )

    all_events = events.select(
        "timestamp", "user_id", "item_id", "event_type", "watch_seconds", "price", "request_id"
    ).collect()
    counts["events_without_request_id"] = int(
        all_events.get_column("request_id").fill_null("").eq("").sum()
    )
    with_request = all_events.filter(pl.col("request_id").fill_null("") != "")
    known_requests = set(feed_log.get_column("request_id").to_list()) if feed_log.height else set()
    counts["events_of_unknown_requests"] = int(
        (~with_request.get_column("request_id").is_in(list(known_requests))).sum()
    )
    attributed = with_request.join(requests, on=["request_id", "user_id"], how="inner").filter(
        (pl.col("timestamp") >= pl.col("feed_ts"))
        & (pl.col("timestamp") <= pl.col("feed_ts") + window)
    )
    sums = _sums(attributed, objective)
    units = per_unit.join(sums, on="user_id", how="left").fill_null(0.0)

    # CUPED's covariate: the same sums before the experiment (no request id needed).
    if start is not None:
        began = experiment.started_at or start
        finish = experiment.stopped_at or now or datetime.now(UTC)
        length = max(finish - began, timedelta(days=1))
        before = all_events.filter(
            (pl.col("timestamp") >= began - length) & (pl.col("timestamp") < began)
        )
        pre = _sums(before, objective)
        pre = pre.rename({c: f"pre_{c}" for c in pre.columns if c != "user_id"})
        units = units.join(pre, on="user_id", how="left").fill_null(0.0)
    for metric in UNIT_METRICS:
        if f"pre_{metric}" not in units.columns:
            units = units.with_columns(pl.lit(0.0).alias(f"pre_{metric}"))
    units = units.with_columns(pl.col("feeds").cast(pl.Float64)).sort("user_id")

    interleaving = None
    if experiment.mode == "interleave":
        interleaving = _team_credit(experiment, served, attributed, per_unit, objective)
    return OnlineMetrics(units, guardrails, interleaving, counts, start, end)


def _mean(flags: pl.Series) -> float:
    return float(flags.cast(pl.Float64).mean() or 0.0) if len(flags) else 0.0  # type: ignore[arg-type]


_KIND = pl.col("event_type")
_CLICKS = (_KIND == "click").cast(pl.Float64)
_WATCH = pl.when(_KIND == "watch").then(pl.col("watch_seconds").fill_null(0.0)).otherwise(0.0)
_REVENUE = pl.when(_KIND == "purchase").then(pl.col("price").fill_null(0.0)).otherwise(0.0)


def objective_expr(objective: Mapping[str, float]) -> pl.Expr:
    """An event's value under the objective ``{outcome: value}``
    (:func:`~feedforge.features.objectives.objective_value`): a click's, the watch seconds',
    a purchase's price, weighted."""
    return (
        objective.get("clicked", 0.0) * _CLICKS
        + objective.get("watch_seconds", 0.0) * _WATCH
        + objective.get("revenue", 0.0) * _REVENUE
    )


def _sums(frame: pl.DataFrame, objective: Mapping[str, float]) -> pl.DataFrame:
    return frame.group_by("user_id").agg(
        (_KIND == "impression").cast(pl.Float64).sum().alias("impressions"),
        _CLICKS.sum().alias("clicks"),
        (_WATCH.sum() / 60.0).alias("watch_minutes"),
        _REVENUE.sum().alias("revenue"),
        objective_expr(objective).sum().alias("objective"),
    )


def _team_credit(
    experiment: Experiment,
    served: pl.DataFrame,
    attributed: pl.DataFrame,
    units: pl.DataFrame,
    objective: Mapping[str, float],
) -> pl.DataFrame:
    """Per unit, each team's credit: the objective's value of the events on the slots its
    team placed (clicks, watch seconds or revenue, as the feed is ranked for)."""
    names = [v.name for v in experiment.variants]
    columns = [f"credit_{name}" for name in names]
    if "teams" not in served.columns or not served.height:
        return units.select("user_id").with_columns(pl.lit(0.0).alias(c) for c in columns)
    slots = (
        served.filter(pl.col("teams").is_not_null())
        .select("request_id", pl.col("items").alias("item_id"), pl.col("teams").alias("team"))
        .explode(["item_id", "team"], empty_as_null=False, keep_nulls=False)
        .unique(subset=["request_id", "item_id"], keep="first")
    )
    engaged = attributed.join(slots, on=["request_id", "item_id"], how="inner").with_columns(
        objective_expr(objective).alias("_value")
    )
    credit = engaged.group_by("user_id").agg(
        pl.col("_value").filter(pl.col("team") == name).sum().cast(pl.Float64).alias(column)
        for name, column in zip(names, columns, strict=True)
    )
    return (
        units.select("user_id")
        .join(credit, on="user_id", how="left")
        .fill_null(0.0)
        .sort("user_id")
    )


KPIS = ("feeds", "ctr", "watch_minutes_per_feed", "revenue_per_feed")
"""The online KPIs :func:`feed_kpis` computes per version and variant."""


def variant_label(experiments: list[dict[str, Any]] | None) -> str:
    """A feed line's variant key: its exposures' ``experiment.variant`` joined by ``+``
    (``default`` outside every experiment), as the service's monitoring labels it."""
    if not experiments:
        return "default"
    return "+".join(f"{e['experiment']}.{e['variant']}" for e in experiments)


def feed_kpis(
    feed_log: pl.DataFrame,
    events: pl.LazyFrame,
    since: datetime,
    attribution_window_s: float,
) -> pl.DataFrame:
    """Online KPIs per version and variant of the feeds served since ``since``: ``feeds``
    (answered, failed requests left out), ``ctr`` (attributed clicks / impressions),
    ``watch_minutes_per_feed`` and ``revenue_per_feed``, with events attributed to feeds by
    request id within ``attribution_window_s`` (the same join as :func:`online_metrics`).

    Returns:
        One row per (``version``, ``variant``) with ``feeds``, ``impressions``, ``clicks``,
        ``watch_minutes``, ``revenue`` and the KPIs of :data:`KPIS`.
    """
    schema = {"version": pl.String, "variant": pl.String, **{k: pl.Float64 for k in KPIS}}
    if not feed_log.height:
        return pl.DataFrame(schema=schema)
    served = feed_log.filter(pl.col("ts") >= since)
    if "error" in served.columns:
        served = served.filter(pl.col("error").is_null())
    if not served.height:
        return pl.DataFrame(schema=schema)
    labels = (
        [variant_label(e) for e in served.get_column("experiments").to_list()]
        if "experiments" in served.columns
        else ["default"] * served.height
    )
    requests = served.select(
        "request_id", "user_id", "version", pl.col("ts").alias("feed_ts")
    ).with_columns(pl.Series("variant", labels, dtype=pl.String))
    requests = requests.unique(subset="request_id", keep="first")
    window = timedelta(seconds=attribution_window_s)
    attributed = (
        events.filter(pl.col("timestamp") >= since)
        .filter(pl.col("request_id").fill_null("") != "")
        .select("timestamp", "user_id", "event_type", "watch_seconds", "price", "request_id")
        .collect()
        .join(requests, on=["request_id", "user_id"], how="inner")
        .filter(
            (pl.col("timestamp") >= pl.col("feed_ts"))
            & (pl.col("timestamp") <= pl.col("feed_ts") + window)
        )
    )
    sums = attributed.group_by("version", "variant").agg(
        (_KIND == "impression").cast(pl.Float64).sum().alias("impressions"),
        _CLICKS.sum().alias("clicks"),
        (_WATCH.sum() / 60.0).alias("watch_minutes"),
        _REVENUE.sum().alias("revenue"),
    )
    feeds = requests.group_by("version", "variant").agg(pl.len().cast(pl.Float64).alias("feeds"))
    out = feeds.join(sums, on=["version", "variant"], how="left").fill_null(0.0)
    return out.with_columns(
        pl.when(pl.col("impressions") > 0)
        .then(pl.col("clicks") / pl.col("impressions"))
        .otherwise(0.0)
        .alias("ctr"),
        (pl.col("watch_minutes") / pl.col("feeds")).alias("watch_minutes_per_feed"),
        (pl.col("revenue") / pl.col("feeds")).alias("revenue_per_feed"),
    ).sort("version", "variant")
