"""The feed resource: ``GET /recommend``.

A feed is computed on the thread pool, not on the event loop: it waits on the store, and a
hung store must never freeze the loop (the liveness probe, the other requests). The store
read's own deadline (``store.read_timeout_ms``) bounds that wait. What the thread pool costs
under load is in ``docs/benchmarks`` (README, issue 5 section). A deployment still runs one
worker per core, since the GIL lets one feed compute at a time.
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from feedforge.events.schema import (
    MAX_ID_LENGTH,
    MAX_LABEL_LENGTH,
    PRINTABLE,
    PRINTABLE_OR_EMPTY,
)
from feedforge.serving.deps import ReadAccess, Service
from feedforge.serving.explain import Explanation
from feedforge.serving.feed import Feed
from feedforge.serving.pipeline import FeedService
from feedforge.serving.schemas import ErrorResponse, FeedResponse

router = APIRouter(tags=["feed"])


def _finite(value: float) -> float | None:
    # As pydantic serialises a non-finite float: null (JSON has no NaN or infinity).
    value = float(value)
    return value if math.isfinite(value) else None


def feed_body(feed: Feed, request_id: str) -> dict[str, Any]:
    """The JSON body of a feed answer (the :class:`FeedResponse` schema).

    Args:
        feed: The served feed.
        request_id: The request's id, echoed in the body.

    Returns:
        The body, JSON-ready (non-finite scores as null).
    """
    n = len(feed.item_ids)
    propensities = feed.propensities or [1.0] * n
    explanations = feed.explanations or [Explanation("")] * n
    teams: list[str | None] = list(feed.teams) if feed.teams else [None] * n
    body: dict[str, Any] = {
        "request_id": request_id,
        "user_id": feed.user_id,
        "version": feed.version,
        "strategy": feed.strategy,
        "degraded": feed.degraded,
        "items": [
            {
                "item_id": i,
                "score": _finite(s),
                "propensity": float(p),
                "explanation": e.text,
                "because_item_id": e.because_item_id,
                **({"team": team} if team is not None else {}),
            }
            for i, s, p, e, team in zip(
                feed.item_ids, feed.scores, propensities, explanations, teams, strict=True
            )
        ],
    }
    if feed.experiments:
        body["experiments"] = feed.experiments
    return body


@router.get(
    "/recommend",
    response_model=FeedResponse,
    # A feed names items of the user's history: reads need serving.read_api_key.
    dependencies=[ReadAccess],
    responses={
        401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key (read key)"},
        422: {"model": ErrorResponse, "description": "A missing or invalid parameter"},
    },
)
async def recommend(
    service: Service,
    user_id: Annotated[str, Query(min_length=1, max_length=MAX_ID_LENGTH, pattern=PRINTABLE)],
    k: Annotated[int, Query(ge=1, le=500, description="Number of items")] = 10,
    device: Annotated[
        str | None,
        Query(
            max_length=MAX_LABEL_LENGTH,
            pattern=PRINTABLE_OR_EMPTY,
            description="The requesting device (tv, mobile, web; a ranking feature). "
            "Default: the user's last device",
        ),
    ] = None,
    request_id: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
            description="The client's id of this request (default: a new one); send it "
            "back as context.request_id in the impression and engagement events",
        ),
    ] = None,
) -> JSONResponse:
    """The ranked feed of a user; unknown users get the popularity feed. Every answer is
    logged to the feed log with its request id. Needs the ``X-API-Key`` header (the read
    key) when ``serving.read_api_key`` is set."""
    request_id = request_id or uuid.uuid4().hex
    body = await run_in_threadpool(_serve, service, user_id, k, device, request_id)
    return JSONResponse(content=body)


def _serve(
    service: FeedService, user_id: str, k: int, device: str | None, request_id: str
) -> dict[str, Any]:
    # Off the event loop (see the module docs).
    feed = service.serve(user_id, k, device, request_id)
    # Serialised here, not validated again by FastAPI against the response model (the
    # fields are built from typed values; the schema above documents them).
    return feed_body(feed, request_id)
