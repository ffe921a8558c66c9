"""The request dependencies every router shares, as ``Annotated`` aliases.

The heavy objects are created once, in the app's lifespan (:mod:`feedforge.serving.app`), and
kept on ``app.state``; a dependency only hands them to an endpoint.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security

from feedforge.serving.pipeline import FeedService
from feedforge.serving.security import require_read_key, require_write_key


async def get_service(request: Request) -> FeedService:
    """The app's :class:`~feedforge.serving.pipeline.FeedService` (made in the lifespan)."""
    # async: FastAPI runs a sync dependency on the thread pool, a hop per request.
    service: FeedService = request.app.state.service
    return service


Service = Annotated[FeedService, Depends(get_service)]
"""The feed service of the app."""

ReadAccess = Security(require_read_key)
"""Route dependency of the read endpoints (``dependencies=[ReadAccess]``): 401 without
``serving.read_api_key`` in ``X-API-Key`` (:mod:`feedforge.serving.security`)."""

WriteAccess = Security(require_write_key)
"""Route dependency of the write endpoints (``dependencies=[WriteAccess]``): 401 without
``serving.api_key`` in ``X-API-Key``. A route's dependencies are solved before its other
dependencies, so before :func:`feedforge.serving.body.read_json` reads the body (a ``Body``
parameter would be read by FastAPI before any dependency: write routes take none)."""
