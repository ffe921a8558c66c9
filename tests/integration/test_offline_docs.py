"""``/docs`` works without internet access: Swagger UI's assets are served by the app."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.serving.app import create_app
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


def _urls(html: str) -> list[str]:
    """Every URL an HTML page loads or links: src/href attributes and quoted JS URLs."""
    attributes = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html)
    scripted = re.findall(r"""(?:url|Url)\s*:\s*["']([^"']+)["']""", html)
    return attributes + scripted


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_local_assets(
    published_workdir: Workdir, small_settings: Settings, page: str
) -> None:
    with TestClient(create_app(small_settings, published_workdir)) as client:
        response = client.get(page)
        assert response.status_code == 200
        urls = _urls(response.text)
        assert urls, response.text
        external = [url for url in urls if re.match(r"^(https?:)?//", url)]
        assert not external, f"{page} loads from outside the service: {external}"
        assets = [url for url in urls if url.endswith((".js", ".css", ".png"))]
        assert assets
        for url in assets:
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
        assert "/openapi.json" in urls


def test_the_swagger_ui_is_recent_enough_for_openapi_3_1(
    published_workdir: Workdir, small_settings: Settings
) -> None:
    """FastAPI writes OpenAPI 3.1, which Swagger UI renders only from version 5 on."""
    with TestClient(create_app(small_settings, published_workdir)) as client:
        assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
        js = next(u for u in _urls(client.get("/docs").text) if u.endswith("bundle.js"))
        bundle = client.get(js).text
        versions = re.findall(r'"(\d+)\.(\d+)\.(\d+)"', bundle)
        assert any(int(major) >= 5 for major, _, _ in versions)
