"""Tests of the typed settings: defaults, the YAML file, environment overrides and errors."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from feedforge.config import Settings, load_settings
from feedforge.errors import ConfigError
from feedforge.models.registry import create_ranker, create_recommender


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FEEDFORGE_* variable of the developer's shell may leak into these tests."""
    for name in list(os.environ):
        if name.startswith("FEEDFORGE_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "feedforge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_load_without_a_file() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.objective == "watch_time"
    assert settings.store.type == "embedded"
    assert settings.dataset.attribution_seconds == 1800
    assert settings.serving.latency_budget_ms == 50.0


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, "")) == load_settings()


def test_file_values_apply(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "objective: revenue\n"
        "dataset:\n  test_days: 2\n  attribution_seconds: 600\n"
        "store:\n  namespace: staging\n"
        "models:\n  als:\n    factors: 8\n",
    )
    settings = load_settings(path)
    assert settings.objective == "revenue"
    assert settings.dataset.test_days == 2.0
    assert settings.dataset.attribution_seconds == 600
    assert settings.store.namespace == "staging"
    assert settings.models.params_for("als") == {"factors": 8}
    # Keys the file does not name keep their defaults.
    assert settings.dataset.validation_days == 4.0
    als = create_recommender("als", settings.models)
    assert als.get_params()["factors"] == 8 and als.get_params()["iterations"] == 15


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "objective: revenue\nstore:\n  type: embedded\n  namespace: staging\n")
    monkeypatch.setenv("FEEDFORGE_OBJECTIVE", "clicks")
    monkeypatch.setenv("FEEDFORGE_STORE__TYPE", "redis")
    settings = load_settings(path)
    assert settings.objective == "clicks"
    assert settings.store.type == "redis"
    # A nested env var replaces one field, not the file's whole section.
    assert settings.store.namespace == "staging"


def test_env_applies_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDFORGE_SERVING__PORT", "9001")
    assert load_settings().serving.port == 9001


def test_invalid_env_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDFORGE_OBJECTIVE", "likes")
    with pytest.raises(ConfigError, match="objective"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus: 1\n", "bogus"),
        ("store:\n  bogus_field: 1\n", "store.bogus_field"),
        ("models:\n  als:\n    factorz: 8\n", "models.als.factorz"),
    ],
)
def test_unknown_keys_are_rejected(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("objective: likes\n", "objective"),
        ("serving:\n  port: 0\n", "serving.port"),
        ("store:\n  type: memcached\n", "store.type"),
        ("dataset:\n  watch_completion: 1.5\n", "dataset.watch_completion"),
        ("store: 5\n", "store"),
        ("store:\n  read_timeout_ms: 0\n", "store.read_timeout_ms"),
        # A feed's store deadline must leave room in the latency budget.
        ("store:\n  read_timeout_ms: 60\n", "store.read_timeout_ms (60) must be below"),
    ],
)
def test_invalid_values_are_rejected(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert key in str(info.value)


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- a\n- b\n", "mapping"),
        ("just a string\n", "mapping"),
        ("objective: [\n", "not valid YAML"),
        ("1: watch_time\n", "must be strings"),
    ],
)
def test_malformed_files_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"objective: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "objective: revenue\n")
    assert load_settings(path, objective="clicks").objective == "clicks"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.objective = "clicks"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A bare YAML date means UTC midnight, whatever the machine's time zone.
        ("simulator:\n  start: 2026-03-01\n", datetime(2026, 3, 1, tzinfo=UTC)),
        ("simulator:\n  start: 2026-03-01T02:00:00+02:00\n", datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_simulator_start_is_utc(tmp_path: Path, text: str, expected: datetime) -> None:
    start = load_settings(_write(tmp_path, text)).simulator.start
    assert start == expected
    assert start.utcoffset() is not None
    assert start.utcoffset().total_seconds() == 0


# -- models.params: each model's own declaration -------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("models:\n  params:\n    tree: {depth: 3}\n", ["tree", "models.params.tree.depth"]),
        ("models:\n  params:\n    als: {factors: 0}\n", ["als", "models.params.als.factors"]),
        ("models:\n  params:\n    als: {factors: 2.5}\n", ["als", "models.params.als.factors"]),
        ("models:\n  params:\n    ease: {implicit: maybe}\n", ["ease", "implicit"]),
        ("models:\n  params:\n    lightgbm: {objective: lambda}\n", ["lightgbm", "objective"]),
        ("models:\n  params:\n    sasrec: {num_heads: 3}\n", ["sasrec", "num_heads"]),
        ("models:\n  als: {factorz: 8}\n", ["als", "models.als.factorz"]),
        ("models:\n  popularity: {window_days: -1}\n", ["popularity", "models.popularity"]),
        ("models:\n  ranker: {C: 0}\n", ["logistic", "models.ranker.C"]),
        ("models:\n  params:\n    nope: {a: 1}\n", ["models.params.nope", "unknown model"]),
    ],
)
def test_model_params_are_checked_against_the_model(
    tmp_path: Path, text: str, named: list[str]
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    for part in [str(path), *named]:
        assert part in str(info.value)


def test_valid_model_params_reach_the_models(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "models:\n"
        "  ranker: {type: tree, C: 2}\n"  # C: the older spelling of params.logistic.C
        "  popularity: {window_days: 3}\n"
        "  params: {tree: {max_depth: 3}, lightgbm: {objective: lambdarank}}\n",
    )
    models = load_settings(path).models
    assert create_ranker("tree", models).get_params()["max_depth"] == 3
    assert create_ranker("lightgbm", models).get_params()["objective"] == "lambdarank"
    assert create_ranker("logistic", models).get_params() == {"C": 2.0, "max_iter": 500}
    assert create_recommender("popularity", models).get_params() == {"window_days": 3.0}


def test_an_older_section_and_params_may_not_both_set_a_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n  als: {factors: 8}\n  params: {als: {factors: 16}}\n")
    with pytest.raises(ConfigError, match=r"models\.als and models\.params\.als both set"):
        load_settings(path)


def test_model_params_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Environment values are strings; numbers, booleans and null are read as such.
    monkeypatch.setenv("FEEDFORGE_MODELS__PARAMS__ALS__FACTORS", "8")
    monkeypatch.setenv("FEEDFORGE_MODELS__PARAMS__EASE__IMPLICIT", "false")
    monkeypatch.setenv("FEEDFORGE_MODELS__PARAMS__LIGHTGBM__OBJECTIVE", "lambdarank")
    models = load_settings().models
    assert create_recommender("als", models).get_params()["factors"] == 8
    assert create_recommender("ease", models).get_params()["implicit"] is False
    assert create_ranker("lightgbm", models).get_params()["objective"] == "lambdarank"
    monkeypatch.setenv("FEEDFORGE_MODELS__PARAMS__ALS__FACTORS", "eight")
    with pytest.raises(ConfigError, match=r"models\.params\.als\.factors"):
        load_settings()


@pytest.mark.parametrize("name", ["rp3beta", "multvae", "ease", "sasrec"])
def test_every_registered_recommender_can_be_the_retrieval_model(tmp_path: Path, name: str) -> None:
    settings = load_settings(_write(tmp_path, f"models:\n  retrieval: {name}\n"))
    assert settings.models.retrieval == name
