"""Reading a JSON request body: after the key check, and large ones decoded off the event loop.

An endpoint that declares a ``Body`` parameter has it read and decoded by FastAPI before any
dependency runs, so before the API key is checked, and decoded with ``json.loads`` on the
event loop (a 14 MB body holds every other request for ~100 ms). ``POST /events`` reads its
body through :func:`read_json` instead, a dependency solved after the key check.

Decoding in a thread alone would not help: ``json.loads`` is C code that keeps the GIL for
the whole document. :func:`loads_yielding` decodes a top-level array one element at a time,
so the thread lets the event loop run between elements (every ``sys.getswitchinterval()``,
5 ms); a single element still decodes in one piece.

Errors are FastAPI's own, so the API answers as it would with a ``Body`` parameter: invalid
JSON is a 422 request validation error (``json_invalid``, at its position), a body that is
not UTF-8 (or nested too deep) a 400, no body a 422 (``missing``).
"""

from __future__ import annotations

import email.message
import json
import re
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from feedforge.errors import ValidationError

THREAD_DECODE_BYTES = 256 * 1024
"""Bodies at least this large are decoded on the thread pool (smaller ones decode in well under
a millisecond, less than the hop to a thread costs)."""

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's, as json.decoder skips it


def _skip(text: str, at: int) -> int:
    """The index of the first non-whitespace character of ``text`` from ``at``."""
    match = _WHITESPACE.match(text, at)
    return match.end() if match else at


def loads_yielding(data: bytes, max_items: int | None = None, what: str = "items") -> Any:
    """``json.loads(data)``, a top-level array decoded element by element (see the module
    docs). Same result, same errors (message and position) as ``json.loads``.

    Args:
        data: The document (UTF-8, -16 or -32, as ``json.loads`` detects).
        max_items: Stop with ValidationError at a top-level array longer than this.
        what: The array's elements, in that error's message.

    Raises:
        json.JSONDecodeError: not JSON.
        UnicodeDecodeError: not in a Unicode encoding.
        ValidationError: a top-level array of more than ``max_items`` elements.
    """
    text = data.decode(json.detect_encoding(data), "surrogatepass")
    end = len(text)
    at = _skip(text, 0)
    if at == end or text[at] != "[":
        return json.loads(text)
    items: list[Any] = []
    at = _skip(text, at + 1)
    if at < end and text[at] == "]":
        at += 1
    else:
        while True:
            value, at = _DECODER.raw_decode(text, at)
            items.append(value)
            if max_items is not None and len(items) > max_items:
                raise ValidationError(f"too many {what} in one request: more than {max_items}")
            at = _skip(text, at)
            if at < end and text[at] == "]":
                at += 1
                break
            if at == end or text[at] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, at)
            at = _skip(text, at + 1)
    at = _skip(text, at)
    if at != end:
        raise json.JSONDecodeError("Extra data", text, at)
    return items


def _is_json(content_type: str | None) -> bool:
    # As FastAPI: no content type, application/json or application/*+json.
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def read_json(request: Request, max_items: int | None = None, what: str = "items") -> Any:
    """The request's body, decoded as JSON (see the module docs); a body of another content
    type is returned as bytes, as FastAPI hands it to a ``Body`` parameter.

    Args:
        request: The request, its body not read yet.
        max_items: Longest top-level array accepted from a large body (ValidationError above
            it, before the rest is decoded).
        what: The array's elements, in that error's message.

    Raises:
        RequestValidationError: no body, or not JSON (422).
        HTTPException: 400, a body that is not UTF-8 or is nested too deep.
        ValidationError: a large body's top-level array is longer than ``max_items``.
    """
    body = await request.body()
    if not body:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    if not _is_json(request.headers.get("content-type")):
        return body
    try:
        if len(body) < THREAD_DECODE_BYTES:
            return json.loads(body)
        return await run_in_threadpool(loads_yielding, body, max_items, what)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error]) from exc
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


def one_or_many_body(item_schema: dict[str, Any], max_items: int) -> dict[str, Any]:
    """The OpenAPI request body of a route taking one object or a list of at most
    ``max_items`` (FastAPI cannot say that from a signature, so it is written by hand)."""
    many = {"type": "array", "items": item_schema, "maxItems": max_items}
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [item_schema, many]}}},
    }


def as_batch(payload: Any, max_items: int, what: str) -> list[Any]:
    """A body of one object or a list, as a list.

    Raises:
        ValidationError: more than ``max_items`` elements.
    """
    batch = payload if isinstance(payload, list) else [payload]
    if len(batch) > max_items:
        raise ValidationError(f"too many {what} in one request: {len(batch)} > {max_items}")
    return batch


def partly_rejected(answer: BaseModel) -> JSONResponse:
    """The 422 of a batch some of whose elements were rejected (the valid ones stored)."""
    return JSONResponse(status_code=422, content=json.loads(answer.model_dump_json()))
