"""The service's feed log keeps to its limits (``serving.feed_log_*``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from feedforge.config import Settings
from feedforge.serving.app import create_app
from feedforge.serving.feedlog import read_feed_log
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


def test_a_long_feed_is_logged_capped_and_files_rotate(
    workdir_copy: Callable[..., Workdir], small_settings: Settings, known_user: str
) -> None:
    serving = {
        **small_settings.serving.model_dump(),
        "feed_log_max_items": 20,
        "feed_log_max_bytes": 4096,
    }
    settings = Settings(**{**small_settings.model_dump(), "serving": serving})
    workdir = workdir_copy()
    with TestClient(create_app(settings, workdir)) as client:
        for n in range(10):
            response = client.get(
                "/recommend", params={"user_id": known_user, "k": 250, "request_id": f"r{n}"}
            )
            assert response.status_code == 200 and len(response.json()["items"]) == 250
    files = sorted(workdir.feedlog_dir.glob("feeds-*.jsonl"))
    assert len(files) > 1 and all(path.stat().st_size <= 4096 for path in files)
    log = read_feed_log(workdir.feedlog_dir)
    assert log.get_column("request_id").to_list() == [f"r{n}" for n in range(10)]
    first = log.row(0, named=True)
    assert len(first["items"]) == len(first["scores"]) == len(first["propensities"]) == 20
    assert first["items_total"] == 250 and first["truncated"] is True
