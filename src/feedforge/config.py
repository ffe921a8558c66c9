"""Typed configuration: one YAML file plus ``FEEDFORGE_*`` environment variables.

Precedence (highest first): environment variables, the YAML file, the defaults below.
Nested fields are set from the environment with a double underscore, e.g.
``FEEDFORGE_STORE__TYPE=redis`` or ``FEEDFORGE_OBJECTIVE=clicks``. Unknown keys are rejected,
and every validation error is re-raised as :class:`~feedforge.errors.ConfigError` naming the
file it came from.

The business goal (step 1 of the design framework, "clarify") lives here as config, not code:
``objective`` picks what the feed maximises and ``serving.latency_budget_ms`` the online budget.

(Over 400 lines on purpose: the README sends users here for every setting and its default, so
the whole schema stays in one file, with the two checks `load_settings` runs beside it: unknown
``FEEDFORGE_*`` variables and the models' hyper-parameters.)
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import types
import typing
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from feedforge.errors import ConfigError

Objective = Literal["watch_time", "clicks", "revenue", "mix"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatorConfig(_Section):
    """Size and behaviour of the synthetic world (the embedded default data)."""

    seed: int = 7
    n_users: int = Field(5_000, ge=1)
    n_items: int = Field(2_000, ge=1)
    n_days: int = Field(30, ge=1)
    n_categories: int = Field(20, ge=1)
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    sessions_per_user_day: float = Field(0.25, gt=0, description="Mean sessions per user per day")
    feed_size: int = Field(10, ge=1, le=100, description="Impressions per feed request")
    item_backlog_days: int = Field(
        180, ge=0, description="Items are created from this many days before the start on"
    )

    @field_validator("start")
    @classmethod
    def _start_in_utc(cls, value: datetime) -> datetime:
        # A naive start (YAML ``start: 2026-01-01``) means UTC, never the machine's local
        # zone: the simulated world must not depend on where it runs.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class DatasetConfig(_Section):
    """How the event log becomes training-ready datasets."""

    validation_days: float = Field(4.0, gt=0, description="Length of the validation window")
    test_days: float = Field(4.0, gt=0, description="Length of the test window (the last days)")
    watch_completion: float = Field(
        0.5, gt=0, le=1, description="A watch is positive at this fraction of the duration"
    )
    attribution_seconds: int = Field(
        1800, ge=1, description="Label events this long after an impression are attributed to it"
    )
    rating_threshold: float = Field(
        4.0, description="Rated events at or above this value are positive (real datasets)"
    )
    engine: Literal["polars", "spark"] = Field(
        "polars",
        description="What computes the build: polars on this host, or Spark "
        "(feedforge.datasets.spark; same files, row for row)",
    )
    spark_master: str = Field(
        "local[*]",
        description="The Spark master of engine spark: local[N] on this host, or a cluster's "
        "URL (spark://host:7077, yarn, k8s://...); the workdir must then be on storage "
        "every executor reads",
    )
    spark_driver_memory: str = Field(
        "4g", pattern=r"^\d+[kmgt]?$", description="spark.driver.memory of engine spark"
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict,
        description="More Spark settings of engine spark (spark.sql.shuffle.partitions, "
        "spark.executor.memory, ...), passed as they are",
    )


ParamValue = float | int | str | bool | None
"""A hyper-parameter value in the config; each model's params class types it."""


def _scalars_from_strings(section: Any) -> Any:
    """A ``{name: value}`` section with JSON scalars written as strings (``"8"``, ``"0.5"``,
    ``"true"``, ``"null"``) turned into numbers, booleans or None.

    Environment variables only carry strings (``FEEDFORGE_MODELS__PARAMS__ALS__FACTORS=8``);
    the params classes type-check strictly, so the string must become the number it spells.
    Other strings (``lambdarank``, ``yes``) stay strings.
    """
    if not isinstance(section, dict):
        return section
    out = {}
    for key, value in section.items():
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
            value = parsed if parsed is None or isinstance(parsed, bool | int | float) else value
        out[key] = value
    return out


class RankerConfig(_Section):
    """The ranking stage's model: ``type`` picks it, ``models.params.<type>`` sets its
    hyper-parameters (e.g. ``params: {lightgbm: {objective: lambdarank}}``). ``C`` and
    ``max_iter`` are kept as aliases of ``models.params.logistic.C`` and ``.max_iter``."""

    type: Literal["logistic", "tree", "lightgbm", "dcn"] = Field(
        "logistic",
        description="logistic regression, a shallow decision tree, LightGBM (binary or "
        "lambdarank), or the deep multi-task DCN-v2 ranker",
    )
    C: ParamValue = Field(None, description="Alias of models.params.logistic.C")
    max_iter: ParamValue = Field(None, description="Alias of models.params.logistic.max_iter")

    @field_validator("C", "max_iter", mode="before")
    @classmethod
    def _from_strings(cls, value: Any) -> Any:
        return _scalars_from_strings({"value": value})["value"]


class ModelsConfig(_Section):
    """Which models to train and their hyper-parameters.

    Every model takes its hyper-parameters from ``params.<model name>`` (e.g.
    ``params: {sasrec: {epochs: 50}, als: {factors: 128}}``), validated when the settings are
    loaded against the model's own declaration (its ``Params`` class, e.g.
    :class:`feedforge.models.als.ALSParams`): an unknown or mistyped parameter is a
    configuration error naming the file, the model and the key. ``als``, ``popularity`` and
    ``ranker.C``/``ranker.max_iter`` are older spellings of ``params.als``,
    ``params.popularity`` and ``params.logistic``, checked by the same declarations.
    """

    retrieval: Literal["als", "bpr", "ease", "rp3beta", "multvae", "two_tower", "sasrec"] = "als"
    ranker: RankerConfig = RankerConfig()
    params: dict[str, dict[str, ParamValue]] = Field(default_factory=dict)
    popularity: dict[str, ParamValue] = Field(
        default_factory=dict, description="Alias of models.params.popularity"
    )
    als: dict[str, ParamValue] = Field(
        default_factory=dict, description="Alias of models.params.als"
    )

    @field_validator("params", mode="before")
    @classmethod
    def _params_from_strings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {name: _scalars_from_strings(section) for name, section in value.items()}

    @field_validator("popularity", "als", mode="before")
    @classmethod
    def _aliases_from_strings(cls, value: Any) -> Any:
        return _scalars_from_strings(value)

    @model_validator(mode="after")
    def _aliases_agree_with_params(self) -> ModelsConfig:
        for name, (path, values) in self._aliases().items():
            both = sorted(set(values) & set(self.params.get(name, {})))
            if both:
                raise ValueError(
                    f"{path} and models.params.{name} both set {both}; keep models.params.{name}"
                )
        return self

    def _aliases(self) -> dict[str, tuple[str, dict[str, ParamValue]]]:
        """Model name -> (config path, values) of the older sections that are set."""
        logistic = {"C": self.ranker.C, "max_iter": self.ranker.max_iter}
        aliases: dict[str, tuple[str, dict[str, ParamValue]]] = {
            "popularity": ("models.popularity", dict(self.popularity)),
            "als": ("models.als", dict(self.als)),
            "logistic": ("models.ranker", {k: v for k, v in logistic.items() if v is not None}),
        }
        return {name: entry for name, entry in aliases.items() if entry[1]}

    def params_sections(self) -> list[tuple[str, str, dict[str, ParamValue]]]:
        """Every ``(config path, model name, values)`` that sets hyper-parameters."""
        sections = [(path, name, values) for name, (path, values) in self._aliases().items()]
        sections += [(f"models.params.{name}", name, dict(v)) for name, v in self.params.items()]
        return sections

    def params_for(self, name: str) -> dict[str, ParamValue]:
        """The configured hyper-parameters of model ``name`` (older sections included);
        unset ones take the model's defaults."""
        merged: dict[str, ParamValue] = {}
        for _, model, values in self.params_sections():
            if model == name:
                merged.update(values)
        return merged

    def params_sources(self, name: str) -> list[str]:
        """The config paths that set model ``name``'s hyper-parameters (for messages)."""
        paths = [path for path, model, _ in self.params_sections() if model == name]
        return paths or [f"models.params.{name}"]


class EvaluationConfig(_Section):
    k: int = Field(10, ge=1)
    candidates: int = Field(200, ge=1, description="Retrieval candidates the ranker re-scores")
    curve_ks: list[int] = Field(
        default_factory=lambda: [1, 5, 10, 20, 50],
        description="Cut-offs of the metric@K curves (k itself is always measured)",
    )
    bootstrap_resamples: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples of the test users behind each metric's confidence "
        "interval (0: no intervals)",
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals")
    calibration_bins: int = Field(
        10, ge=2, description="Equal-mass bins of the ranker's reliability diagrams"
    )
    keep_history: int = Field(
        50,
        ge=1,
        description="Evaluation runs kept under reports/evaluations/ (the oldest are removed)",
    )

    @field_validator("curve_ks")
    @classmethod
    def _positive_ks(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1:
            raise ValueError("curve_ks must list cut-offs >= 1")
        return sorted(set(value))


class StoreConfig(_Section):
    """The online store. ``embedded`` needs no server; ``redis`` is the production backend;
    ``redis-cluster`` spreads it over a Redis Cluster (``redis_url``: any node)."""

    type: Literal["embedded", "redis", "redis-cluster"] = "embedded"
    path: Path | None = Field(
        None, description="Embedded store file; default WORKDIR/store.sqlite3"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = Field("feedforge", pattern=r"^[A-Za-z0-9_.-]+$")
    socket_timeout_s: float = Field(
        0.5, gt=0, description="Redis: socket and connect timeout of every call but a feed's read"
    )
    read_timeout_ms: float = Field(
        25.0,
        gt=0,
        description="Redis: a feed request's store read gives up after this long (the "
        "timeout of the serving read connection, no retry) and the feed is answered "
        "degraded; keep it well inside serving.latency_budget_ms",
    )
    history_ttl_days: float | None = Field(
        90.0,
        gt=0,
        description="Redis: a user's live history expires this long after their last event "
        "(None: never). Version keys need no TTL: publish deletes replaced versions",
    )
    keep_versions: int = Field(
        2, ge=1, description="Newest published versions always kept (rollback targets)"
    )
    retire_grace_s: float = Field(
        300.0,
        ge=0,
        description="An older version is deleted only after it has been replaced for this "
        "long, so a service still answering from it is never left without its keys",
    )


class EventsConfig(_Section):
    """Where ``POST /events`` puts events. ``file``: every API host appends to the event log
    itself (a directory guarded by file locks, so all hosts share one file system; the
    embedded default). ``redis``: every host appends to one Redis Stream and acknowledges once
    the stream has the events durably; ``feedforge ingest`` (a consumer group, any number of
    consumers) writes them to the log exactly once per ``event_id`` and updates the users'
    live histories (:mod:`feedforge.events.stream`)."""

    stream: Literal["file", "redis"] = "file"
    stream_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="The stream's Redis (one server or a primary with replicas; it must "
        "write its append-only file with appendfsync always, see require_fsync)",
    )
    stream_key: str = Field("feedforge:events", min_length=1, description="The Redis Stream's key")
    group: str = Field(
        "ingest", pattern=r"^[A-Za-z0-9_.-]+$", description="The consumer group of feedforge ingest"
    )
    read_count: int = Field(
        200, ge=1, le=100_000, description="Stream entries (one per POST) a consumer reads at once"
    )
    block_ms: int = Field(
        1000, ge=1, description="How long a consumer's read waits for new entries"
    )
    claim_idle_ms: int = Field(
        30_000,
        ge=1,
        description="An entry read but not acknowledged for this long (its consumer died "
        "mid-batch) is claimed by another consumer and written again (at most once to the "
        "log: it de-duplicates by event_id)",
    )
    require_fsync: bool = Field(
        True,
        description="Refuse a stream server that does not fsync its append-only file on "
        "every write (appendonly yes, appendfsync always): an acknowledged event must "
        "survive the server's crash. Turn off only for a managed Redis whose CONFIG is "
        "hidden and whose durability you have checked",
    )


class ServingConfig(_Section):
    """The online service.

    The ``ann*`` fields pick the candidate retrieval (:mod:`feedforge.index.ann`):
    ``ann_m`` and ``ann_ef_construction`` shape the index ``feedforge publish`` builds;
    ``ann`` and ``ann_ef_search`` are read at publish and again when a service loads a version,
    so a running deployment can switch to exact search or widen the beam without republishing.
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    latency_budget_ms: float = Field(50.0, gt=0)
    mode: Literal["online", "batch"] = "online"
    candidates: int = Field(200, ge=1, le=10_000)
    history_length: int = Field(200, ge=1, description="Recent items kept per user")
    environment: Literal["development", "production"] = Field(
        "development",
        description="production refuses to start without api_key and read_api_key; "
        "development leaves the endpoints of an unset key open (with a warning)",
    )
    api_key: pydantic.SecretStr | None = Field(
        None,
        min_length=16,
        description="The key write endpoints (POST /events) require in the X-API-Key header; "
        "set it from the environment (FEEDFORGE_SERVING__API_KEY), not in a committed file",
    )
    read_api_key: pydantic.SecretStr | None = Field(
        None,
        min_length=16,
        description="The key GET /recommend requires in the X-API-Key header (a feed names "
        "items of the user's history); separate from api_key, which does not grant reads. "
        "Set it from the environment (FEEDFORGE_SERVING__READ_API_KEY)",
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (413 above it); 10,000 events fit in ~4 MB",
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="The service's log lines: one JSON object each, or plain text"
    )
    feed_log: bool = Field(
        True,
        description="Log every served feed (request id, user, items, scores, propensities, "
        "version) to WORKDIR/feedlog as training and off-policy-evaluation data",
    )
    feed_log_max_items: int = Field(
        100,
        ge=1,
        description="Items logged per feed line: the feed's first ones (with their scores and "
        "propensities); the rest are dropped and the line says so (items_total, truncated)",
    )
    feed_log_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="A worker starts a new feed log file at this size"
    )
    feed_log_rotate_s: float = Field(
        3600.0,
        gt=0,
        description="A worker also starts a new feed log file when its file is this old "
        "(and at each UTC day)",
    )
    feed_log_retention_s: float | None = Field(
        7 * 86_400.0,
        gt=0,
        description="Feed log files last written longer ago are deleted (null: kept)",
    )
    feed_log_max_total_bytes: int | None = Field(
        1024 * 1024 * 1024,
        ge=1,
        description="The oldest feed log files are deleted beyond this total (null: no cap); "
        "a file a worker is writing is never deleted",
    )
    precomputed: bool = Field(
        False,
        description="Answer from the precomputed feeds of `feedforge batch-score --to-store` "
        "while they are fresh (items consumed since are dropped); the online pipeline otherwise",
    )
    precomputed_max_age_s: float = Field(
        86_400.0, gt=0, description="A precomputed feed older than this is not used"
    )
    store_retry_s: float = Field(
        1.0,
        gt=0,
        description="After an online-store failure, serve degraded (popular) feeds without "
        "trying the store for this long, then try it again",
    )
    load_retry_s: float = Field(
        30.0,
        gt=0,
        description="After a published version failed to load (e.g. a corrupt bundle), keep "
        "serving the previous one and try that version again only after this long, doubling "
        "per failure up to 10 minutes (a load of a large catalog costs seconds of CPU)",
    )
    max_future_skew_s: float = Field(300.0, ge=0, description="Event timestamps this far ahead ok")
    max_past_age_days: float = Field(
        30.0,
        gt=0,
        description="POST /events refuses timestamps older than this (422): live clients send "
        "events within seconds, offline apps within days or weeks; older history is a backfill "
        "for `feedforge import`, which this bound does not apply to",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=4 * 1024,
        le=1024 * 1024,
        description="Request line plus headers `feedforge serve` buffers while they are "
        "incomplete (uvicorn's h11_max_incomplete_event_size): longer ones get 400 before the "
        "app sees them (a header block that arrives whole in one socket read, at most "
        "256 KiB, is parsed as it is)",
    )
    http: Literal["h11", "httptools"] = Field(
        "h11",
        description="uvicorn's HTTP/1.1 parser in `feedforge serve`: h11 bounds the header "
        "size (max_header_bytes); httptools parses faster but reads headers of any size, so "
        "use it only behind a proxy that bounds them",
    )
    malloc_mmap_threshold_bytes: int | None = Field(
        128 * 1024,
        ge=128 * 1024,
        le=32 * 1024 * 1024,
        description="glibc's mmap threshold, fixed in each service worker "
        "(feedforge.serving.allocator; the default is glibc's own starting value): glibc's "
        "dynamic threshold let a worker's resident memory grow under steady traffic; null "
        "keeps it dynamic. Costs about 1 ms of CPU per feed at 1M items (a 1 MB block per "
        "HNSW search)",
    )
    access_log: bool = Field(
        False,
        description="uvicorn's per-request access log (off: /metrics counts requests and the "
        "feed log records every feed; the log line cost about 0.1 ms of CPU per request)",
    )
    history_weight: float = Field(
        1.0, ge=0, description="Weight of live history in the user vector (see serving docs)"
    )
    live_items_refresh_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="How often each worker reads the items posted or withdrawn since the "
        "last publish (POST /items) from the store",
    )
    experiments_refresh_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often each worker reads the experiment definitions from the store "
        "(a start or stop reaches every worker within this time)",
    )
    ann: Literal["hnsw", "exact"] = Field(
        "hnsw",
        description="Candidate retrieval: an HNSW index built at publish (exact search is the "
        "fallback), or exact brute force over every item. Publish builds the index of this "
        "kind; serve with `exact` to skip a published index",
    )
    ann_m: int = Field(32, ge=4, le=128, description="HNSW links per node (publish time)")
    cold_items: Literal["content", "none"] = Field(
        "content",
        description="Catalog items without a learned embedding (no interactions in the "
        "training split, or newer than it), publish time: `content` serves them with vectors "
        "mapped from their attributes (feedforge.publish.coldstart), `none` serves learned "
        "items only",
    )
    ann_metric: Literal["auto", "l2-reduction", "inner-product"] = Field(
        "auto",
        description="The HNSW graph's space (publish time): the MIPS -> L2 reduction, the inner "
        "product itself, or auto: the reduction unless its recall@candidates on a sample of the "
        "users' vectors is below 0.95 and the inner-product graph recalls more",
    )
    ranker_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where the deep ranker scores (read when a service loads a version): auto "
        "uses a CUDA GPU when torch sees one and the CPU otherwise (and falls back to the CPU "
        "if the GPU fails); cpu or cuda force one. Tree and linear rankers always use the CPU",
    )
    ann_ef_construction: int = Field(
        200, ge=8, le=4096, description="HNSW beam width while building (publish time)"
    )
    ann_ef_search: int = Field(
        1024,
        ge=1,
        le=65_536,
        description="HNSW beam width while serving; each search widens it to the number of "
        "items it fetches (candidates plus excluded items). Higher: better recall, slower. "
        "1024 keeps recall@200 near 0.95 on 1M clustered items (2-3 ms); a beam of just the "
        "200 fetched gave 0.59 there",
    )


class BusinessRule(_Section):
    """One business rule of the re-ranking stage, matching items by id or primary category.

    ``boost`` multiplies the matched items' scores by ``factor``; ``bury`` moves them below
    every other candidate; ``block`` removes them from the feed (unavailable); ``pin`` puts the
    first matched item that the user may see at slot ``position`` (added to the candidates
    even when retrieval did not find it).
    """

    action: Literal["boost", "bury", "block", "pin"]
    item_ids: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    factor: float = Field(2.0, gt=0, description="boost: score multiplier")
    position: int = Field(0, ge=0, description="pin: 0-based slot")


class MonitoringConfig(_Section):
    """Step 7, monitor (:mod:`feedforge.monitoring`): the serving profile, drift, skew
    sampling, online KPIs, freshness, and the thresholds alert rules compare against (the
    service exports them as ``feedforge_threshold{name}``)."""

    profile: bool = Field(
        True,
        description="Keep a serving profile (binned feature and score distributions per "
        "version and experiment variant) in the online store, for drift",
    )
    profile_sample: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of scored requests whose candidates enter the serving profile",
    )
    profile_flush_s: float = Field(
        5.0, gt=0, description="A worker adds its profile counts to the store this often"
    )
    reference_rows: int = Field(
        200_000,
        ge=100,
        description="At most this many training rows (sampled) make a version's reference profile",
    )
    bins: int = Field(
        20, ge=2, le=200, description="Quantile bins of a numeric feature's reference profile"
    )
    window_s: int = Field(
        3_600,
        ge=60,
        description="The serving profile is kept per window of this many seconds, so drift "
        "is measured on recent traffic",
    )
    drift_baseline: Literal["serving", "training"] = Field(
        "serving",
        description="What recent served rows are compared with: the version's own first "
        "served rows (baseline_rows of them), or the reference profile of its ranker's "
        "training rows written at publish (which differ from any served feed by the logging "
        "policy's selection: `feedforge monitor drift` reports both)",
    )
    baseline_rows: int = Field(
        10_000,
        ge=1,
        description="drift_baseline serving: the version's first served windows holding this "
        "many rows are its baseline",
    )
    drift_min_rows: int = Field(
        2_000,
        ge=1,
        description="Drift is measured on the newest windows holding this many served rows, "
        "and flagged only once they do",
    )
    drift_alpha: float = Field(
        0.001,
        gt=0,
        lt=1,
        description="A column is flagged only when its shift is also significant for the rows "
        "compared (a chi-square test on PSI's bins, the KS test's critical value), each column "
        "at this level divided by the columns tested: the chance that a check flags any "
        "column when nothing moved",
    )
    drift_ignore: list[str] = Field(
        default_factory=lambda: ["hour_sin", "hour_cos"],
        description="Columns profiled but never flagged: the hour of day cycles daily by design",
    )
    psi_threshold: float = Field(0.2, gt=0, description="PSI above this is drift")
    ks_threshold: float = Field(
        0.15, gt=0, le=1, description="Kolmogorov-Smirnov statistic above this is drift"
    )
    js_threshold: float = Field(
        0.1, gt=0, le=1, description="Jensen-Shannon divergence (base 2) above this is drift"
    )
    drift_refresh_s: float = Field(
        30.0, gt=0, description="The service recomputes its drift gauges this often"
    )
    skew_sample: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of scored requests whose exact feature vectors are logged to "
        "WORKDIR/featurelog for `feedforge monitor skew` (0: none)",
    )
    skew_log_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="The feature log keeps at most this much (oldest files deleted first)",
    )
    kpi_refresh_s: float = Field(
        60.0, gt=0, description="The service recomputes its online KPI gauges this often"
    )
    dashboard_refresh_s: float = Field(
        5.0,
        gt=0,
        description="GET /dashboard: each worker samples the service's metrics this often "
        "and the page polls its data this often",
    )
    dashboard_points: int = Field(
        360, ge=2, description="GET /dashboard: samples kept for the live charts"
    )
    kpi_window_s: float = Field(
        86_400.0, gt=0, description="Online KPI gauges cover the feeds of this trailing window"
    )
    kpi_attribution_window_s: float = Field(
        86_400.0, gt=0, description="Events this long after a feed count towards its KPIs"
    )
    latency_slo: float = Field(
        0.99,
        gt=0,
        lt=1,
        description="Share of feed requests that must answer within serving.latency_budget_ms",
    )
    max_error_ratio: float = Field(0.01, gt=0, le=1, description="5xx share that alerts")
    max_degraded_ratio: float = Field(
        0.05, gt=0, le=1, description="Share of feeds answered degraded that alerts"
    )
    max_version_age_s: float = Field(
        2 * 86_400.0, gt=0, description="A served version older than this is stale"
    )
    max_event_age_s: float = Field(
        3_600.0, gt=0, description="The newest ingested event older than this alerts"
    )
    max_ingestion_lag_s: float = Field(
        300.0,
        gt=0,
        description="Events reaching the service later than this after their timestamp alert",
    )


class LoopConfig(_Section):
    """The continuous-training loop (:mod:`feedforge.loop.cycle`): its gates, the canary and
    the promotion rules. A lift is relative, ``(candidate - current) / |current|``; a
    negative minimum lift is a tolerance for noise."""

    min_train_rows: int = Field(
        1_000, ge=0, description="Data gate: fewest training interactions a candidate needs"
    )
    min_ranking_rows: int = Field(
        500, ge=0, description="Data gate: fewest labelled ranking examples (validation split)"
    )
    label_rate_range: tuple[float, float] = Field(
        (0.001, 0.9),
        description="Data gate: the ranking examples' positive rate must lie in [low, high]",
    )
    max_label_rate_change: float = Field(
        0.5,
        ge=0,
        description="Data gate: largest relative change of the positive rate against the "
        "current version's dataset",
    )
    offline_metric: Literal["auc", "request_ndcg", "value", "ndcg", "recall"] = Field(
        "auc",
        description="Offline gate metric on the candidate's test window: the ranker's AUC "
        "(or per-request NDCG@k) of the logged impressions, or the two-stage feed's "
        "observed value, ndcg or recall @k (these credit the serving version for its own "
        "exposures: see feedforge.evaluation.compare)",
    )
    offline_min_lift: float = Field(
        -0.01, ge=-1, description="Offline gate: the candidate's least relative lift"
    )
    offline_max_feed_drop: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Offline gate: the two-stage feed's observed value (ndcg for clicks) may "
        "not fall by more than this share (catches a broken retrieval model)",
    )
    ope_min_lift: float = Field(
        -0.05,
        ge=-1,
        description="Off-policy gate: least relative lift of the candidate's DR estimate "
        "over the current version's, from the recent feed log",
    )
    ope_window_s: float = Field(
        86_400.0, gt=0, description="Off-policy gate: feeds logged this recently"
    )
    ope_min_feeds: int = Field(
        200,
        ge=1,
        description="Off-policy gate: fewer logged feeds than this (or a log that never "
        "explored) and the gate is skipped, saying so",
    )
    canary_share: float = Field(
        0.1, gt=0, lt=1, description="Share of traffic the candidate serves during its canary"
    )
    canary_window_s: float = Field(
        3_600.0, gt=0, description="How long the canary runs before the decision"
    )
    canary_min_units: int = Field(
        100, ge=2, description="Fewest users per arm a decision needs (else: rolled back)"
    )
    canary_max_wait_s: float = Field(
        6 * 3_600.0,
        gt=0,
        description="Past this, a canary that still lacks canary_min_units is rolled back",
    )
    canary_max_drop: float = Field(
        0.25,
        ge=0,
        description="Rolled back when the primary metric's relative lift is below "
        "-canary_max_drop, or its 95% interval lies below 0 (significantly worse)",
    )
    canary_max_error_rate: float = Field(0.01, ge=0, le=1)
    canary_max_degraded_rate: float = Field(0.05, ge=0, le=1)
    canary_max_latency_p99_ms: float | None = Field(
        None, gt=0, description="Default: serving.latency_budget_ms"
    )
    canary_drift: bool = Field(
        True, description="Roll back when the canary's served features drift (monitoring)"
    )
    layer: str = Field(
        "loop", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The canary experiment's layer"
    )
    keep_runs: int = Field(
        20, ge=2, description="Runs whose dataset and models are kept (older ones pruned)"
    )
    compact: bool = Field(
        True,
        description="Compact the event log's days before today (the cycle's clock) first",
    )
    warm_start: bool = Field(
        True,
        description="Start the retrieval model from the serving version's (ALS: its factors "
        "moved to the new id maps) when its run's models are on disk",
    )
    warm_iterations: int | None = Field(
        5, ge=1, description="Sweeps of a warm-started retrieval model (None: as configured)"
    )

    @model_validator(mode="after")
    def _range(self) -> LoopConfig:
        low, high = self.label_rate_range
        if not 0 <= low < high <= 1:
            raise ValueError(f"label_rate_range: [{low}, {high}] is not within [0, 1]")
        return self


class ExplorationConfig(_Section):
    """Exploration of the re-ranking stage; every shown item's propensity is recorded.

    ``epsilon_greedy``: each slot shows the best remaining item with probability
    ``1 - epsilon``, else a uniformly random remaining one. ``softmax``: each slot samples the
    remaining items with probability proportional to ``exp(utility / temperature)``
    (Plackett-Luce), utilities min-max scaled to [0, 1] over the candidates.
    """

    type: Literal["none", "epsilon_greedy", "softmax"] = "none"
    epsilon: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(0.1, gt=0)
    seed: int | None = Field(
        None,
        description="Mixed with each request's id into that request's randomness, so a feed "
        "is reproducible from the feed log (None counts as 0); a call without a request id "
        "draws from this seed alone (None: fresh entropy)",
    )


class ReRankConfig(_Section):
    """The re-ranking stage after scoring (see :mod:`feedforge.serving.rerank`)."""

    category_cap: int | None = Field(
        None, ge=1, description="At most this many items of one primary category per feed"
    )
    mmr_lambda: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Maximal marginal relevance: lambda * relevance - (1 - lambda) * the "
        "largest cosine similarity to an item already placed (1 = relevance only)",
    )
    freshness_boost: float = Field(
        0.0, ge=0, description="Scores times 1 + boost * exp(-age_days / freshness_tau_days)"
    )
    freshness_tau_days: float = Field(7.0, gt=0)
    rules: list[BusinessRule] = Field(default_factory=list)
    exploration: ExplorationConfig = ExplorationConfig()


class ObjectiveWeights(_Section):
    """The value of one unit of each outcome for ``objective: mix``: an impression is worth
    ``clicks * clicked + watch_minutes * minutes watched + revenue * revenue``."""

    clicks: float = Field(0.0, ge=0, description="Value of one click")
    watch_minutes: float = Field(0.0, ge=0, description="Value of one minute watched")
    revenue: float = Field(0.0, ge=0, description="Value of one unit of revenue")


class Settings(BaseSettings):
    """All of feedforge's settings."""

    model_config = SettingsConfigDict(
        env_prefix="FEEDFORGE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    objective: Objective = Field(
        "watch_time",
        description="What the feed maximises: watch time, clicks, revenue, or a weighted mix "
        "of the three (weights in objective_weights)",
    )
    objective_weights: ObjectiveWeights = ObjectiveWeights()
    simulator: SimulatorConfig = SimulatorConfig()
    dataset: DatasetConfig = DatasetConfig()
    models: ModelsConfig = ModelsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    store: StoreConfig = StoreConfig()
    events: EventsConfig = EventsConfig()
    serving: ServingConfig = ServingConfig()
    reranking: ReRankConfig = ReRankConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    loop: LoopConfig = LoopConfig()

    @model_validator(mode="after")
    def _read_deadline_within_budget(self) -> Settings:
        if self.store.read_timeout_ms >= self.serving.latency_budget_ms:
            raise ValueError(
                f"store.read_timeout_ms ({self.store.read_timeout_ms:g}) must be below "
                f"serving.latency_budget_ms ({self.serving.latency_budget_ms:g}): a hung "
                "store would use the whole budget before the feed falls back"
            )
        return self

    @model_validator(mode="after")
    def _mix_has_weights(self) -> Settings:
        w = self.objective_weights
        if self.objective == "mix" and not (w.clicks or w.watch_minutes or w.revenue):
            raise ValueError(
                "objective 'mix' needs at least one objective_weights entry above 0 "
                "(clicks, watch_minutes, revenue)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs), which beats the defaults.
        return (env_settings, init_settings)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from a YAML file (optional) and the environment.

    Args:
        path: A YAML file whose top-level keys are :class:`Settings` fields. ``None`` uses
            only the defaults and the environment.
        **overrides: Top-level fields that replace the file's values (used by tests).

    Returns:
        The validated, frozen settings.

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or holds an unknown key or
            an invalid value (the message names the file and the offending key); or a
            ``FEEDFORGE_*`` environment variable names no setting (see
            :func:`check_environment`).
    """
    source = str(path) if path is not None else "environment/defaults"
    check_environment()
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of settings")
        odd = [key for key in loaded if not isinstance(key, str)]
        if odd:
            raise ConfigError(f"{file}: setting names must be strings, found {odd[0]!r}")
        data = loaded
    data.update(overrides)
    try:
        settings = Settings(**data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid configuration: {problems}") from exc
    check_model_params(settings.models, source)
    return settings


ENV_PREFIX = "FEEDFORGE_"

ENV_NOT_SETTINGS = frozenset({"WORKDIR", "CONFIG", "UID", "GID", "TEST_REDIS_URL"})
"""``FEEDFORGE_*`` variables that are not settings: ``FEEDFORGE_WORKDIR`` and
``FEEDFORGE_CONFIG`` (set by ``feedforge serve`` for its workers, read by
:func:`feedforge.serving.app.create_app_from_env`), ``FEEDFORGE_UID``/``GID``
(``docker-compose.yml``'s user of the API container) and ``FEEDFORGE_TEST_REDIS_URL`` (the
test suite's Redis server)."""


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse ``FEEDFORGE_*`` environment variables that name no setting.

    pydantic-settings ignores them, so a typo (``FEEDFORGE_SERVING_PORT`` for
    ``FEEDFORGE_SERVING__PORT``) would silently leave the default in force. A variable is
    known when each ``__``-separated part names a field of the section before it (matched
    case-insensitively, as the settings are read); below a mapping field (e.g.
    ``models.params``) any key is allowed, and its values are checked with the section.

    Args:
        environ: The variables to check (default: ``os.environ``).

    Raises:
        ConfigError: naming every unknown variable, with the nearest known name.
    """
    environ = os.environ if environ is None else environ
    unknown = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        if rest.upper() in ENV_NOT_SETTINGS or _is_setting(Settings, rest.lower().split("__")):
            continue
        close = difflib.get_close_matches(name.upper(), _env_names(Settings), n=1, cutoff=0.8)
        unknown.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
    if unknown:
        raise ConfigError(
            f"environment: unknown variable {', '.join(unknown)}: FEEDFORGE_ variables name a "
            "setting, with `__` between a section and its key (e.g. FEEDFORGE_STORE__TYPE); "
            "see feedforge/config.py"
        )


def _sections(annotation: Any) -> list[Any]:
    """The pydantic models and mappings an annotation allows (``X | None`` unwrapped)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is not None else ()
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [found for arg in args for found in _sections(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (dict, Mapping) or annotation is dict:
        return [dict]
    return []


def _is_setting(model: type[BaseModel], parts: list[str]) -> bool:
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    for section in _sections(field.annotation):
        if section is dict:
            return all(parts[1:])
        if _is_setting(section, parts[1:]):
            return True
    return False


def _env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> list[str]:
    """Every variable that sets one field of ``model`` (for suggestions)."""
    names = []
    for name, field in model.model_fields.items():
        names.append(f"{prefix}{name.upper()}")
        for section in _sections(field.annotation):
            if section is not dict:
                names += _env_names(section, f"{prefix}{name.upper()}__")
    return names


MODEL_PARAMS_CHECK = "feedforge.models.registry:check_config_params"
"""The function that checks one config section against a model's ``Params`` class, by dotted
path: config sits below the models package (the models read :class:`ModelsConfig`)."""


def check_model_params(models: ModelsConfig, source: str) -> None:
    """Validate every configured model's hyper-parameters against its ``Params`` class.

    Only the models the config names are looked up, and so imported (a config without torch
    models never imports torch).

    Args:
        models: The models section.
        source: The config file (or ``environment/defaults``), quoted in the message.

    Raises:
        ConfigError: an unknown model name, or an unknown or invalid parameter; the message
            names ``source``, the model and the key (e.g. ``models.params.tree.depth``).
    """
    sections = models.params_sections()
    if not sections:
        return
    # Resolved from its dotted path when the settings are checked, as Feast's RepoConfig
    # imports the config class of the backend a file names: a static import would make the
    # bottom layer (config) depend on the models package.
    module, _, function = MODEL_PARAMS_CHECK.partition(":")
    check = getattr(importlib.import_module(module), function)
    for path, name, values in sections:
        try:
            check(path, name, values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: invalid configuration: {exc.message}") from exc
