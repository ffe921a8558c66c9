"""``GET /dashboard``: the live page of the running service, and its data.

The browser test runs ``feedforge serve`` (a real socket) and opens the page in a headless
Chromium: it renders without console errors or requests leaving 127.0.0.1, updates after new
traffic, and a screenshot is saved; ``/docs`` renders its OpenAPI UI offline in the same
browser.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from feedforge.config import load_settings
from feedforge.serving.app import create_app
from feedforge.workdir import Workdir

from .conftest import ServerProcess


def published_version(workdir: Workdir) -> str:
    return next(p.name for p in workdir.bundles_dir.iterdir())


READ_KEY = "dashboard-read-key-0123456789"
WRITE_KEY = "dashboard-write-key-0123456789"

CHARTS_DRAWN = """
return arguments[0].every((id) => {
  const el = document.getElementById(id);
  const svg = el.querySelector('svg');
  return el.dataset.rendered === '1' && svg && svg.getBoundingClientRect().width > 0
    && el.querySelectorAll('.role-mark path').length > 0;
});
"""


def test_dashboard_needs_the_read_key_in_a_header_or_as_basic_password(
    published_workdir: Workdir, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "keys.yaml", serving={"read_api_key": READ_KEY, "api_key": WRITE_KEY}
    )
    with TestClient(create_app(load_settings(config), published_workdir)) as client:
        for path in ("/dashboard", "/dashboard/data"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Basic"), path
            assert "read_api_key" in refused.json()["message"]
            assert client.get(path, headers={"X-API-Key": WRITE_KEY}).status_code == 401
            assert client.get(path, headers={"X-API-Key": READ_KEY}).status_code == 200, path
            basic = base64.b64encode(f"anyone:{READ_KEY}".encode()).decode()
            ok = client.get(path, headers={"Authorization": f"Basic {basic}"})
            assert ok.status_code == 200, path
        # The assets hold no data: open.
        for asset in ("dashboard.js", "dashboard.css", "vega.js"):
            assert client.get(f"/dashboard/assets/{asset}").status_code == 200, asset
        assert client.get("/dashboard/assets/secrets.txt").status_code == 404
        page = client.get("/dashboard", headers={"X-API-Key": READ_KEY})
        assert "default-src 'none'" in page.headers["content-security-policy"]


def test_dashboard_data_counts_feed_requests_and_lists_versions(
    published_workdir: Workdir, write_config: Callable[..., Path], tmp_path: Path, known_user: str
) -> None:
    config = write_config(tmp_path / "dash.yaml", monitoring={"dashboard_refresh_s": 0.05})
    with TestClient(create_app(load_settings(config), published_workdir)) as client:
        first = client.get("/dashboard/data").json()
        assert first["totals"]["requests"] == 0
        for _ in range(12):
            assert client.get("/recommend", params={"user_id": known_user}).status_code == 200
        client.get("/events")  # another endpoint: not a feed request
        data = client.get("/dashboard/data").json()
    assert data["totals"]["requests"] == 12 and data["totals"]["errors"] == 0
    assert data["totals"]["feeds"] == 12
    busy = [p for p in data["series"] if p["rps"] > 0]
    assert busy and all(p["p99_ms"] is not None and p["error_rate"] == 0 for p in busy)
    assert data["serving_version"] in data["served_versions"]
    current = [v for v in data["versions"] if v["current"]]
    assert [v["version"] for v in current] == [data["serving_version"]]
    assert data["budget_ms"] == load_settings(config).serving.latency_budget_ms
    assert set(data["freshness"]) >= {"version", "feature_snapshot"}


def test_dashboard_and_docs_render_offline_in_chromium(
    published_workdir: Workdir,
    write_config: Callable[..., Path],
    tmp_path: Path,
    known_user: str,
    browser: Any,
) -> None:
    config = write_config(
        tmp_path / "live.yaml", monitoring={"dashboard_refresh_s": 0.5, "kpi_refresh_s": 1.0}
    )
    server = ServerProcess(published_workdir, config).start()
    try:
        browser.open(f"{server.base}/dashboard")
        browser.wait_for("return Number(document.body.dataset.polls || 0) >= 1")
        before = int(browser.js("return document.getElementById('total-requests').innerText")
                     .replace(",", ""))  # fmt: skip
        with httpx.Client(base_url=server.base, timeout=10) as http:
            for burst in range(5):  # a few sampled intervals of traffic
                for _ in range(5):
                    feed = http.get("/recommend", params={"user_id": known_user})
                    assert feed.status_code == 200
                if burst < 4:
                    time.sleep(0.6)
        browser.wait_for(
            "return Number(document.getElementById('total-requests').innerText"
            ".replaceAll(',', '')) >= arguments[0]",
            30.0,
            before + 25,
        )
        browser.wait_for(CHARTS_DRAWN, 30.0, ["chart-rate", "chart-latency", "chart-rates"])
        # The online KPIs of the served version (from the feed log, every kpi_refresh_s).
        kpis = browser.wait_for(
            "const rows = [...document.querySelectorAll('#kpis tbody tr')];"
            "return rows.length && rows.map((r) => r.innerText);",
            30.0,
        )
        version = published_version(published_workdir)
        assert any(version in row for row in kpis), kpis
        browser.wait_for(CHARTS_DRAWN, 30.0, ["chart-kpis"])
        assert browser.js("return document.getElementById('serving-version').innerText") in {
            p.name for p in published_workdir.bundles_dir.iterdir()
        }
        console, urls = browser.logs()
        assert not browser.errors(console), console
        assert not browser.outside(urls, server.port), urls
        assert any(u.endswith("/dashboard/data") for u in urls)
        assert browser.screenshot("dashboard").stat().st_size > 10_000

        # The OpenAPI UI, from the package's own assets.
        browser.open(f"{server.base}/docs")
        title = browser.wait_for(
            "const t = document.querySelector('.swagger-ui .info .title');return t && t.innerText;"
        )
        assert "feedforge" in title
        browser.wait_for("return document.querySelectorAll('.opblock').length > 3")
        console, urls = browser.logs()
        assert not browser.errors(console), console
        assert not browser.outside(urls, server.port), urls
    finally:
        output = server.stop()
    assert "Traceback" not in output, output
