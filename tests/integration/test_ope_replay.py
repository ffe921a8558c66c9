"""The replay's direct model is the target's own scores, calibrated on the logged rewards:
a target ranking exactly as the logging policy, with scores on another scale, gets the same
doubly robust estimate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.config import load_settings
from feedforge.events.log import EventLog
from feedforge.experiments.definition import Variant
from feedforge.experiments.online import read_feed_log
from feedforge.features.objectives import settings_value
from feedforge.loop.ope import logged_slates, replay
from feedforge.serving.pipeline import FeedService
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


def test_the_dr_estimate_does_not_depend_on_the_target_score_scale(
    fresh_workdir: Workdir, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "explore.yaml",
        reranking={"exploration": {"type": "epsilon_greedy", "epsilon": 0.5}},
    )
    settings = load_settings(config)
    result = CliRunner().invoke(
        app,
        ["simulate-online", "--workdir", str(fresh_workdir.root), "--config", str(config),
         "--users", "60", "--days", "2", "--k", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    events = EventLog(fresh_workdir.events_dir).scan().collect()
    logged = logged_slates(
        read_feed_log(fresh_workdir.feedlog_dir), events, settings_value(settings), 86_400.0
    )
    with open_store(settings.store, fresh_workdir.store_path) as store:
        service = FeedService(settings, fresh_workdir, store)
        try:
            service.versions.preload()
            version = store.current_version()
            target = Variant(name="target", weight=1.0, version=version)
            plain = replay(service, logged, target, n_bootstrap=50)
            original = service.scored_candidates

            def rescaled(*args: Any, **kwargs: Any) -> Any:
                cands = original(*args, **kwargs)
                return None if cands is None else replace(cands, scores=cands.scores * 0.1)

            service.scored_candidates = rescaled  # type: ignore[method-assign]
            scaled = replay(service, logged, target, n_bootstrap=50)
        finally:
            service.close()
    assert plain["replayed_feeds"] == logged.height > 0
    for name in ("dr", "ips", "snips"):
        np.testing.assert_allclose(
            scaled["estimates"][name]["value"], plain["estimates"][name]["value"], rtol=1e-6
        )
