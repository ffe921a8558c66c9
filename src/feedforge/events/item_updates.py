"""Catalog items posted to the service (``POST /items``): their schema and validation.

:func:`validate_item_updates` checks a batch item by item, like the events' validation: a bad
item is reported with its index, the field and the reason (missing fields, a negative
duration or price, a category the serving version does not know), and never keeps the good
items of the batch from being stored.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import polars as pl
import pydantic
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from feedforge.events.schema import EventIssue, Id, Label, issue_reason, quote

MAX_ITEMS_PER_REQUEST = 10_000


class ItemUpdate(BaseModel):
    """An item added or changed (or withdrawn with ``available: false``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "item_id": "i900001",
                    "title": "A new documentary",
                    "categories": ["documentary"],
                    "duration_seconds": 2700,
                    "price": 0.0,
                }
            ]
        },
    )

    item_id: Id
    title: str = Field("", max_length=1_000)
    categories: list[Label] = Field(
        min_length=1, max_length=32, description="The first is the primary category"
    )
    duration_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    price: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    created_at: AwareDatetime | None = Field(None, description="Default: the time it is posted")
    available: bool = Field(True, description="false: withdrawn, never served from now on")


_ADAPTER = pydantic.TypeAdapter(ItemUpdate)


def validate_item_updates(
    raw: Sequence[Any], known_categories: Collection[str] | None
) -> tuple[list[ItemUpdate], list[EventIssue]]:
    """Validate a batch of posted items.

    Args:
        raw: The decoded JSON items.
        known_categories: The categories the serving version knows (None: any).

    Returns:
        The valid items, and one issue per problem of a rejected item (its index, the field
        and the reason).
    """
    good: list[ItemUpdate] = []
    issues: list[EventIssue] = []
    for index, body in enumerate(raw):
        problems: list[EventIssue] = []
        item: ItemUpdate | None = None
        try:
            item = _ADAPTER.validate_python(body)
        except pydantic.ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                loc = ".".join(str(p) for p in err["loc"]) or "<item>"
                problems.append(EventIssue(index=index, field=quote(loc), reason=issue_reason(err)))
        withdrawn = isinstance(body, dict) and body.get("available") is False
        categories = body.get("categories") if isinstance(body, dict) else None
        if known_categories is not None and not withdrawn and isinstance(categories, list):
            for position, category in enumerate(categories):
                if isinstance(category, str) and category not in known_categories:
                    problems.append(
                        EventIssue(
                            index=index,
                            field=f"categories.{position}",
                            reason=f"unknown category {quote(category)!r}; the serving "
                            f"version knows {len(known_categories)}",
                        )
                    )
        if problems or item is None:
            issues += problems
            continue
        good.append(item)
    return good, issues


def item_update_frame(items: Sequence[ItemUpdate], now: datetime | None = None) -> pl.DataFrame:
    """The catalog's item-update rows of valid items (``created_at`` and ``updated_at``
    default to ``now``)."""
    now = now or datetime.now(UTC)
    return pl.DataFrame(
        {
            "item_id": [i.item_id for i in items],
            "title": [i.title for i in items],
            "categories": [list(i.categories) for i in items],
            "created_at": [(i.created_at or now).astimezone(UTC) for i in items],
            "duration_seconds": [i.duration_seconds for i in items],
            "price": [i.price for i in items],
            "available": [i.available for i in items],
            "updated_at": [now] * len(items),
        },
        schema={
            "item_id": pl.String,
            "title": pl.String,
            "categories": pl.List(pl.String),
            "created_at": pl.Datetime("us", "UTC"),
            "duration_seconds": pl.Float64,
            "price": pl.Float64,
            "available": pl.Boolean,
            "updated_at": pl.Datetime("us", "UTC"),
        },
    )
