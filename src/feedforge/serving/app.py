"""The stateless FastAPI feed service: the app factory.

Endpoints, one router per resource (:mod:`feedforge.serving.routes`): ``GET /recommend``
(feed), ``POST /events`` (events), ``GET /health`` (plus ``/health/live`` and
``/health/ready``) and ``GET /metrics`` (Prometheus, :mod:`feedforge.monitoring.metrics`)
(ops); OpenAPI at ``/docs``. Heavy objects (the store client, the service) are created in the
lifespan, never per request; endpoints get them through :mod:`feedforge.serving.deps`. Every
:class:`~feedforge.errors.FeedforgeError` is turned into a JSON response with its HTTP status
by the one handler below.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from feedforge import __version__
from feedforge.config import Settings, load_settings
from feedforge.errors import FeedforgeError
from feedforge.serving.middleware import RequestTiming
from feedforge.serving.pipeline import FeedService
from feedforge.serving.routes import events, feed, ops
from feedforge.serving.security import BodySizeLimit, check_security_config
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir


def create_app(settings: Settings, workdir: Workdir) -> FastAPI:
    """Build the app for a work directory; the store opens when the app starts.

    Raises:
        feedforge.errors.ConfigError: the security settings are refused (production without
            an API key).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings.store, workdir.store_path)
        app.state.service = service = FeedService(settings, workdir, store)
        # uvicorn opens a worker's socket after the lifespan start-up, so no request waits
        # on the version load.
        service.versions.preload()
        try:
            yield
        finally:
            service.close()
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

    for router in (feed.router, events.router, ops.router):
        app.include_router(router)
    events.install_event_schema(app)
    return app


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
