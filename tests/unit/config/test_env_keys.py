"""``FEEDFORGE_*`` environment variables: an unknown one is refused, as unknown YAML keys are."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from feedforge.config import Settings, load_settings
from feedforge.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("FEEDFORGE_"):
            monkeypatch.delenv(name)
    yield


@pytest.mark.parametrize(
    "name",
    [
        "FEEDFORGE_OBJECTIV",  # a typo of a top-level setting
        "FEEDFORGE_SERVING__LATENCY_BUDGET",  # a typo inside a section
        "FEEDFORGE_STORE__REDIS__URL",  # nested one level too deep
        "FEEDFORGE_SERVING_PORT",  # one underscore where two are needed
        "FEEDFORGE_NOT_A_SETTING",
    ],
)
def test_an_unknown_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_known_variables_still_set_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDFORGE_OBJECTIVE", "clicks")
    monkeypatch.setenv("FEEDFORGE_SERVING__PORT", "8100")
    monkeypatch.setenv("FEEDFORGE_STORE__REDIS_URL", "redis://127.0.0.1:6380/0")
    monkeypatch.setenv("FEEDFORGE_MODELS__PARAMS__ALS__FACTORS", "8")
    monkeypatch.setenv("FEEDFORGE_SERVING", '{"history_length": 50}')
    settings = load_settings()
    assert settings.objective == "clicks"
    assert settings.serving.port == 8100 and settings.serving.history_length == 50
    assert settings.store.redis_url == "redis://127.0.0.1:6380/0"
    assert settings.models.params_for("als") == {"factors": 8}


@pytest.mark.parametrize(
    "name",
    [
        "FEEDFORGE_WORKDIR",  # set by `feedforge serve` for its workers
        "FEEDFORGE_CONFIG",
        "FEEDFORGE_UID",  # docker-compose's user of the API container
        "FEEDFORGE_GID",
        "FEEDFORGE_TEST_REDIS_URL",  # the test suite's Redis server
    ],
)
def test_variables_the_project_uses_outside_the_settings_are_allowed(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "1")
    assert load_settings() == Settings()  # allowed, and no setting changed


def test_names_are_matched_case_insensitively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("feedforge_objective", "clicks")
    assert load_settings().objective == "clicks"
    monkeypatch.setenv("feedforge_objectiv", "clicks")
    with pytest.raises(ConfigError, match=r"(?i)feedforge_objectiv"):
        load_settings()
