"""The events resource: ``POST /events``.

A plain ``def``: FastAPI runs it on the thread pool, since it waits on the disk (the event
log fsyncs) and on the store.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Request
from fastapi.responses import JSONResponse

from feedforge.errors import ValidationError
from feedforge.events.schema import Event, validate_events
from feedforge.serving.deps import ApiKey, Service
from feedforge.serving.schemas import IngestResponse
from feedforge.serving.security import require_api_key

MAX_EVENTS_PER_REQUEST = 10_000

router = APIRouter(tags=["events"])

# The body is one event or a list of them; FastAPI cannot say that from a signature, so the
# schema is written by hand (and the Event schema added to the document, install_event_schema).
_EVENT_BODY_SCHEMA = {
    "oneOf": [
        {"$ref": "#/components/schemas/Event"},
        {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Event"},
            "maxItems": MAX_EVENTS_PER_REQUEST,
        },
    ]
}


@router.post(
    "/events",
    response_model=IngestResponse,
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
    api_key: ApiKey = None,
) -> Any:
    """Validate events (one object or a list), store the good ones durably, update the
    users' live histories. Any rejected event makes the answer 422, listing each rejected
    event's index, field and reason; the good ones are stored all the same. Needs the
    ``X-API-Key`` header when ``serving.api_key`` is set."""
    # Checked here, after the body parsed, not in a dependency: a request without a body
    # answers 422 whatever its key, as it always has.
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


def install_event_schema(app: FastAPI) -> None:
    """Add the Event schema to ``app``'s OpenAPI document, for :data:`_EVENT_BODY_SCHEMA`.

    Args:
        app: The app the events router is included in.
    """
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
