"""Request timing: per-route counts and latency, a ``Server-Timing`` header, budget warnings."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("feedforge.serving")


class RequestTiming:
    """Pure ASGI middleware: per-route request counts and latency (``/metrics``), requests
    over the latency budget (``feedforge_requests_over_budget_total``, the latency SLO), a
    ``Server-Timing`` header on every answer, and a warning for feeds over the latency
    budget (``serving.latency_budget_ms``, step 1 "clarify": the budget is config).

    Timed from the request's arrival to the start of its answer. Pure ASGI rather than
    Starlette's ``BaseHTTPMiddleware``, which costs a task group and memory streams per
    request.
    """

    def __init__(self, app: ASGIApp, budget_ms: float) -> None:
        self.app = app
        self.budget_ms = budget_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = time.perf_counter() - started
                headers = list(message.get("headers") or [])
                headers.append((b"server-timing", f"app;dur={elapsed * 1e3:.2f}".encode()))
                message = {**message, "headers": headers}
                self._observe(scope, int(message["status"]), elapsed)
            await send(message)

        await self.app(scope, receive, timed_send)

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        app = scope.get("app")
        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:
            # By route template (bounded label values), not by raw path.
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            metrics = service.metrics
            metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            metrics.request_seconds.labels(endpoint=endpoint).observe(elapsed)
            if elapsed * 1e3 > self.budget_ms:
                metrics.over_budget.labels(endpoint=endpoint).inc()
        elapsed_ms = elapsed * 1e3
        if elapsed_ms > self.budget_ms and scope.get("path") == "/recommend":
            logger.warning(
                "latency budget exceeded: /recommend took %.1f ms > %.1f ms",
                elapsed_ms,
                self.budget_ms,
            )
