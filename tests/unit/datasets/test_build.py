"""Tests of the dataset build on hand-built logs with known answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from feedforge.config import DatasetConfig, Settings, load_settings
from feedforge.datasets.build import build_dataset, label_positives, split_bounds
from feedforge.datasets.load import load_dataset
from feedforge.errors import ArtifactError, DataError, ValidationError
from feedforge.events.catalog import write_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA
from feedforge.workdir import Workdir

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
T2 = END - timedelta(days=1)
T1 = T2 - timedelta(days=1)
WINDOW = timedelta(seconds=1800)


def _items(**extra: Any) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "item_id": ["i1", "i2", "i3"],
            "title": ["one", "two", "three"],
            "categories": [["drama"], ["comedy"], []],
            "created_at": [START - timedelta(days=30)] * 3,
            "duration_seconds": [100.0, None, 100.0],
            "price": [None, 1.99, None],
        },
        schema=ITEM_SCHEMA,
    )
    return frame.with_columns(**extra)


def _row(event_id: str, ts: datetime, user: str, item: str, kind: str, **extra: Any) -> dict:
    return {
        "event_id": event_id,
        "timestamp": ts,
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        **extra,
    }


def _log(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def _settings(**dataset: Any) -> Settings:
    return load_settings(
        None, dataset={"validation_days": 1, "test_days": 1, "attribution_seconds": 1800, **dataset}
    )


def _impression(event_id: str, ts: datetime, user: str = "u1", item: str = "i1") -> dict:
    return _row(event_id, ts, user, item, "impression", request_id=f"r-{event_id}", position=0)


EDGE_ROWS = [
    _impression("imp_start", START),
    _row("clk_start", START + timedelta(seconds=5), "u1", "i1", "click", request_id="r-imp_start"),
    _impression("imp_train", T1 - timedelta(hours=2)),
    _impression("imp_window_ends_at_t1", T1 - WINDOW),
    _impression("imp_crosses_t1", T1 - timedelta(minutes=10)),
    _impression("imp_at_t1", T1),
    _impression("imp_crosses_t2", T2 - timedelta(minutes=1)),
    _impression("imp_at_t2", T2, user="u_test_only", item="i3"),
    _impression("imp_crosses_end", END - timedelta(minutes=10)),
    _row("clk_before_t1", T1 - timedelta(microseconds=1), "u2", "i2", "click"),
    _row("clk_at_t1", T1, "u2", "i2", "click"),
    _row("clk_end", END, "u2", "i2", "click"),
]


@pytest.fixture
def edge_workdir(tmp_path: Path) -> Workdir:
    workdir = Workdir.at(tmp_path)
    write_catalog(workdir, _items(), pl.DataFrame({"user_id": ["u1", "u2"]}))
    EventLog(workdir.events_dir).append(_log(EDGE_ROWS))
    return workdir


def _ranking_ids(workdir: Workdir, split: str) -> list[str]:
    frame = pl.read_parquet(workdir.dataset_dir / f"ranking_{split}.parquet")
    return sorted(frame.get_column("event_id").to_list())


def test_impressions_whose_window_crosses_a_split_edge_are_dropped(edge_workdir: Workdir) -> None:
    manifest = build_dataset(edge_workdir, _settings())
    assert manifest.extra["split"]["t1"] == T1.isoformat()
    assert manifest.extra["split"]["t2"] == T2.isoformat()
    assert _ranking_ids(edge_workdir, "train") == sorted(
        ["imp_start", "imp_train", "imp_window_ends_at_t1"]
    )
    assert _ranking_ids(edge_workdir, "validation") == ["imp_at_t1"]
    assert _ranking_ids(edge_workdir, "test") == ["imp_at_t2"]
    card = json.loads((edge_workdir.dataset_dir / "card.json").read_text())
    assert card["impressions_dropped_at_split_edges"] == 3


def test_positives_split_at_the_exact_boundary(edge_workdir: Workdir) -> None:
    build_dataset(edge_workdir, _settings())
    ids = {
        split: sorted(
            pl.read_parquet(edge_workdir.dataset_dir / f"positives_{split}.parquet")
            .get_column("event_id")
            .to_list()
        )
        for split in ("train", "validation", "test")
    }
    assert ids == {
        "train": ["clk_before_t1", "clk_start"],
        "validation": ["clk_at_t1"],
        "test": ["clk_end"],
    }


def test_id_maps_hold_only_train_ids(edge_workdir: Workdir) -> None:
    build_dataset(edge_workdir, _settings())
    dataset = load_dataset(edge_workdir)
    assert dataset.users.ids.to_list() == ["u1", "u2"]
    assert dataset.items.ids.to_list() == ["i1", "i2"]
    test_rows = dataset.ranking("test")
    assert test_rows.get_column("user_idx").to_list() == [None]
    assert test_rows.get_column("item_idx").to_list() == [None]


def test_train_label_of_the_first_impression(edge_workdir: Workdir) -> None:
    build_dataset(edge_workdir, _settings())
    train = load_dataset(edge_workdir).ranking("train").sort("timestamp")
    assert train.get_column("clicked").to_list() == [True, False, False]


def test_build_needs_a_catalog(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path)
    with pytest.raises(ArtifactError, match="feedforge simulate"):
        build_dataset(workdir, _settings())


def test_build_of_an_empty_log(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path)
    write_catalog(workdir, _items(), pl.DataFrame({"user_id": ["u1"]}))
    with pytest.raises(DataError, match="empty"):
        build_dataset(workdir, _settings())


def test_split_bounds_of_a_short_log() -> None:
    events = _log([_impression("a", START), _impression("b", START + timedelta(days=2))])
    with pytest.raises(DataError, match="too short"):
        split_bounds(events.lazy(), DatasetConfig(validation_days=1, test_days=1))
    bounds = split_bounds(events.lazy(), DatasetConfig(validation_days=0.5, test_days=0.5))
    assert bounds == {
        "start": START,
        "t1": START + timedelta(days=1),
        "t2": START + timedelta(days=1.5),
        "end": START + timedelta(days=2),
    }


def test_load_dataset_errors(edge_workdir: Workdir) -> None:
    with pytest.raises(ArtifactError, match="feedforge build"):
        load_dataset(edge_workdir)
    build_dataset(edge_workdir, _settings())
    dataset = load_dataset(edge_workdir)
    with pytest.raises(ValidationError, match="unknown split"):
        dataset.ranking("holdout")
    (edge_workdir.dataset_dir / "ranking_test.parquet").unlink()
    with pytest.raises(ArtifactError, match="ranking_test"):
        dataset.ranking("test")


def test_label_positives_rules() -> None:
    t = START + timedelta(hours=1)
    rows = [
        _row("watch_half", t, "u", "i1", "watch", watch_seconds=50.0),  # duration 100: >= 0.5
        _row("watch_short", t, "u", "i1", "watch", watch_seconds=49.9),
        _row("watch_no_duration", t, "u", "i2", "watch", watch_seconds=0.1),
        _row("watch_zero_no_duration", t, "u", "i2", "watch", watch_seconds=0.0),
        _row("rating_high", t, "u", "i1", "rating", value=4.0),
        _row("rating_low", t, "u", "i1", "rating", value=3.5),
        _row("click", t, "u", "i1", "click"),
        _row("like", t, "u", "i1", "like"),
        _row("purchase", t, "u", "i2", "purchase", price=1.99),
        _row("impression", t, "u", "i1", "impression"),
        _row("skip", t, "u", "i1", "skip"),
        _row("watch_unknown_item", t, "u", "i-nope", "watch", watch_seconds=3.0),
    ]
    out = label_positives(_log(rows).lazy(), _items(), DatasetConfig()).collect()
    flags = {r["event_id"]: r for r in out.iter_rows(named=True)}
    assert sorted(flags) == sorted(
        [
            "watch_half",
            "watch_no_duration",
            "rating_high",
            "click",
            "like",
            "purchase",
            "watch_unknown_item",
        ]
    )
    assert flags["watch_half"]["watch"] and not flags["watch_half"]["click"]
    assert flags["rating_high"]["rated"]
    assert flags["purchase"]["purchase"]
    assert {k: flags[k]["weight"] for k in ("click", "watch_half", "like", "purchase")} == {
        "click": 1.0,
        "watch_half": 2.0,
        "like": 2.0,
        "purchase": 3.0,
    }
    assert out.get_column("event_id").n_unique() == out.height


def test_test_outcomes_are_the_test_windows_per_pair_sums(edge_workdir: Workdir) -> None:
    EventLog(edge_workdir.events_dir).append(
        _log(
            [
                _row("watch_before_t2", T2 - timedelta(minutes=1), "u1", "i1", "watch",
                     watch_seconds=99.0),
                _row("watch_a", T2 + timedelta(hours=1), "u1", "i1", "watch", watch_seconds=30.0),
                _row("watch_b", T2 + timedelta(hours=2), "u1", "i1", "watch", watch_seconds=20.0),
                _row("buy", T2 + timedelta(hours=3), "u1", "i2", "purchase", price=1.99),
                _row("like", T2 + timedelta(hours=3), "u1", "i3", "like"),
            ]
        )
    )  # fmt: skip
    manifest = build_dataset(edge_workdir, _settings())
    outcomes = load_dataset(edge_workdir).test_outcomes()
    rows = outcomes.select("user_id", "item_id", "clicks", "watch_seconds", "revenue").rows()
    assert rows == [
        ("u1", "i1", 0, 50.0, 0.0),
        ("u1", "i2", 0, 0.0, 1.99),
        ("u2", "i2", 1, 0.0, 0.0),
    ]
    assert outcomes.get_column("user_idx").to_list() == [0, 0, 1]
    assert manifest.counts["outcomes_test"] == 3


def test_a_dataset_of_an_older_schema_is_refused(edge_workdir: Workdir) -> None:
    build_dataset(edge_workdir, _settings())
    path = edge_workdir.dataset_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "schema_version": 1}))
    with pytest.raises(ArtifactError, match="schema version 1 is not supported") as caught:
        load_dataset(edge_workdir)
    assert "feedforge build" in str(caught.value)
