"""Who may read and write, and how much: the API keys of the endpoints and the request size
limit.

* Two separate credentials, both sent in the ``X-API-Key`` header and compared in constant
  time; a missing or wrong key gets 401:

  - ``serving.read_api_key`` guards ``GET /recommend``: a feed names items of the user's
    history (``because_item_id``, the explanation), so reading one is reading what the user
    watched; and ``GET /dashboard`` (where a browser may also send it as the HTTP Basic
    password, :mod:`feedforge.serving.routes.dashboard`);
  - ``serving.api_key`` (the write key) guards ``POST /events``.

  The write key does not grant reads, nor the read key writes: an event producer (an ingest
  job, a client's tracking) holding the write key cannot list users' histories, and a leaked
  read key cannot forge events. The two must differ. ``/health*``, ``/metrics`` and the docs
  stay open (no user data).
* An unset key leaves its endpoints open, allowed only with ``serving.environment:
  development`` (the default, with a warning at start); ``production`` refuses to start
  without both keys.
* The keys are checked by route dependencies (:data:`feedforge.serving.deps.ReadAccess`,
  :data:`~feedforge.serving.deps.WriteAccess`), which FastAPI solves before anything reads the
  body: a request without the key is answered 401 from its headers alone.
* :class:`BodySizeLimit` answers 413 to any request whose body exceeds
  ``serving.max_request_bytes``, from ``Content-Length`` before reading, or while reading a
  body sent without one, so an oversized upload is never buffered whole.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Annotated, Any

import pydantic
from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedforge.config import ServingConfig
from feedforge.errors import AuthError, ConfigError, PayloadTooLargeError

logger = logging.getLogger("feedforge.serving")

API_KEY_HEADER = "X-API-Key"
read_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ReadApiKey",
    description="serving.read_api_key: GET /recommend",
    auto_error=False,
)
write_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="WriteApiKey",
    description="serving.api_key: POST /events",
    auto_error=False,
)

_KEYS = (("api_key", "POST /events"), ("read_api_key", "GET /recommend"))


def check_security_config(serving: ServingConfig) -> None:
    """Refuse a production service without both API keys; warn about open development ones.

    Raises:
        ConfigError: ``environment`` is production and ``api_key`` or ``read_api_key`` is
            unset; or the two keys are the same.
    """
    read, write = serving.read_api_key, serving.api_key
    if read is not None and write is not None and key_matches(read, write.get_secret_value()):
        raise ConfigError(
            "serving.api_key and serving.read_api_key must differ: they are separate "
            "credentials (writing events, reading feeds)"
        )
    for field, endpoint in _KEYS:
        if getattr(serving, field) is not None:
            continue
        if serving.environment == "production":
            raise ConfigError(
                f"serving.{field} is required when serving.environment is production "
                f"(set FEEDFORGE_SERVING__{field.upper()})"
            )
        logger.warning(
            "serving.%s is not set: %s is open to anyone (development mode)", field, endpoint
        )


def key_matches(expected: pydantic.SecretStr, key: str) -> bool:
    """Whether ``key`` is the ``expected`` secret (compared in constant time)."""
    return secrets.compare_digest(key.encode(), expected.get_secret_value().encode())


def _check_key(expected: pydantic.SecretStr | None, key: str | None, name: str) -> None:
    if expected is None:
        return
    if key is None:
        raise AuthError(f"this endpoint needs serving.{name} in the {API_KEY_HEADER} header")
    if not key_matches(expected, key):
        raise AuthError("wrong API key")


async def require_read_key(
    request: Request, key: Annotated[str | None, Security(read_key_header)]
) -> None:
    """Route dependency: raise AuthError unless the request carries ``serving.read_api_key``
    (or none is configured). Async: no thread-pool hop on the feed's path."""
    _check_key(request.app.state.settings.serving.read_api_key, key, "read_api_key")


async def require_write_key(
    request: Request, key: Annotated[str | None, Security(write_key_header)]
) -> None:
    """Route dependency: raise AuthError unless the request carries ``serving.api_key`` (or
    none is configured). Solved before the body is read (see the module docs)."""
    _check_key(request.app.state.settings.serving.api_key, key, "api_key")


class BodySizeLimit:
    """ASGI middleware answering 413 to bodies over ``max_bytes`` (see the module docs)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return
        seen = 0
        started = too_large = False

        async def limited_receive() -> Message:
            # Past the limit the app is told the client left, so it stops reading.
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # whatever the app answers to the cut-off body, the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._reject(send, seen)

    def _message(self, size: int) -> str:
        return f"request body of {size}+ bytes exceeds serving.max_request_bytes = {self.max_bytes}"

    async def _reject(self, send: Send, size: int) -> None:
        error = PayloadTooLargeError(self._message(size))
        body = json.dumps(error.to_dict()).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
