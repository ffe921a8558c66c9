"""The request dependencies every router shares, as ``Annotated`` aliases.

The heavy objects are created once, in the app's lifespan (:mod:`feedforge.serving.app`), and
kept on ``app.state``; a dependency only hands them to an endpoint.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security

from feedforge.serving.pipeline import FeedService
from feedforge.serving.security import api_key_header


async def get_service(request: Request) -> FeedService:
    """The app's :class:`~feedforge.serving.pipeline.FeedService` (made in the lifespan)."""
    # async: FastAPI runs a sync dependency on the thread pool, a hop per request.
    service: FeedService = request.app.state.service
    return service


Service = Annotated[FeedService, Depends(get_service)]
"""The feed service of the app."""

ApiKey = Annotated[str | None, Security(api_key_header)]
"""The request's ``X-API-Key`` header (None when absent), documented as the write endpoints'
security scheme; :func:`~feedforge.serving.security.require_api_key` checks it."""
