"""Operations: ``GET /health`` (and ``/health/ready``, ``/health/live``) and ``GET /metrics``.

The health checks and the metrics render are plain ``def`` (the thread pool): a health check
pings the store over the network.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from feedforge.serving.deps import Service
from feedforge.serving.pipeline import FeedService
from feedforge.serving.schemas import HealthResponse

router = APIRouter()


def _health(service: FeedService) -> JSONResponse:
    ok, checks = service.health()
    body = HealthResponse(
        status="ok" if ok else "unavailable", version=checks.get("version"), checks=checks
    )
    return JSONResponse(status_code=200 if ok else 503, content=body.model_dump())


@router.get("/health", response_model=HealthResponse, tags=["health"])
def health(service: Service) -> JSONResponse:
    """200 when the store answers and a published version is loaded, else 503."""
    return _health(service)


@router.get("/health/ready", response_model=HealthResponse, tags=["health"])
def ready(service: Service) -> JSONResponse:
    """Readiness: same as ``/health``."""
    return _health(service)


@router.get("/metrics", tags=["monitoring"], response_class=Response)
def metrics(service: Service) -> Response:
    """Prometheus metrics: requests, latency per feed stage, feeds by strategy, users and
    candidates scored with default features, the serving version."""
    body, content_type = service.metrics.render()
    return Response(content=body, media_type=content_type)


@router.get("/health/live", tags=["health"])
async def live() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "alive"}
