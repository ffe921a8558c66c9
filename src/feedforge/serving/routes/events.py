"""The events resource: ``POST /events``.

A plain ``def``: FastAPI runs it on the thread pool, since it waits on the disk (the event
log fsyncs) and on the store. Its body is no ``Body`` parameter, which FastAPI would read and
decode on the event loop before checking the key, but :func:`events_payload`, solved after
the key check (``WriteAccess``) and decoding large bodies off the loop
(:mod:`feedforge.serving.body`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request

from feedforge.events.schema import Event, validate_events
from feedforge.serving.body import as_batch, one_or_many_body, partly_rejected, read_json
from feedforge.serving.deps import Service, WriteAccess
from feedforge.serving.schemas import ErrorResponse, EventsRejected, IngestResponse

MAX_EVENTS_PER_REQUEST = 10_000

router = APIRouter(tags=["events"])

# The Event schema is added to the document by install_event_schema.
_EVENT_BODY = one_or_many_body({"$ref": "#/components/schemas/Event"}, MAX_EVENTS_PER_REQUEST)


async def events_payload(request: Request) -> Any:
    """The body: one event or a list, read after the key check (see the module docs)."""
    return await read_json(request, max_items=MAX_EVENTS_PER_REQUEST, what="events")


EventsPayload = Annotated[Any, Depends(events_payload)]


@router.post(
    "/events",
    response_model=IngestResponse,
    dependencies=[WriteAccess],
    openapi_extra={"requestBody": _EVENT_BODY},
    responses={
        400: {"model": ErrorResponse, "description": "A body that cannot be decoded (not UTF-8)"},
        401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key"},
        413: {"model": ErrorResponse, "description": "Body over serving.max_request_bytes"},
        422: {
            "model": EventsRejected | ErrorResponse,
            "description": "Some events were rejected (EventsRejected: each one's index, field "
            "and reason; the valid ones were stored), or the body is no JSON event or list of "
            "at most 10,000 events (ErrorResponse)",
        },
    },
)
def post_events(service: Service, payload: EventsPayload) -> Any:
    """Validate events (one object or a list), store the good ones durably, update the
    users' live histories. Any rejected event makes the answer 422, listing each rejected
    event's index, field and reason; the good ones are stored all the same. Needs the
    ``X-API-Key`` header when ``serving.api_key`` is set."""
    batch = as_batch(payload, MAX_EVENTS_PER_REQUEST, "events")
    serving = service.settings.serving
    good, issues = validate_events(
        batch,
        max_future_skew_s=serving.max_future_skew_s,
        max_past_age_days=serving.max_past_age_days,
    )
    result, history_updated = service.ingest(good)
    counts = {
        "accepted": result.written,
        "duplicates": result.duplicates,
        "rejected": len(batch) - len(good),
        "history_updated": history_updated,
    }
    if issues:
        rejected = EventsRejected(
            **counts,
            errors=issues,
            message=f"{counts['rejected']} of {len(batch)} event(s) rejected; "
            f"{len(good)} valid one(s) stored",
        )
        return partly_rejected(rejected)
    return IngestResponse(**counts)


def install_event_schema(app: FastAPI) -> None:
    """Add the Event schema to ``app``'s OpenAPI document, for :data:`_EVENT_BODY`.

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
