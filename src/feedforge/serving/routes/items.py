"""The items resource: ``POST /items`` (add or change catalog items) and
``DELETE /items/{item_id}`` (withdraw one), served within a refresh with no publish
(:mod:`feedforge.serving.live`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from feedforge.errors import NotFoundError
from feedforge.events.item_updates import (
    MAX_ITEMS_PER_REQUEST,
    ItemUpdate,
    validate_item_updates,
)
from feedforge.events.schema import Id
from feedforge.serving.body import as_batch, one_or_many_body, partly_rejected, read_json
from feedforge.serving.deps import Service, WriteAccess
from feedforge.serving.live import known_categories, store_items
from feedforge.serving.schemas import ErrorResponse, ItemsRejected, ItemsResponse

router = APIRouter(tags=["items"])

_ITEM_BODY = one_or_many_body(ItemUpdate.model_json_schema(), MAX_ITEMS_PER_REQUEST)


async def items_payload(request: Request) -> Any:
    """The body: one item or a list, read after the key check."""
    return await read_json(request, max_items=MAX_ITEMS_PER_REQUEST, what="items")


ItemsPayload = Annotated[Any, Depends(items_payload)]


@router.post(
    "/items",
    response_model=ItemsResponse,
    dependencies=[WriteAccess],
    openapi_extra={"requestBody": _ITEM_BODY},
    responses={
        401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key"},
        413: {"model": ErrorResponse, "description": "Body over serving.max_request_bytes"},
        422: {
            "model": ItemsRejected | ErrorResponse,
            "description": "Some items were rejected (each one's index, field and reason: a "
            "missing field, a negative duration or price, an unknown category); the valid "
            "ones were stored",
        },
    },
)
def post_items(service: Service, payload: ItemsPayload) -> Any:
    """Add or change catalog items (one object or a list). A new item gets the serving
    version's content vector and can be recommended within ``serving.live_items_refresh_s``
    on every worker, without a publish; ``available: false`` withdraws an item from every
    feed at once. The items are also stored in the catalog, for the next publish. Any
    rejected item makes the answer 422, listing each one's index, field and reason; the
    valid ones are stored all the same. Needs the ``X-API-Key`` header when
    ``serving.api_key`` is set."""
    batch = as_batch(payload, MAX_ITEMS_PER_REQUEST, "items")
    current = service.versions.loaded
    good, issues = validate_item_updates(batch, known_categories(current))
    live = store_items(
        service.workdir, service.store, service.live, lambda: service.versions.loaded, good
    )
    counts = {"accepted": len(good), "rejected": len(batch) - len(good), "live_updated": live}
    if issues:
        rejected = ItemsRejected(
            **counts,
            errors=issues,
            message=f"{counts['rejected']} of {len(batch)} item(s) rejected; "
            f"{len(good)} valid one(s) stored",
        )
        return partly_rejected(rejected)
    return ItemsResponse(**counts)


@router.delete(
    "/items/{item_id}",
    response_model=ItemsResponse,
    dependencies=[WriteAccess],
    responses={
        401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key"},
        404: {"model": ErrorResponse, "description": "No such item is served or posted"},
        422: {"model": ErrorResponse, "description": "An item id that is not a valid id"},
    },
)
def delete_item(service: Service, item_id: Annotated[Id, Path()]) -> ItemsResponse:
    """Withdraw an item: it leaves every feed within ``serving.live_items_refresh_s`` and the
    catalog of the next publish."""
    state = service.versions.loaded
    known = state is not None and state.items.get(item_id) is not None
    if not known and item_id not in service.live.posted():
        raise NotFoundError(f"item {item_id!r} is not served nor posted")
    live = store_items(
        service.workdir,
        service.store,
        service.live,
        lambda: service.versions.loaded,
        [],
        withdrawn=[item_id],
    )
    return ItemsResponse(accepted=1, rejected=0, live_updated=live)
