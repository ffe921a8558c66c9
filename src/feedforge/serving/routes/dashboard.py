"""The live dashboard: ``GET /dashboard`` (the page), ``GET /dashboard/data`` (the JSON it
polls) and ``GET /dashboard/assets/{name}`` (its script, styles and the Vega-Lite runtime).

The page and its assets ship in the package (``feedforge/serving/dashboard/``) and the
runtime comes from :mod:`feedforge.vega`, so nothing loads from a CDN and no build step
exists. Everything it shows comes from the service's own metrics
(:mod:`feedforge.monitoring.dashboard`: the request rate, latency percentiles against the
budget, error and degraded rates of each sampled interval; KPIs per version and variant,
experiment feeds, drift and freshness), plus the published versions from the store.

The page and its data need the read key when one is set (``serving.read_api_key``): in the
``X-API-Key`` header, or as the password of HTTP Basic authentication (any user name), which
a browser asks for and then sends with each poll. The assets hold no data and stay open.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.exceptions import HTTPException

from feedforge.errors import FeedforgeError, NotFoundError
from feedforge.serving.deps import Service
from feedforge.serving.pipeline import FeedService
from feedforge.serving.security import key_matches, read_key_header
from feedforge.vega import javascript_bundle

router = APIRouter(tags=["dashboard"])
basic = HTTPBasic(auto_error=False, realm="feedforge dashboard")
_ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)
"""The page may load only its own assets and poll its own data (Vega evaluates its
expressions with ``Function``, hence ``unsafe-eval``)."""


async def require_dashboard_key(
    request: Request,
    key: Annotated[str | None, Security(read_key_header)],
    credentials: Annotated[HTTPBasicCredentials | None, Security(basic)],
) -> None:
    """Route dependency: the read key in ``X-API-Key`` or as the Basic password (or none is
    configured); else 401 asking the browser for it."""
    expected = request.app.state.settings.serving.read_api_key
    if expected is None:
        return
    offered = key if key is not None else (credentials.password if credentials else None)
    if offered is not None and key_matches(expected, offered):
        return
    raise HTTPException(
        status_code=401,
        detail="the dashboard needs serving.read_api_key (X-API-Key header, or as the "
        "password of HTTP Basic authentication)",
        headers={"WWW-Authenticate": 'Basic realm="feedforge dashboard"'},
    )


DashboardAccess = Security(require_dashboard_key)


def _file(name: str) -> str:
    return resources.files("feedforge.serving").joinpath("dashboard", name).read_text("utf-8")


@router.get("/dashboard", response_class=HTMLResponse, dependencies=[DashboardAccess])
def dashboard() -> HTMLResponse:
    """The live dashboard page (polls ``/dashboard/data``)."""
    return HTMLResponse(_file("index.html"), headers={"Content-Security-Policy": CSP})


@router.get("/dashboard/assets/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    """The page's script and styles, and the Vega-Lite runtime (``vega.js``)."""
    if name == "vega.js":
        body = javascript_bundle()
        media = "text/javascript"
    elif name in _ASSETS:
        body, media = _file(name), _ASSETS[name]
    else:
        raise NotFoundError(f"no dashboard asset {name!r}")
    return Response(body, media_type=media, headers={"Cache-Control": "max-age=3600"})


@router.get("/dashboard/data", dependencies=[DashboardAccess])
def data(service: Service) -> JSONResponse:
    """The dashboard's numbers now (see the module docs)."""
    return JSONResponse(dashboard_data(service), headers={"Cache-Control": "no-store"})


def dashboard_data(service: FeedService) -> dict[str, Any]:
    """What ``GET /dashboard/data`` answers: the live series, totals, gauges and versions."""
    settings = service.settings
    snapshot = service.monitor.read_metrics()
    service.monitor.dashboard.add(snapshot)  # kept if the last sample is old enough
    loaded = service.versions.loaded
    return {
        "at": snapshot.at,
        "worker": os.getpid(),
        "serving_version": loaded.version if loaded is not None else None,
        "budget_ms": settings.serving.latency_budget_ms,
        "latency_slo": settings.monitoring.latency_slo,
        "max_error_ratio": settings.monitoring.max_error_ratio,
        "max_degraded_ratio": settings.monitoring.max_degraded_ratio,
        "refresh_s": settings.monitoring.dashboard_refresh_s,
        "totals": {
            "requests": snapshot.requests,
            "errors": snapshot.errors,
            "feeds": snapshot.feeds,
            "degraded": snapshot.degraded,
            "over_budget": snapshot.over_budget,
        },
        "series": service.monitor.dashboard.series(snapshot),
        "served_versions": snapshot.versions,
        "kpis": snapshot.kpis,
        "experiments": snapshot.experiments,
        "drift": snapshot.drift,
        "freshness": snapshot.freshness,
        **_versions(service),
    }


def _versions(service: FeedService) -> dict[str, Any]:
    """The published versions (newest first) with their metadata, from the store."""
    store = service.store
    try:
        current = store.current_version()
        versions = []
        for version in sorted(store.versions(), reverse=True):
            meta = store.get_meta(version) or {}
            versions.append(
                {
                    "version": version,
                    "current": version == current,
                    "published_at": meta.get("published_at"),
                    "dataset_version": meta.get("dataset_version"),
                    "retrieval_model": meta.get("retrieval_model"),
                    "ranker": meta.get("ranker"),
                    "retired_at": meta.get("retired_at"),
                }
            )
    except FeedforgeError as exc:
        return {"versions": [], "store": f"unavailable: {exc.message}"}
    return {"versions": versions, "store": "ok"}
