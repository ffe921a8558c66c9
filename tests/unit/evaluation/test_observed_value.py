"""The observed value of the test window, read from a built dataset on a hand-made log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from feedforge.config import load_settings
from feedforge.datasets.build import build_dataset
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.evaluation.evaluate import observed_value
from feedforge.events.catalog import write_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA
from feedforge.features.objectives import objective_value
from feedforge.workdir import Workdir

START = datetime(2026, 1, 1, tzinfo=UTC)
T2 = START + timedelta(days=3)  # test_days 1 on a log ending at START + 4 days


def _row(ts: datetime, user: str, item: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{kind}-{user}-{item}-{ts.isoformat()}",
        "timestamp": ts,
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        **extra,
    }


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    workdir = Workdir.at(tmp_path)
    items = pl.DataFrame(
        {
            "item_id": ["i1", "i2"],
            "title": ["one", "two"],
            "categories": [["a"], ["b"]],
            "created_at": [START] * 2,
            "duration_seconds": [100.0, 100.0],
            "price": [None, 2.0],
        },
        schema=ITEM_SCHEMA,
    )
    write_catalog(workdir, items, pl.DataFrame({"user_id": ["u1", "u2"]}))
    rows = [
        _row(START, "u1", "i1", "click"),
        _row(START, "u2", "i2", "click"),
        _row(T2 - timedelta(hours=1), "u1", "i2", "watch", watch_seconds=600.0),  # validation
        _row(T2 + timedelta(hours=1), "u1", "i2", "watch", watch_seconds=120.0),
        _row(T2 + timedelta(hours=2), "u1", "i2", "watch", watch_seconds=60.0),
        _row(T2 + timedelta(hours=2), "u1", "i2", "purchase", price=2.0),
        _row(T2 + timedelta(hours=3), "u2", "i1", "click"),
        _row(T2 + timedelta(hours=3), "u-new", "i1", "watch", watch_seconds=500.0),  # unknown
        _row(T2 + timedelta(days=1), "u2", "i1", "impression"),  # the log's end
    ]
    EventLog(workdir.events_dir).append(pl.DataFrame(rows, schema=EVENT_SCHEMA))
    settings = load_settings(None, dataset={"validation_days": 1, "test_days": 1})
    build_dataset(workdir, settings)
    return load_dataset(workdir)


def _dense(dataset: Dataset, value: dict[str, float]) -> tuple[str, list[float]]:
    """The metric name and the ``(n_users, n_items)`` matrix, flattened row by row."""
    result = observed_value(dataset, value)
    assert result is not None
    name, matrix = result
    return name, matrix.toarray().reshape(-1).tolist()


def test_observed_value_applies_the_objectives_weights(dataset: Dataset) -> None:
    assert dataset.users.ids.to_list() == ["u1", "u2"]
    assert dataset.items.ids.to_list() == ["i1", "i2"]
    assert observed_value(dataset, objective_value("clicks")) is None
    # watch time in minutes: 120 s + 60 s in the test window (the validation watch is out)
    name, value = _dense(dataset, objective_value("watch_time"))
    assert name == "watch_minutes@"
    assert value == pytest.approx([0.0, 3.0, 0.0, 0.0])
    name, value = _dense(dataset, objective_value("revenue"))
    assert name == "revenue@"
    assert value == pytest.approx([0.0, 2.0, 0.0, 0.0])
    mix = {"clicked": 2.0, "watch_seconds": 1.0 / 60.0, "revenue": 10.0}
    name, value = _dense(dataset, mix)
    assert name == "value@"
    assert value == pytest.approx([0.0, 3.0 + 20.0, 2.0, 0.0])
