"""Who may read feeds and write events (issue 14, faults 3 and 4).

* ``GET /recommend`` names items of the user's history (``because_item_id``, the explanation),
  so with ``serving.read_api_key`` set it needs that key; the write key does not grant reads.
* ``POST /events`` without the write key is answered 401 from its headers, before the body is
  read; a large authorized body is parsed off the event loop.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.errors import ConfigError
from feedforge.serving.app import create_app
from feedforge.serving.body import THREAD_DECODE_BYTES
from feedforge.workdir import Workdir

from .conftest import ServerProcess

pytestmark = pytest.mark.integration

WRITE_KEY = "w" * 32
READ_KEY = "r" * 32


def with_serving(settings: Settings, **serving: Any) -> Settings:
    return Settings(
        **{**settings.model_dump(), "serving": {**settings.serving.model_dump(), **serving}}
    )


@pytest.fixture(scope="module")
def keyed(published_workdir: Workdir, small_settings: Settings) -> Iterator[TestClient]:
    """A client on a service with both keys set (development mode)."""
    settings = with_serving(small_settings, api_key=WRITE_KEY, read_api_key=READ_KEY)
    with TestClient(create_app(settings, published_workdir)) as client:
        yield client


# -- fault 3: reads need the read key ---------------------------------------------------------


def test_recommend_needs_the_read_key_when_one_is_set(keyed: TestClient, known_user: str) -> None:
    params = {"user_id": known_user, "k": 5}
    missing = keyed.get("/recommend", params=params)
    assert missing.status_code == 401, missing.text
    assert missing.json()["error"] == "AuthError"
    assert known_user not in missing.text and "because" not in missing.text
    wrong = keyed.get("/recommend", params=params, headers={"X-API-Key": "x" * 32})
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["message"]
    # Separate credentials: the write key does not read histories.
    write = keyed.get("/recommend", params=params, headers={"X-API-Key": WRITE_KEY})
    assert write.status_code == 401, write.text
    # An invalid request without the key is refused before its parameters are looked at.
    assert keyed.get("/recommend", params={"k": 0}).status_code == 401

    ok = keyed.get("/recommend", params=params, headers={"X-API-Key": READ_KEY})
    assert ok.status_code == 200, ok.text
    items = ok.json()["items"]
    assert len(items) == 5
    # Explanations stay, behind the key.
    assert any(item["because_item_id"] for item in items), items
    assert any("from your history" in item["explanation"] for item in items), items


def test_the_read_key_does_not_grant_writes(keyed: TestClient, new_user_id: str) -> None:
    event = {
        "event_id": f"auth-{new_user_id}",
        "timestamp": "2026-01-01T00:00:00Z",
        "user_id": new_user_id,
        "item_id": "i000001",
        "event_type": "click",
    }
    response = keyed.post("/events", json=event, headers={"X-API-Key": READ_KEY})
    assert response.status_code == 401, response.text


def test_health_metrics_and_docs_stay_open(keyed: TestClient) -> None:
    for path in ("/health", "/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    spec = keyed.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {"ReadApiKey", "WriteApiKey", "HTTPBasic"} == set(schemes)
    assert {s["name"] for s in schemes.values() if s["type"] == "apiKey"} == {"X-API-Key"}
    # The dashboard takes the read key in the header, or as a browser's Basic password.
    dashboard = spec["paths"]["/dashboard/data"]["get"]["security"]
    assert dashboard == [{"ReadApiKey": []}, {"HTTPBasic": []}]
    assert spec["paths"]["/recommend"]["get"]["security"] == [{"ReadApiKey": []}]
    assert spec["paths"]["/events"]["post"]["security"] == [{"WriteApiKey": []}]
    assert "401" in spec["paths"]["/recommend"]["get"]["responses"]


def test_development_without_a_read_key_leaves_reads_open_with_a_warning(
    published_workdir: Workdir,
    small_settings: Settings,
    known_user: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = with_serving(small_settings, api_key=WRITE_KEY)
    with caplog.at_level(logging.WARNING, logger="feedforge.serving"):
        app = create_app(settings, published_workdir)
    assert any("read_api_key is not set" in r.getMessage() for r in caplog.records)
    with TestClient(app) as client:
        assert client.get("/recommend", params={"user_id": known_user}).status_code == 200


@pytest.mark.parametrize(
    ("keys", "missing"),
    [
        ({}, r"serving\.api_key is required"),
        ({"api_key": WRITE_KEY}, r"serving\.read_api_key is required"),
        ({"read_api_key": READ_KEY}, r"serving\.api_key is required"),
    ],
    ids=["no-key", "write-key-only", "read-key-only"],
)
def test_production_refuses_to_start_without_both_keys(
    published_workdir: Workdir, small_settings: Settings, keys: dict[str, str], missing: str
) -> None:
    settings = with_serving(small_settings, environment="production", **keys)
    with pytest.raises(ConfigError, match=missing):
        create_app(settings, published_workdir)


def test_production_starts_with_both_keys_and_refuses_one_key_for_both(
    published_workdir: Workdir, small_settings: Settings
) -> None:
    both = with_serving(
        small_settings, environment="production", api_key=WRITE_KEY, read_api_key=READ_KEY
    )
    create_app(both, published_workdir)
    same = with_serving(small_settings, api_key=WRITE_KEY, read_api_key=WRITE_KEY)
    with pytest.raises(ConfigError, match="must differ"):
        create_app(same, published_workdir)


# -- fault 4: no body is read before the write key is checked ---------------------------------


@pytest.fixture(scope="module")
def writer(published_workdir: Workdir, small_settings: Settings) -> Iterator[TestClient]:
    """A client on a service with the write key set."""
    settings = with_serving(small_settings, api_key=WRITE_KEY)
    with TestClient(create_app(settings, published_workdir)) as client:
        yield client


def test_an_unauthenticated_write_is_answered_without_reading_the_body(writer: TestClient) -> None:
    """At the ASGI level: the app answers 401 without ever calling ``receive``."""
    received: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"[" + b"1," * 65536, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/events",
        "raw_path": b"/events",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(14 * 1024 * 1024).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    assert writer.portal is not None
    writer.portal.call(writer.app, scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 401, sent
    assert json.loads(sent[1]["body"])["error"] == "AuthError"
    assert received == [], "the app read the body of an unauthenticated request"


def test_large_bodies_decode_off_the_loop_with_the_errors_of_small_ones(
    writer: TestClient,
) -> None:
    """Over THREAD_DECODE_BYTES the body is decoded element by element on the thread pool:
    the same answers as a small body's (and an over-long list is refused before the rest)."""
    headers = {"content-type": "application/json", "X-API-Key": WRITE_KEY}
    pad = b" " * THREAD_DECODE_BYTES
    broken = writer.post("/events", content=b"[1, 2" + pad, headers=headers)
    assert broken.status_code == 422, broken.text
    assert [e["field"] for e in broken.json()["errors"]] == ["body"]
    assert "not valid JSON" in broken.json()["errors"][0]["reason"]
    not_utf8 = writer.post("/events", content=b'["\xff\xfe"]' + pad, headers=headers)
    assert not_utf8.status_code == 400, not_utf8.text
    too_many = writer.post("/events", content=b"[" + b"1," * 10_001 + b"1]" + pad, headers=headers)
    assert too_many.status_code == 422, too_many.text
    assert "too many events in one request" in too_many.json()["message"]
    not_events = writer.post("/events", content=b"[1, 2]" + pad, headers=headers)
    assert not_events.status_code == 422 and not_events.json()["rejected"] == 2, not_events.text


def _post_headers_only(port: int, key: str | None, timeout_s: float) -> bytes:
    """Send the headers of a 14 MB POST /events and only 1 byte of its body; return what the
    server answers within ``timeout_s`` (empty when it answers nothing)."""
    head = (
        "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {14 * 1024 * 1024}\r\n"
        + (f"X-API-Key: {key}\r\n" if key else "")
        + "\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head.encode() + b"[")
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b""


def _large_body() -> bytes:
    """~14 MB: 10,000 list items of 700 small numbers each, slow to decode (seconds of
    ``json.loads`` on a busy machine) and quick to reject (no item is an event)."""
    item = "[" + ",".join(["1"] * 700) + "]"
    return ("[" + ",".join([item] * 10_000) + "]").encode()


@pytest.fixture(scope="module")
def writer_server(published_workdir: Workdir, small_config: Path) -> Iterator[ServerProcess]:
    env = {"FEEDFORGE_SERVING__API_KEY": WRITE_KEY}
    server = ServerProcess(published_workdir, small_config, env=env).start()
    try:
        yield server
    finally:
        server.stop()


def test_serve_answers_an_unauthenticated_post_from_its_headers(
    writer_server: ServerProcess,
) -> None:
    answer = _post_headers_only(writer_server.port, None, timeout_s=10)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300] or "no answer in 10 s"
    wrong = _post_headers_only(writer_server.port, "x" * 32, timeout_s=10)
    assert wrong.startswith(b"HTTP/1.1 401"), wrong[:300] or "no answer in 10 s"
    # Still serving.
    assert httpx.get(f"{writer_server.base}/health/live", timeout=10).status_code == 200


def test_serve_parses_a_large_body_off_the_event_loop(writer_server: ServerProcess) -> None:
    body = _large_body()
    started = time.perf_counter()
    json.loads(body)
    decode_s = time.perf_counter() - started
    answers: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=writer_server.base, timeout=120) as client:
            for _ in range(3):
                response = client.post(
                    "/events",
                    content=body,
                    headers={"content-type": "application/json", "X-API-Key": WRITE_KEY},
                )
                answers.append(response.status_code)

    worst = 0.0
    probes = 0
    poster = threading.Thread(target=post)
    with httpx.Client(base_url=writer_server.base, timeout=60) as probe:
        assert probe.get("/health/live").status_code == 200  # connected before the clock
        poster.start()
        deadline = time.monotonic() + 120
        while poster.is_alive() and time.monotonic() < deadline:
            t0 = time.perf_counter()
            assert probe.get("/health/live").status_code == 200
            worst = max(worst, time.perf_counter() - t0)
            probes += 1
            time.sleep(0.002)
    poster.join(timeout=5)
    assert answers == [422] * 3, answers  # no item is an event: each one rejected
    assert probes > 20, probes
    # json.loads on the loop would hold every request for the whole decode (~3 x decode_s).
    assert worst < max(0.15, decode_s / 2), (worst, decode_s, probes)
