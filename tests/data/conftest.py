"""A small simulated world, built into a dataset once per test session (fixture ``built``).

300 users, 200 items, 12 days, 2 validation and 2 test days: about 12k events, built in well
under a second. A few hand-made events add a user and an item that appear only in the test
window, so the id-map checks cannot pass vacuously.

Tests import :class:`Built` for type hints only (``--import-mode=importlib`` keeps conftest
modules off ``sys.path``); its constants are attributes of the fixture's value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest

from feedforge.artifacts import Manifest
from feedforge.config import Settings, SimulatorConfig, load_settings
from feedforge.datasets.build import build_dataset
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.events.simulator import simulate
from feedforge.workdir import Workdir

SIM = SimulatorConfig(
    seed=5, n_users=300, n_items=200, n_days=12, n_categories=6, item_backlog_days=20
)
LATE_USER, LATE_ITEM = "u-late-only", "i-late-only"


@dataclass(frozen=True)
class Built:
    """Everything a data test needs: the inputs (log, catalog) and the built dataset."""

    workdir: Workdir
    settings: Settings
    manifest: Manifest
    dataset: Dataset
    events: pl.DataFrame
    items: pl.DataFrame
    bounds: dict[str, datetime]
    sim: SimulatorConfig = SIM
    late_user: str = LATE_USER
    late_item: str = LATE_ITEM

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.settings.dataset.attribution_seconds)

    def ranking(self, split: str) -> pl.DataFrame:
        return self.dataset.ranking(split)

    def positives(self, split: str) -> pl.DataFrame:
        return self.dataset.positives(split)


def _late_events(end: datetime) -> pl.DataFrame:
    ts = end - timedelta(hours=3)
    base: dict[str, Any] = {"user_id": LATE_USER, "item_id": LATE_ITEM, "request_id": "rq-late"}
    return pl.DataFrame(
        [
            {
                **base,
                "event_id": "late-imp",
                "timestamp": ts,
                "event_type": "impression",
                "position": 0,
            },
            {
                **base,
                "event_id": "late-click",
                "timestamp": ts + timedelta(seconds=4),
                "event_type": "click",
                "position": 0,
            },
        ]
    )


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    workdir = Workdir.at(tmp_path_factory.mktemp("dataset"))
    simulate(SIM, workdir)
    log = EventLog(workdir.events_dir)
    end = log.scan().select(pl.col("timestamp").max()).collect().item()
    log.append(_late_events(end), where="test")
    settings = load_settings(None, dataset={"validation_days": 2, "test_days": 2})
    manifest = build_dataset(workdir, settings)
    _, items, _ = read_catalog(workdir)
    bounds = {k: datetime.fromisoformat(v) for k, v in manifest.extra["split"].items()}
    return Built(
        workdir=workdir,
        settings=settings,
        manifest=manifest,
        dataset=load_dataset(workdir),
        events=log.scan().collect().sort("timestamp", "event_id"),
        items=items,
        bounds=bounds,
    )
