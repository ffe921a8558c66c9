"""Structured JSON log lines."""

from __future__ import annotations

import json
import logging

from feedforge.monitoring.logs import JsonFormatter, log_config


def test_a_record_becomes_one_json_line_with_its_extras() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "feedforge.serving", logging.ERROR, __file__, 1, "feed %s failed", ("u1",),
            sys.exc_info(),
        )  # fmt: skip
    record.request_id = "r-1"
    line = JsonFormatter().format(record)
    assert "\n" not in line  # the traceback is escaped inside the one line
    payload = json.loads(line)
    assert payload["level"] == "ERROR" and payload["logger"] == "feedforge.serving"
    assert payload["message"] == "feed u1 failed" and payload["request_id"] == "r-1"
    assert "ValueError: boom" in payload["exc_info"]
    assert payload["ts"].endswith("+00:00")


def test_log_config_routes_uvicorn_and_feedforge_through_the_formatter() -> None:
    # (Applied for real by `feedforge serve`: tests/integration/test_demo_e2e.py parses its
    # output; applying it here would reconfigure logging for the rest of the test session.)
    config = log_config("json")
    assert set(config["loggers"]) == {"uvicorn", "uvicorn.error", "uvicorn.access", "feedforge"}
    assert all(c["handlers"] == ["default"] for c in config["loggers"].values())
    factory = config["formatters"]["default"]["()"]
    assert factory == f"{JsonFormatter.__module__}.JsonFormatter"
    assert "format" in log_config("text")["formatters"]["default"]
