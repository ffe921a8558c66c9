"""Request and response schemas of the feed API (kept apart from the domain models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from feedforge.events.schema import EventIssue


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(
        description="Ranker score: the probability of the objective's positive label, or the "
        "deep multi-task ranker's expected objective value (e.g. expected watch seconds); the "
        "retrieval "
        "score when the version has no ranker; popularity feed: a rank-based score in (0, 1]. "
        "Re-ranking boosts (business rules, freshness) are included"
    )
    propensity: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Probability with which re-ranking picked this item for its slot, given "
        "the slots above it (1 without exploration); log it for off-policy evaluation",
    )
    explanation: str = Field(
        "",
        description="Why the item is here, e.g. 'similar to i000042, from your history' (the "
        "history item whose embedding is closest), 'matches your taste profile' or 'popular "
        "right now'",
    )
    because_item_id: str | None = Field(
        None, description="The history item the explanation points at, if any"
    )
    team: str | None = Field(
        None,
        description="Interleaving experiments: the variant whose feed placed this item "
        "(team-draft interleaving); absent otherwise",
    )


class Exposure(BaseModel):
    experiment: str = Field(description="The running experiment the user is in")
    variant: str = Field(
        description="The user's variant, or `interleaved` in an interleaving experiment"
    )
    version: str = Field(description="The published version that served the feed")


class FeedResponse(BaseModel):
    request_id: str = Field(
        description="This answer's id in the feed log; send it back as context.request_id"
    )
    user_id: str
    version: str = Field(description="The published version that served this feed")
    strategy: Literal["personalized", "popular", "precomputed"] = Field(
        description="`personalized` (the online pipeline), `precomputed` (a fresh feed of "
        "`feedforge batch-score`, with serving.precomputed on), or `popular` (cold-start "
        "users with neither embedding nor history, and degraded answers)"
    )
    items: list[ScoredItem]
    degraded: bool = Field(
        False,
        description="True when the online store was unavailable and the feed is the "
        "in-process fallback (the version's popular items)",
    )
    experiments: list[Exposure] | None = Field(
        None,
        description="The experiments this feed was served under (absent outside every "
        "experiment); the feed log records the same",
    )


class IngestResponse(BaseModel):
    accepted: int = Field(description="Events stored durably (new ones)")
    duplicates: int = Field(description="Events whose event_id was already stored")
    rejected: int = 0
    errors: list[EventIssue] = Field(
        [],
        description="One entry per problem of a rejected event: its index in the batch, the "
        "field (dotted, e.g. `context.position`) and the reason",
    )
    history_updated: bool = Field(
        True,
        description="False while the online store is unavailable: the events are durable in "
        "the log, and the users' live histories are updated when the store answers again",
    )


class FieldError(BaseModel):
    """One rejected part of a request."""

    field: str = Field(description="The query parameter, or `body`, that was rejected")
    reason: str = Field(description="Why; quotes at most 80 characters of the input")


class ErrorResponse(BaseModel):
    """The body of every 4xx (and 5xx) answer of the API."""

    error: str = Field(
        description="The kind of error: `ValidationError` (422), `BadRequest` (400: a body "
        "that cannot be decoded), `AuthError` (401), `PayloadTooLargeError` (413), `NotFound` "
        "(404), `MethodNotAllowed` (405), or a server-side error (5xx)"
    )
    message: str = Field(description="What went wrong, for a person")
    errors: list[FieldError] = Field(
        [], description="The rejected parameters, one per problem (422 only)"
    )


class EventsRejected(IngestResponse):
    """``POST /events``' 422: the error fields plus what happened to the batch (the valid
    events were stored all the same)."""

    error: Literal["ValidationError"] = "ValidationError"
    message: str = Field(description="How many events were rejected")


class ItemsResponse(BaseModel):
    accepted: int = Field(description="Items stored (added, changed or withdrawn)")
    rejected: int = 0
    errors: list[EventIssue] = Field(
        [], description="One entry per problem of a rejected item: its index, field, reason"
    )
    live_updated: bool = Field(
        True,
        description="False while the online store is unavailable: the items are durable in "
        "the catalog and served from the next publish",
    )


class ItemsRejected(ItemsResponse):
    """``POST /items``' 422: the error fields plus what happened to the batch (the valid
    items were stored all the same)."""

    error: Literal["ValidationError"] = "ValidationError"
    message: str = Field(description="How many items were rejected")


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str | None = None
    checks: dict[str, str] = {}
