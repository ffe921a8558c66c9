"""The real CLI end to end: ``feedforge demo``, each stage command in order, and bad input.

Commands run in-process through Typer's ``CliRunner`` on the small config of ``conftest.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from feedforge.cli import app
from feedforge.store.embedded import EmbeddedStore
from feedforge.workdir import Workdir

from .conftest import ServerProcess

pytestmark = pytest.mark.integration

MODELS = ("popularity", "als", "als+logistic")
METRICS = ("ndcg@10", "recall@10", "map@10", "hitrate@10", "coverage@10")
VALUE = "watch_minutes@10"  # the default objective's observed value, printed last

runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    # A wide console: Rich folds lines longer than 80 columns when stdout is not a terminal,
    # which would split the long temporary paths the assertions look for.
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "500"})


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space (Rich wraps long lines)."""
    return " ".join(text.split())


def table_rows(output: str) -> dict[str, list[float]]:
    """The numbers of each model's row of the printed evaluation table."""
    rows: dict[str, list[float]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) == 2 + len(METRICS) and cells[0] in MODELS:
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def published_version(output: str) -> str:
    match = re.search(r"published version (\S+) to the embedded store", flat(output))
    assert match, output
    return match.group(1)


def current_version(workdir: Path) -> str | None:
    with EmbeddedStore(Workdir.at(workdir).store_path) as store:
        return store.current_version()


def check_clean_failure(result: Result) -> str:
    """A deliberate failure: exit code 1, a message, no traceback. Returns the flat output."""
    assert result.exit_code == 1, result.output
    # CliRunner keeps an escaped exception here; a clean exit leaves only SystemExit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    text = flat(result.output)
    assert "error:" in text.lower()
    return text


def test_demo_prints_the_table_writes_the_report_and_publishes(
    tmp_path: Path, small_config: Path
) -> None:
    workdir = tmp_path / "demo"
    result = invoke("demo", "--workdir", workdir, "--config", small_config)
    assert result.exit_code == 0, result.output
    assert result.exception is None

    report = json.loads((workdir / "reports" / "evaluation.json").read_text())
    models = report["models"]
    assert set(models) == set(MODELS)
    for name, metrics in models.items():
        assert set(METRICS) <= set(metrics), name
        for metric in METRICS:
            assert isinstance(metrics[metric], float), (name, metric)
            assert 0.0 <= metrics[metric] <= 1.0, (name, metric)

    # The learned models beat the popularity baseline on NDCG@10 (by >2x at this size).
    ndcg = {name: models[name]["ndcg@10"] for name in MODELS}
    assert ndcg["als"] > ndcg["popularity"], ndcg
    assert ndcg["als+logistic"] > ndcg["popularity"], ndcg

    # The printed table is the report, row by row.
    # The table's header (the progress lines before it may say "model" too).
    header = next(line for line in result.output.splitlines() if "model" in line and "@" in line)
    assert [m for m in METRICS if m in header] == list(METRICS)
    rows = table_rows(result.output)
    assert set(rows) == set(MODELS), result.output
    for name in MODELS:
        assert rows[name] == [round(models[name][m], 4) for m in (*METRICS, VALUE)], name
    # The watch-time ranker's feeds earned more observed watch time than retrieval alone.
    assert models["als+logistic"][VALUE] > models["als"][VALUE] > models["popularity"][VALUE]
    best = max(MODELS, key=ndcg.__getitem__)
    assert f"best model on NDCG@10: {best}" in flat(result.output)

    # ...and the demo published what it trained.
    version = published_version(result.output)
    assert current_version(workdir) == version
    assert (workdir / "bundles" / version / "manifest.json").is_file()

    # It ends with the HTML report, naming its path; the evaluation run is kept in history.
    page = (workdir / "reports" / "report.html").resolve()
    assert f"openthereport:{page}" in "".join(result.output.split())  # Rich folds long paths
    html = page.read_text(encoding="utf-8")
    assert version in html and report["dataset_version"] in html
    assert len(list((workdir / "reports" / "evaluations").glob("*.json"))) == 1


def test_a_second_demo_forgets_items_posted_to_the_first_world(
    tmp_path: Path, small_config: Path
) -> None:
    from feedforge.config import load_settings
    from feedforge.store.factory import open_store
    from feedforge.store.live_items import read_live_items, upsert_live_items

    workdir = tmp_path / "demo"
    assert invoke("demo", "--workdir", workdir, "--config", small_config).exit_code == 0
    settings = load_settings(small_config)
    with open_store(settings.store, workdir / "store.sqlite3") as store:
        upsert_live_items(store, {"old-world-item": {"available": False, "updated_at_s": 1.0}})
    assert invoke("demo", "--workdir", workdir, "--config", small_config).exit_code == 0
    with open_store(settings.store, workdir / "store.sqlite3") as store:
        assert read_live_items(store)[1] == {}


def test_stage_commands_in_order(tmp_path: Path, small_config: Path) -> None:
    workdir = tmp_path / "stages"
    wd = Workdir.at(workdir)
    stages: list[tuple[str, Callable[[], bool]]] = [
        (
            "simulate",
            lambda: (
                (wd.catalog_dir / "manifest.json").is_file()
                and any(wd.events_dir.glob("date=*/*.parquet"))
            ),
        ),
        ("build", lambda: (wd.dataset_dir / "manifest.json").is_file()),
        (
            "train",
            lambda: all(
                (wd.model_dir(name) / "manifest.json").is_file()
                for name in ("popularity", "als", "logistic")
            ),
        ),
        ("evaluate", lambda: (wd.reports_dir / "evaluation.json").is_file()),
        ("publish", lambda: wd.store_path.is_file()),
    ]
    for command, artifact_exists in stages:
        assert not artifact_exists(), f"{command}'s artifact exists before it ran"
        result = invoke(command, "--workdir", workdir, "--config", small_config)
        assert result.exit_code == 0, f"{command}: {result.output}"
        assert artifact_exists(), f"{command} wrote no artifact"
        if command == "build":  # not a terminal: each step is a line of its own, timed
            assert re.search(r"^build: labelling positives \[\d+ s\]$", result.output, re.M)
            assert re.search(r"^build: done \[\d+ s\]$", result.output, re.M)

    version = published_version(result.output)
    assert current_version(workdir) == version

    # A second simulate into the same directory refuses to overwrite the event log.
    again = invoke("simulate", "--workdir", workdir, "--config", small_config)
    text = check_clean_failure(again)
    assert str(wd.events_dir) in text


def test_train_on_an_empty_workdir_names_the_missing_dataset_and_its_command(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    text = check_clean_failure(invoke("train", "--workdir", empty))
    assert str(empty / "dataset") in text
    assert f"`feedforge build --workdir {empty}`" in text


def test_a_corrupt_manifest_names_the_file_and_the_command(
    tmp_path: Path, small_config: Path, workdir_copy: Callable[..., Workdir]
) -> None:
    workdir = workdir_copy(publish=False)
    manifest = workdir.dataset_dir / "manifest.json"
    manifest.write_text('{"artifact": "dataset", "schema_ver', encoding="utf-8")
    text = check_clean_failure(invoke("train", "--workdir", workdir.root, "--config", small_config))
    assert "corrupt dataset manifest" in text
    assert str(manifest) in text
    assert f"`feedforge build --workdir {workdir.root}`" in text


def test_a_config_with_an_unknown_key_names_the_file_and_the_key(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config(tmp_path / "typo.yaml", simulator={"n_users": 10, "n_userz": 20})
    text = check_clean_failure(invoke("simulate", "--workdir", tmp_path / "w", "-c", config))
    assert str(config) in text
    assert "simulator.n_userz" in text
    assert not (tmp_path / "w").exists(), "nothing may run on an invalid config"


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    text = check_clean_failure(invoke("build", "--workdir", tmp_path, "--config", missing))
    assert f"config file not found: {missing}" in text


def test_error_messages_are_printed_verbatim(tmp_path: Path) -> None:
    missing = tmp_path / "runs[prod]" / "small.yaml"
    text = check_clean_failure(invoke("build", "--workdir", tmp_path, "--config", missing))
    assert str(missing) in text


def test_serve_answers_over_http(
    published_workdir: Workdir, small_config: Path, known_user: str
) -> None:
    """``feedforge serve`` in its own process: uvicorn, the app factory, the real socket (with
    the access log, off by default, turned on)."""
    env = {"FEEDFORGE_SERVING__ACCESS_LOG": "true"}
    server = ServerProcess(published_workdir, small_config, env=env).start()
    base = server.base
    try:
        health = httpx.get(f"{base}/health", timeout=5)
        assert health.status_code == 200, health.text
        assert health.json()["version"] == current_version(published_workdir.root)
        feed = httpx.get(f"{base}/recommend", params={"user_id": known_user, "k": 5}, timeout=5)
        assert feed.status_code == 200, feed.text
        assert feed.json()["strategy"] == "personalized"
        assert len(feed.json()["items"]) == 5
        assert "Server-Timing" in feed.headers
    finally:
        output = server.stop()
    # Structured logs: every line the service wrote is one JSON object.
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "uvicorn.access" and "/recommend" in r["message"] for r in records)
