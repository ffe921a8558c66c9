"""Typed configuration: one YAML file plus ``FEEDFORGE_*`` environment variables.

Precedence (highest first): environment variables, the YAML file, the defaults below.
Nested fields are set from the environment with a double underscore, e.g.
``FEEDFORGE_STORE__TYPE=redis`` or ``FEEDFORGE_OBJECTIVE=clicks``. Unknown keys are rejected,
and every validation error is re-raised as :class:`~feedforge.errors.ConfigError` naming the
file it came from.

The business goal (step 1 of the design framework, "clarify") lives here as config, not code:
``objective`` picks what the feed maximises and ``serving.latency_budget_ms`` the online budget.
"""

from __future__ import annotations

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


class PopularityConfig(_Section):
    window_days: float = Field(7.0, gt=0, description="Count positives in the last N train days")


class MatrixFactorizationConfig(_Section):
    factors: int = Field(64, ge=2)
    regularization: float = Field(0.05, ge=0)
    iterations: int = Field(15, ge=1)
    alpha: float = Field(10.0, gt=0, description="Confidence scaling of implicit feedback")
    random_state: int = 0


class RankerConfig(_Section):
    """The ranking stage's model. ``type`` picks it; ``C`` and ``max_iter`` are the logistic
    regression's, every other ranker takes its keyword arguments from ``models.params.<type>``
    (e.g. ``params: {lightgbm: {objective: lambdarank}}``)."""

    type: Literal["logistic", "tree", "lightgbm", "dcn"] = Field(
        "logistic",
        description="logistic regression, a shallow decision tree, LightGBM (binary or "
        "lambdarank), or the deep multi-task DCN-v2 ranker",
    )
    C: float = Field(1.0, gt=0, description="Inverse L2 strength of the logistic regression")
    max_iter: int = Field(500, ge=10)


class ModelsConfig(_Section):
    """Which models to train and their hyper-parameters.

    ``popularity``, ``als`` and ``ranker`` have typed sections; every other model takes its
    constructor's keyword arguments from ``params.<model name>`` (e.g.
    ``params: {sasrec: {epochs: 50}}``); an unknown argument is a configuration error.
    """

    retrieval: Literal["als", "bpr", "ease", "two_tower", "sasrec"] = "als"
    popularity: PopularityConfig = PopularityConfig()
    als: MatrixFactorizationConfig = MatrixFactorizationConfig()
    ranker: RankerConfig = RankerConfig()
    params: dict[str, dict[str, float | int | str | bool | None]] = Field(default_factory=dict)


class EvaluationConfig(_Section):
    k: int = Field(10, ge=1)
    candidates: int = Field(200, ge=1, description="Retrieval candidates the ranker re-scores")


class StoreConfig(_Section):
    """The online store. ``embedded`` needs no server; ``redis`` is the production backend."""

    type: Literal["embedded", "redis"] = "embedded"
    path: Path | None = Field(
        None, description="Embedded store file; default WORKDIR/store.sqlite3"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = Field("feedforge", pattern=r"^[A-Za-z0-9_.-]+$")
    socket_timeout_s: float = Field(0.5, gt=0)
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
        description="production refuses to start without api_key; development leaves the "
        "write endpoints open when no key is set (with a warning)",
    )
    api_key: pydantic.SecretStr | None = Field(
        None,
        min_length=16,
        description="The key write endpoints (POST /events) require in the X-API-Key header; "
        "set it from the environment (FEEDFORGE_SERVING__API_KEY), not in a committed file",
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
    access_log: bool = Field(
        False,
        description="uvicorn's per-request access log (off: /metrics counts requests and the "
        "feed log records every feed; the log line cost about 0.1 ms of CPU per request)",
    )
    history_weight: float = Field(
        1.0, ge=0, description="Weight of live history in the user vector (see serving docs)"
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
    seed: int | None = Field(None, description="Fixed seed (tests); None draws fresh entropy")


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
    serving: ServingConfig = ServingConfig()
    reranking: ReRankConfig = ReRankConfig()

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
            an invalid value. The message names the file and the offending key.
    """
    source = str(path) if path is not None else "environment/defaults"
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
        return Settings(**data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid configuration: {problems}") from exc
