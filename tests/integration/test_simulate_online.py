"""The closed-loop simulator: the same seed gives the same outcomes over HTTP (a running
``feedforge serve``) and in process, with an experiment running; the ground truth is recorded
beside every sampled outcome."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.config import Settings
from feedforge.experiments.registry import ExperimentRegistry
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

from .conftest import ServerProcess

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "id": "explore",
    "variants": [
        {"name": "control", "weight": 0.5},
        {
            "name": "epsilon",
            "weight": 0.5,
            "overrides": {"reranking": {"exploration": {"type": "epsilon_greedy", "epsilon": 0.3}}},
        },
    ],
}
COMPARED = ["day", "request_id", "user_id", "experiment", "variant", "items", "clicks",
            "watch_seconds", "revenue", "true_clicks", "true_watch_seconds"]  # fmt: skip


def run(workdir: Path, config: Path, *extra: str) -> pl.DataFrame:
    result = CliRunner().invoke(
        app,
        ["simulate-online", "--workdir", str(workdir), "--config", str(config), "--users", "25",
         "--days", "2", "--seed", "3", "--k", "6", *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return pl.read_parquet(workdir / "simulation" / "sessions.parquet")


def test_http_and_in_process_loops_give_the_same_outcomes(
    fresh_workdir: Workdir, small_settings: Settings, small_config: Path, tmp_path: Path
) -> None:
    with open_store(small_settings.store, fresh_workdir.store_path) as store:
        registry = ExperimentRegistry(store)
        registry.create(EXPERIMENT)
        registry.start("explore")
    twin = Workdir.at(tmp_path / "twin")
    shutil.copytree(fresh_workdir.root, twin.root)

    in_process = run(fresh_workdir.root, small_config)
    server = ServerProcess(twin, small_config).start(timeout_s=120)
    try:
        over_http = run(twin.root, small_config, "--url", server.base)
    finally:
        output = server.stop()
    assert "Traceback" not in output, output

    assert in_process.height > 25  # users came back on the second day
    assert set(in_process.get_column("variant")) == {"control", "epsilon"}
    assert in_process.select(COMPARED).equals(over_http.select(COMPARED))
    # Users clicked, and the truth is the response model's expectation of each shown feed.
    assert in_process.get_column("clicks").sum() > 0
    assert (in_process.get_column("true_clicks") > 0).all()
    # Every session's counterfactual feeds: one per variant of the user's experiment.
    counterfactual = pl.read_parquet(fresh_workdir.root / "simulation" / "counterfactual.parquet")
    arms = counterfactual.group_by("request_id").agg(pl.col("arm").sort())
    assert (
        arms.get_column("arm").to_list() == [["explore/control", "explore/epsilon"]] * arms.height
    )
    assert arms.height == in_process.height
    # The counterfactual of the variant actually served is the served feed's truth.
    served = in_process.with_columns(arm="explore/" + pl.col("variant")).join(
        counterfactual, on=["request_id", "arm"], suffix="_cf"
    )
    assert served.height == in_process.height
    assert (served["true_clicks"] - served["true_clicks_cf"]).abs().max() < 1e-9
