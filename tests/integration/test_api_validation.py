"""The API's input validation (issue 14): strict types, bounds, the accepted past, one error
shape for every 4xx, documented statuses, no large echo of input, a bounded request header."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.events.log import EventLog
from feedforge.serving.app import create_app
from feedforge.workdir import Workdir

from .conftest import ServerProcess

pytestmark = pytest.mark.integration

EventFactory = Callable[..., dict[str, Any]]


def stored_ids(workdir: Workdir, event_ids: list[str]) -> list[str]:
    frame = (
        EventLog(workdir.events_dir).scan().filter(pl.col("event_id").is_in(event_ids)).collect()
    )
    return sorted(frame.get_column("event_id").to_list())


def assert_error_shape(body: dict[str, Any]) -> None:
    """The one shape of every 4xx body: ``error`` and ``message``, and ``errors`` when fields
    are named (never FastAPI's ``detail``)."""
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    assert "detail" not in body, body
    for issue in body.get("errors", []):
        assert isinstance(issue["field"], str) and isinstance(issue["reason"], str), issue


def _days_ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


LENIENT: list[tuple[dict[str, Any], str]] = [
    ({"timestamp": 1_767_225_600}, "timestamp"),
    ({"timestamp": "1767225600"}, "timestamp"),
    ({"timestamp": False}, "timestamp"),
    ({"watch_seconds": "120"}, "watch_seconds"),
    ({"watch_seconds": False}, "watch_seconds"),
    ({"watch_seconds": 1e308}, "watch_seconds"),
    ({"event_type": "purchase", "watch_seconds": None, "price": 1e308}, "price"),
    ({"event_type": "rating", "watch_seconds": None, "value": 1e308}, "value"),
    ({"item_id": "i000001\nX-Injected: 1"}, "item_id"),
    ({"event_id": "e\x00-nul"}, "event_id"),
    ({"context": {"position": "3"}}, "context.position"),
    ({"timestamp": "1000-01-01T00:00:00Z"}, "timestamp"),
    ({"timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
]


def test_lenient_values_are_rejected_and_good_events_still_stored(
    client: TestClient, published_workdir: Workdir, new_user_id: str, make_event: EventFactory
) -> None:
    good = [make_event(user_id=new_user_id), make_event(user_id=new_user_id, watch_seconds=60)]
    bad = [make_event(**{"user_id": new_user_id, **fields}) for fields, _ in LENIENT]
    response = client.post("/events", json=[good[0], *bad, good[1]])
    assert response.status_code == 422, response.text
    body = response.json()
    assert_error_shape(body)
    assert body["error"] == "ValidationError"
    assert (body["accepted"], body["rejected"]) == (2, len(bad))
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (i + 1, field) for i, (_, field) in enumerate(LENIENT)
    ]
    ids = [e["event_id"] for e in (*good, *bad) if isinstance(e.get("event_id"), str)]
    assert stored_ids(published_workdir, ids) == sorted(e["event_id"] for e in good)


def test_the_accepted_past_is_bounded_by_config(
    published_workdir: Workdir, small_settings: Settings, new_user_id: str, make_event: EventFactory
) -> None:
    assert small_settings.serving.max_past_age_days == 30
    serving = {**small_settings.serving.model_dump(), "max_past_age_days": 2}
    settings = Settings(**{**small_settings.model_dump(), "serving": serving})
    recent = make_event(user_id=new_user_id, timestamp=_days_ago(1.5))
    old = make_event(user_id=new_user_id, timestamp=_days_ago(2.5))
    with TestClient(create_app(settings, published_workdir)) as client:
        response = client.post("/events", json=[recent, old])
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["accepted"] == 1
    [issue] = body["errors"]
    assert (issue["index"], issue["field"]) == (1, "timestamp")
    assert "serving.max_past_age_days" in issue["reason"] and "2 days" in issue["reason"]


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"user_id": "u000000", "k": 0}, "k"),
        ({"user_id": "u000000", "k": "ten"}, "k"),
        ({"k": 10}, "user_id"),
        ({"user_id": "u\n1"}, "user_id"),
        ({"user_id": "u000000", "device": "tv\r\nSet-Cookie: x"}, "device"),
    ],
    ids=["k=0", "k-not-int", "no-user_id", "newline-user_id", "newline-device"],
)
def test_recommend_query_errors_have_the_one_error_shape(
    client: TestClient, params: dict[str, Any], bad: str
) -> None:
    response = client.get("/recommend", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert_error_shape(body)
    assert body["error"] == "ValidationError"
    assert [e["field"] for e in body["errors"]] == [bad]


def test_bodies_that_are_not_json_get_the_error_shape(client: TestClient) -> None:
    broken = client.post(
        "/events", content=b'{"event_id": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422, broken.text
    assert_error_shape(broken.json())
    assert [e["field"] for e in broken.json()["errors"]] == ["body"]

    not_utf8 = client.post(
        "/events", content=b'{"event_id": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    assert not_utf8.status_code == 400, not_utf8.text
    assert_error_shape(not_utf8.json())

    missing = client.post("/events")
    assert missing.status_code == 422, missing.text
    assert_error_shape(missing.json())

    unknown = client.get("/no-such-endpoint")
    assert unknown.status_code == 404
    assert_error_shape(unknown.json())
    wrong_method = client.delete("/events")
    assert wrong_method.status_code == 405
    assert_error_shape(wrong_method.json())


def test_errors_echo_no_large_input(client: TestClient, make_event: EventFactory) -> None:
    huge = "x" * 60_000
    for response in (
        client.get("/recommend", params={"user_id": huge}),
        client.get("/recommend", params={"user_id": "u1", "k": huge}),
        client.post("/events", json={**make_event(), huge: huge}),
        client.post("/events", json=make_event(user_id=huge, item_id=huge, timestamp=huge)),
        client.post("/events", json=[huge]),
    ):
        assert response.status_code == 422, response.text[:300]
        assert len(response.content) < 4096, (len(response.content), response.text[:300])
        assert_error_shape(response.json())


def test_openapi_documents_the_error_statuses_and_bounds(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    events = spec["paths"]["/events"]["post"]["responses"]
    assert {"400", "401", "413", "422"} <= set(events)
    recommend = spec["paths"]["/recommend"]["get"]["responses"]
    assert "422" in recommend
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's undocumented {"detail": ...}
    error = recommend["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    assert {"error", "message"} <= set(schemas["ErrorResponse"]["required"])
    event = schemas["Event"]["properties"]
    watch = next(s for s in event["watch_seconds"]["anyOf"] if s.get("type") == "number")
    assert watch["maximum"] == 7 * 24 * 3600
    assert "pattern" in event["user_id"] and event["user_id"]["maxLength"] == 128


# -- the request header bound, against a real `feedforge serve` --------------------------------


def _raw_request(port: int, header_bytes: int) -> bytes:
    """Send GET /health/live with one header of ``header_bytes``; returns the first bytes of
    the answer (empty when the server cut the connection instead)."""
    request = (
        b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + b"X-Padding: "
        + b"a" * header_bytes
        + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


def test_serve_bounds_the_request_header_size(
    published_workdir: Workdir, small_config: Path
) -> None:
    server = ServerProcess(published_workdir, small_config).start()
    try:
        assert _raw_request(server.port, 8 * 1024).startswith(b"HTTP/1.1 200")
        # Over one socket read (256 KiB), so h11 sees the header block incomplete and over
        # serving.max_header_bytes (32 KiB).
        for size in (1024 * 1024, 5 * 1024 * 1024):
            answer = _raw_request(server.port, size)
            assert not answer.startswith(b"HTTP/1.1 200"), f"a {size}-byte header was accepted"
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
        # The server is still there for the next client.
        assert _raw_request(server.port, 100).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()
