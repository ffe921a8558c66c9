"""Who may write, and how much: the API key of the write endpoints and the request size limit.

* ``serving.api_key`` set: ``POST /events`` needs it in the ``X-API-Key`` header (compared in
  constant time); a missing or wrong key gets 401. Unset: allowed only with
  ``serving.environment: development`` (the default, with a warning at start);
  ``production`` refuses to start without a key.
* :class:`BodySizeLimit` answers 413 to any request whose body exceeds
  ``serving.max_request_bytes``, from ``Content-Length`` before reading, or while reading a
  body sent without one, so an oversized upload is never buffered whole.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from fastapi import Request
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedforge.config import ServingConfig
from feedforge.errors import AuthError, ConfigError, PayloadTooLargeError

logger = logging.getLogger("feedforge.serving")

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)


def check_security_config(serving: ServingConfig) -> None:
    """Refuse a production service without an API key; warn about an open development one.

    Raises:
        ConfigError: ``environment`` is production and ``api_key`` is unset.
    """
    if serving.api_key is not None:
        return
    if serving.environment == "production":
        raise ConfigError(
            "serving.api_key is required when serving.environment is production "
            "(set FEEDFORGE_SERVING__API_KEY)"
        )
    logger.warning("serving.api_key is not set: POST /events is open to anyone (development mode)")


def require_api_key(request: Request, key: str | None) -> None:
    """Raise AuthError unless ``key`` is the configured API key (or none is configured)."""
    expected = request.app.state.settings.serving.api_key
    if expected is None:
        return
    if key is None:
        raise AuthError(f"this endpoint needs the API key in the {API_KEY_HEADER} header")
    if not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise AuthError("wrong API key")


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
