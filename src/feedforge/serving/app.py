"""The stateless FastAPI feed service.

Endpoints: ``GET /recommend``, ``POST /events``, ``GET /health`` (plus ``/health/live`` and
``/health/ready``), ``GET /metrics`` (Prometheus, :mod:`feedforge.monitoring.metrics`),
OpenAPI at ``/docs``. ``/recommend`` runs on the event loop: a feed is CPU work plus one store
round trip, and the thread pool only added GIL hand-offs (about 0.5 ms of CPU per request), so
a worker computes one feed at a time and a deployment runs one worker per core. Endpoints that
wait on the disk or the network (``POST /events`` fsyncs, ``/health`` pings) stay on the pool.
Heavy objects (the store client, the service) are created in the lifespan, never per request.
Every :class:`~feedforge.errors.FeedforgeError` is turned into a JSON response with its HTTP
status by one handler.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedforge import __version__
from feedforge.config import Settings, load_settings
from feedforge.errors import FeedforgeError, ValidationError
from feedforge.events.schema import Event, validate_events
from feedforge.serving.explain import Explanation
from feedforge.serving.pipeline import Feed, FeedService
from feedforge.serving.schemas import FeedResponse, HealthResponse, IngestResponse
from feedforge.serving.security import (
    BodySizeLimit,
    api_key_header,
    check_security_config,
    require_api_key,
)
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

MAX_EVENTS_PER_REQUEST = 10_000

logger = logging.getLogger("feedforge.serving")


class RequestTiming:
    """Pure ASGI middleware: per-route request counts and latency (``/metrics``), a
    ``Server-Timing`` header on every answer, and a warning for feeds over the latency
    budget (``serving.latency_budget_ms``, step 1 "clarify": the budget is config).

    Timed from the request's arrival to the start of its answer. Pure ASGI rather than
    Starlette's ``BaseHTTPMiddleware``, which costs a task group and memory streams per
    request.
    """

    def __init__(self, app: ASGIApp, budget_ms: float) -> None:
        self.app = app
        self.budget_ms = budget_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = time.perf_counter() - started
                headers = list(message.get("headers") or [])
                headers.append((b"server-timing", f"app;dur={elapsed * 1e3:.2f}".encode()))
                message = {**message, "headers": headers}
                self._observe(scope, int(message["status"]), elapsed)
            await send(message)

        await self.app(scope, receive, timed_send)

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        app = scope.get("app")
        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:
            # By route template (bounded label values), not by raw path.
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            metrics = service.metrics
            metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            metrics.request_seconds.labels(endpoint=endpoint).observe(elapsed)
        elapsed_ms = elapsed * 1e3
        if elapsed_ms > self.budget_ms and scope.get("path") == "/recommend":
            logger.warning(
                "latency budget exceeded: /recommend took %.1f ms > %.1f ms",
                elapsed_ms,
                self.budget_ms,
            )


def _finite(value: float) -> float | None:
    # As pydantic serialises a non-finite float: null (JSON has no NaN or infinity).
    value = float(value)
    return value if math.isfinite(value) else None


def feed_body(feed: Feed, request_id: str) -> dict[str, Any]:
    """The JSON body of a feed answer (the :class:`FeedResponse` schema)."""
    n = len(feed.item_ids)
    propensities = feed.propensities or [1.0] * n
    explanations = feed.explanations or [Explanation("")] * n
    return {
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
            }
            for i, s, p, e in zip(
                feed.item_ids, feed.scores, propensities, explanations, strict=True
            )
        ],
    }


async def get_service(request: Request) -> FeedService:
    # async: FastAPI runs a sync dependency on the thread pool, a hop per request.
    service: FeedService = request.app.state.service
    return service


Service = Annotated[FeedService, Depends(get_service)]

_EVENT_BODY_SCHEMA = {
    "oneOf": [
        {"$ref": "#/components/schemas/Event"},
        {"type": "array", "items": {"$ref": "#/components/schemas/Event"}, "maxItems": 10000},
    ]
}


def create_app(settings: Settings, workdir: Workdir) -> FastAPI:
    """Build the app for a work directory; the store opens when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.store, workdir.store_path)
        app.state.service = FeedService(settings, workdir, store)
        # uvicorn opens a worker's socket after the lifespan start-up, so no request waits
        # on the version load.
        app.state.service.preload()
        try:
            yield
        finally:
            app.state.service.close()
            store.close()

    check_security_config(settings.serving)
    app = FastAPI(
        title="feedforge",
        version=__version__,
        description="A personalized feed: retrieve -> rank -> re-rank over published models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.serving.max_request_bytes)

    app.add_middleware(RequestTiming, budget_ms=settings.serving.latency_budget_ms)

    @app.exception_handler(FeedforgeError)
    async def _feedforge_error(_request: Request, exc: FeedforgeError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content=exc.to_dict())

    @app.get("/recommend", response_model=FeedResponse, tags=["feed"])
    async def recommend(
        service: Service,
        user_id: Annotated[str, Query(min_length=1, max_length=128)],
        k: Annotated[int, Query(ge=1, le=500, description="Number of items")] = 10,
        device: Annotated[
            str | None,
            Query(
                max_length=64,
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
        logged to the feed log with its request id."""
        request_id = request_id or uuid.uuid4().hex
        feed = service.recommend(user_id, k, device)
        service.log_feed(feed, request_id, device)
        # Serialised here, not validated again by FastAPI against the response model (the
        # fields are built from typed values; the schema above documents them).
        return JSONResponse(content=feed_body(feed, request_id))

    @app.post(
        "/events",
        response_model=IngestResponse,
        tags=["events"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _EVENT_BODY_SCHEMA}},
            }
        },
        responses={
            401: {"description": "Missing or wrong X-API-Key"},
            413: {"description": "Body over serving.max_request_bytes"},
            422: {"model": IngestResponse, "description": "Some events were rejected"},
        },
    )
    def post_events(
        request: Request,
        service: Service,
        payload: Annotated[Any, Body(include_in_schema=False)],
        api_key: Annotated[str | None, Security(api_key_header)] = None,
    ) -> Any:
        """Validate events (one object or a list), store the good ones durably, update the
        users' live histories. Any rejected event makes the answer 422, listing each rejected
        event's index, field and reason; the good ones are stored all the same. Needs the
        ``X-API-Key`` header when ``serving.api_key`` is set."""
        require_api_key(request, api_key)
        batch = payload if isinstance(payload, list) else [payload]
        if len(batch) > MAX_EVENTS_PER_REQUEST:
            raise ValidationError(
                f"too many events in one request: {len(batch)} > {MAX_EVENTS_PER_REQUEST}"
            )
        good, issues = validate_events(
            batch, max_future_skew_s=service.settings.serving.max_future_skew_s
        )
        result, history_updated = service.ingest(good)
        body = IngestResponse(
            accepted=result.written,
            duplicates=result.duplicates,
            rejected=len(batch) - len(good),
            errors=issues,
            history_updated=history_updated,
        )
        if issues:
            return JSONResponse(status_code=422, content=json.loads(body.model_dump_json()))
        return body

    def _health(service: FeedService) -> JSONResponse:
        ok, checks = service.health()
        body = HealthResponse(
            status="ok" if ok else "unavailable", version=checks.get("version"), checks=checks
        )
        return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())

    @app.get("/health", response_model=HealthResponse, tags=["health"])
    def health(service: Service) -> JSONResponse:
        """200 when the store answers and a published version is loaded, else 503."""
        return _health(service)

    @app.get("/health/ready", response_model=HealthResponse, tags=["health"])
    def ready(service: Service) -> JSONResponse:
        """Readiness: same as ``/health``."""
        return _health(service)

    @app.get("/metrics", tags=["monitoring"], response_class=Response)
    def metrics(service: Service) -> Response:
        """Prometheus metrics: requests, latency per feed stage, feeds by strategy, users and
        candidates scored with default features, the serving version."""
        body, content_type = service.metrics.render()
        return Response(content=body, media_type=content_type)

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive"}

    # Make the Event schema available to the hand-written request body schema above.
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            event_schema = Event.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(event_schema.pop("$defs", {}))
            components["Event"] = event_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` with several workers.

    Reads ``FEEDFORGE_WORKDIR`` (required) and ``FEEDFORGE_CONFIG`` (optional YAML file).
    """
    workdir = os.environ.get("FEEDFORGE_WORKDIR")
    if not workdir:
        raise FeedforgeError("FEEDFORGE_WORKDIR is not set")
    config = os.environ.get("FEEDFORGE_CONFIG") or None
    return create_app(load_settings(config), Workdir.at(workdir))
