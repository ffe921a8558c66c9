"""``feedforge ope`` on a feed log the closed loop wrote under an exploring policy, and its
refusal of a log that never explored."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_ope_estimates_a_target_from_an_exploring_log(
    fresh_workdir: Workdir, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    exploring = write_config(
        tmp_path / "explore.yaml",
        reranking={"exploration": {"type": "epsilon_greedy", "epsilon": 0.5}},
    )
    common = ("--workdir", str(fresh_workdir.root), "--config", str(exploring))
    code, output = cli("simulate-online", *common, "--users", "40", "--days", "2", "--k", "4")
    assert code == 0, output
    target = tmp_path / "greedy.yaml"
    target.write_text("overrides: {reranking: {exploration: {type: none}}}\n")
    out = tmp_path / "ope.json"
    code, output = cli("ope", *common, "--target", str(target), "--out", str(out))
    assert code == 0, output
    result = json.loads(out.read_text())
    assert set(result["estimates"]) == {"ips", "snips", "dr", "rips"}
    assert result["n"] >= 40 and result["replayed_feeds"] == result["n"]
    assert 0 < result["support"] <= 1 and result["ess"] > 0
    for values in result["estimates"].values():
        lo, hi = values["ci"]
        assert lo <= values["value"] <= hi
    assert "ESS" in output


def test_ope_refuses_a_log_that_never_explored(
    fresh_workdir: Workdir, small_config: Path, tmp_path: Path
) -> None:
    common = ("--workdir", str(fresh_workdir.root), "--config", str(small_config))
    code, output = cli("simulate-online", *common, "--users", "10", "--days", "1")
    assert code == 0, output
    code, output = cli("ope", *common, "--target", "nope-version")
    assert code != 0
    assert "never explored" in output
