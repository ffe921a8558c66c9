"""Options every command shares: ``--config`` on ``import`` and ``compact``, and a clear error
from ``compact`` on a work directory that does not exist."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.events.log import EventLog
from feedforge.workdir import Workdir


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("FEEDFORGE_"):
            monkeypatch.delenv(name)
    yield


def _config(tmp_path: Path, text: str = "objective: clicks\n") -> Path:
    path = tmp_path / "feedforge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _interactions(tmp_path: Path) -> Path:
    path = tmp_path / "interactions.txt"
    path.write_text("u1 i1\nu1 i2\nu2 i1\n", encoding="utf-8")
    return path


def test_import_takes_config(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    args = ["import", "--dataset", "user-item-text", "--data-dir", str(_interactions(tmp_path))]
    result = CliRunner().invoke(
        app, [*args, "--workdir", str(workdir), "--config", str(_config(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    assert "imported 3 events" in result.output


def test_import_refuses_an_invalid_config_before_importing(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    args = ["import", "--dataset", "user-item-text", "--data-dir", str(_interactions(tmp_path))]
    bad = _config(tmp_path, "no_such_setting: 1\n")
    result = CliRunner().invoke(app, [*args, "--workdir", str(workdir), "--config", str(bad)])
    assert result.exit_code == 1, result.output
    assert "no_such_setting" in result.output and str(bad) in result.output
    assert not workdir.exists()


def test_compact_takes_config(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path / "work")
    EventLog(workdir.events_dir).root.mkdir(parents=True)
    result = CliRunner().invoke(
        app, ["compact", "--workdir", str(workdir.root), "--config", str(_config(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    assert "compacted 0 day(s)" in result.output
    bad = _config(tmp_path, "serving: {nope: 1}\n")
    refused = CliRunner().invoke(
        app, ["compact", "--workdir", str(workdir.root), "--config", str(bad)]
    )
    assert refused.exit_code == 1 and "serving.nope" in refused.output


def test_compact_of_a_missing_work_directory_fails_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    result = CliRunner().invoke(app, ["compact", "--workdir", str(missing)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0] == (
        f"error: missing work directory: {missing}. "
        f"Build it with `feedforge simulate --workdir {missing}`."
    )
    assert not missing.exists()
