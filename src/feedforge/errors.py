"""The one exception tree of feedforge.

Every error raised on purpose by feedforge derives from :class:`FeedforgeError`. Each class
knows the HTTP status it maps to, so the serving layer turns any of them into a response with
one handler, and the CLI prints its message instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe for logs and error messages)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparseable redis url>"


class FeedforgeError(Exception):
    """Base class of every feedforge error.

    Attributes:
        http_status: The HTTP status code the serving layer answers with.
        message: The whole message, for the operator (the CLI, the service's log).
        client_message: What an API client is told: the message without what only the
            server should know, such as its file paths (the message itself by default).
    """

    http_status: int = 500

    def __init__(self, message: str, *, client_message: str | None = None, **details: Any):
        super().__init__(message)
        self.message = message
        self.client_message = message if client_message is None else client_message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The error as an API client sees it (the API's error handler answers with it)."""
        return {"error": type(self).__name__, "message": self.client_message, **self.details}


class ConfigError(FeedforgeError):
    """The configuration file or environment holds an invalid or unknown setting."""


class ValidationError(FeedforgeError):
    """Input data (an event, a request, a file) is malformed."""

    http_status = 422


class AuthError(FeedforgeError):
    """A request lacks the API key a protected endpoint needs, or carries a wrong one."""

    http_status = 401


class PayloadTooLargeError(FeedforgeError):
    """A request body exceeds ``serving.max_request_bytes``."""

    http_status = 413


class DataError(FeedforgeError):
    """Data is well-formed but unusable for the step (e.g. an empty split)."""


class ArtifactError(FeedforgeError):
    """An artifact directory is missing, corrupt or of an unknown schema version.

    The message always names the path and the command that (re)builds it; an API client is
    told the problem and the command, not the server's path.
    """

    def __init__(self, path: Path | str, problem: str, build_command: str) -> None:
        message = f"{problem}: {path}. Build it with `{build_command}`."
        client = f"{problem}. Build it with `{build_command}`."
        super().__init__(message, client_message=client, build_command=build_command)
        self.path = Path(path)
        self.build_command = build_command


class EventLogError(FeedforgeError):
    """The event log could not be written (a disk that is full, read-only, or not writable by
    the service's user). The message names the directory, the reason and what was kept; the
    client's message leaves the server's path out (``reason`` must hold none)."""

    http_status = 503

    def __init__(self, path: Path | str, reason: str, consequence: str, **details: Any) -> None:
        message = f"cannot write the event log at {path} ({reason}); {consequence}"
        client = f"cannot write the event log ({reason}); {consequence}"
        super().__init__(message, client_message=client, **details)
        self.path = Path(path)


class EventStreamError(FeedforgeError):
    """The shared event stream (``events.stream: redis``) did not take or give events: the
    server is unreachable, or it does not keep writes durably. Nothing was acknowledged."""

    http_status = 503


class NotFittedError(FeedforgeError):
    """A model was used before ``fit`` or ``load``."""


class StoreError(FeedforgeError):
    """The online store failed an operation."""

    http_status = 503


class StoreUnavailableError(StoreError):
    """The online store cannot be reached (server down, connection refused, timeout)."""

    http_status = 503


class NotPublishedError(StoreError):
    """The online store has no published version yet."""

    http_status = 503


class StoreConflictError(StoreError):
    """A compare-and-set write lost to a concurrent one (read again and retry)."""

    http_status = 409


class LoopBusyError(FeedforgeError):
    """Another process holds the continuous-training loop's lock: a cycle is running."""

    http_status = 409


class NotFoundError(FeedforgeError):
    """The resource a request names does not exist (e.g. an unknown item)."""

    http_status = 404
