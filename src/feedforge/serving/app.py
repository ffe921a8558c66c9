"""The stateless FastAPI feed service: the app factory.

Endpoints, one router per resource (:mod:`feedforge.serving.routes`): ``GET /recommend``
(feed), ``POST /events`` (events), ``GET /health`` (plus ``/health/live`` and
``/health/ready``) and ``GET /metrics`` (Prometheus, :mod:`feedforge.monitoring.metrics`)
(ops); the live dashboard at ``GET /dashboard`` (:mod:`feedforge.serving.routes.dashboard`);
OpenAPI at ``/docs`` and ``/redoc``, from local assets
(:mod:`feedforge.serving.docs`). Heavy objects (the store client, the service) are created in the
lifespan, never per request; endpoints get them through :mod:`feedforge.serving.deps`. Every
:class:`~feedforge.errors.FeedforgeError`, and FastAPI's own 4xx, is turned into a JSON
response of one shape with its HTTP status by :func:`install_error_handlers`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from feedforge import __version__
from feedforge.config import Settings, load_settings
from feedforge.errors import FeedforgeError, ValidationError
from feedforge.events.schema import issue_reason, quote
from feedforge.monitoring.metrics import mark_worker_dead
from feedforge.serving.allocator import fix_mmap_threshold
from feedforge.serving.docs import install_docs
from feedforge.serving.middleware import RequestTiming
from feedforge.serving.pipeline import FeedService
from feedforge.serving.routes import dashboard, events, feed, items, ops
from feedforge.serving.security import BodySizeLimit, check_security_config
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

logger = logging.getLogger("feedforge.serving")


def create_app(settings: Settings, workdir: Workdir) -> FastAPI:
    """Build the app for a work directory; the store opens when the app starts.

    Raises:
        feedforge.errors.ConfigError: the security settings are refused (production without
            both API keys, or the same key for reads and writes).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Before the version load's large blocks are allocated and freed.
        if fix_mmap_threshold(settings.serving.malloc_mmap_threshold_bytes):
            logger.info(
                "glibc mmap threshold fixed at %d bytes",
                settings.serving.malloc_mmap_threshold_bytes,
            )
        store = open_store(settings.store, workdir.store_path)
        app.state.service = service = FeedService(settings, workdir, store)
        # uvicorn opens a worker's socket after the lifespan start-up, so no request waits
        # on the version load.
        service.versions.preload()
        service.replay_held_histories()  # updates a stopped or killed worker still held
        service.experiments.start()  # the running experiments, then every refresh period
        service.live.start(lambda: service.versions.loaded)  # items posted since the publish
        service.monitor.start()  # profile flushes, drift, KPIs, process gauges
        try:
            yield
        finally:
            service.close()
            store.close()
            mark_worker_dead()

    check_security_config(settings.serving)
    app = FastAPI(
        title="feedforge",
        version=__version__,
        description="A personalized feed: retrieve -> rank -> re-rank over published models.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN: served locally by install_docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.serving.max_request_bytes)
    app.add_middleware(RequestTiming, budget_ms=settings.serving.latency_budget_ms)

    install_error_handlers(app)

    for router in (feed.router, events.router, items.router, ops.router, dashboard.router):
        app.include_router(router)
    events.install_event_schema(app)
    install_docs(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the API's one shape (``error``, ``message``, ``errors``; see
    :class:`~feedforge.serving.schemas.ErrorResponse`), FastAPI's own included: its request
    validation (422, by default ``{"detail": ...}`` quoting the whole input) and its HTTP
    errors (400 for an undecodable body, 404, 405)."""

    @app.exception_handler(FeedforgeError)
    async def _feedforge_error(request: Request, exc: FeedforgeError) -> JSONResponse:
        if exc.http_status >= 500:  # the operator's view, with what the client is not told
            logger.error("%s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(status_code=exc.http_status, content=exc.to_dict())

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_field_error(err) for err in exc.errors()]
        fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
        error = ValidationError(f"invalid request: {quote(fields)}", errors=errors)
        return JSONResponse(status_code=422, content=error.to_dict())

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (204, 304) or exc.status_code < 200:
            return Response(status_code=exc.status_code, headers=exc.headers)
        kind = HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
        body = {"error": kind, "message": quote(str(exc.detail), 200)}
        return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)


def _field_error(err: Mapping[str, Any]) -> dict[str, str]:
    """One FastAPI validation error as ``{"field", "reason"}``, quoting none of the input."""
    loc = [str(part) for part in err.get("loc") or ()]
    if err.get("type") == "json_invalid":
        at = f" at position {loc[1]}" if len(loc) > 1 else ""
        problem = (err.get("ctx") or {}).get("error", "decode error")
        return {"field": "body", "reason": f"not valid JSON: {problem}{at}"}
    # ("query", "k") -> "k"; ("body",) -> "body"; ("body", "x", 0) -> "x.0".
    field = ".".join(loc[1:]) or (loc[0] if loc else "request")
    return {"field": quote(field), "reason": issue_reason(err)}


def create_app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` with several workers.

    Reads ``FEEDFORGE_WORKDIR`` (required) and ``FEEDFORGE_CONFIG`` (optional YAML file).

    Raises:
        FeedforgeError: ``FEEDFORGE_WORKDIR`` is not set.
    """
    workdir = os.environ.get("FEEDFORGE_WORKDIR")
    if not workdir:
        raise FeedforgeError("FEEDFORGE_WORKDIR is not set")
    config = os.environ.get("FEEDFORGE_CONFIG") or None
    return create_app(load_settings(config), Workdir.at(workdir))
