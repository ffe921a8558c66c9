"""``evaluate`` measures a dataset version, not the live event log.

Events ingested after ``feedforge build`` (late arrivals before the test window, events inside
it and events after the log's end) must not change the evaluation of the same dataset and
models: the observed value@K and the two-stage pipeline's feature snapshot come from the
dataset's files, frozen at build time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from feedforge.artifacts import read_manifest
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.evaluation.evaluate import evaluate
from feedforge.events.log import EventLog
from feedforge.events.schema import EVENT_SCHEMA
from feedforge.models.registry import load_recommender
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


def _events(pairs: list[tuple[str, str]], ts: datetime, kind: str, tag: str) -> pl.DataFrame:
    """One ``kind`` event per (user, item) pair at ``ts`` (watches of 10 minutes)."""
    return pl.DataFrame(
        {
            "event_id": [f"late-{tag}-{n}" for n in range(len(pairs))],
            "timestamp": [ts] * len(pairs),
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "event_type": [kind] * len(pairs),
            "watch_seconds": [600.0 if kind == "watch" else None] * len(pairs),
        },
        schema_overrides={c: EVENT_SCHEMA[c] for c in ("timestamp", "watch_seconds")},
    )


def _recommended_pairs(workdir: Workdir, name: str, k: int) -> list[tuple[str, str]]:
    """Every (user, item) of model ``name``'s top ``k`` for every user of the id map."""
    dataset = load_dataset(workdir)
    model = load_recommender(name, workdir.model_dir(name))
    users = np.arange(len(dataset.users))
    recs, _ = model.recommend(users, k, exclude=dataset.train_interactions().to_csr())
    user_ids = dataset.users.id_of(np.repeat(users, recs.shape[1]))
    item_ids = dataset.items.id_of(recs.reshape(-1))
    return list(zip(user_ids, item_ids, strict=True))


def test_events_ingested_after_the_build_do_not_change_the_evaluation(
    workdir_copy: Callable[..., Workdir], small_settings: Settings
) -> None:
    assert small_settings.objective == "watch_time"  # so value@K is reported
    workdir = workdir_copy(publish=False)
    before = evaluate(workdir, small_settings)
    k = small_settings.evaluation.k
    two_stage = f"{small_settings.models.retrieval}+{small_settings.models.ranker.type}"
    assert f"watch_minutes@{k}" in before["models"][two_stage]
    assert f"watch_minutes@{k}" in before["models"]["popularity"]

    split = load_dataset(workdir).split_bounds
    t2, end = datetime.fromisoformat(split["t2"]), datetime.fromisoformat(split["end"])
    candidates = _recommended_pairs(
        workdir, small_settings.models.retrieval, small_settings.evaluation.candidates
    )
    popular = _recommended_pairs(workdir, "popularity", k)
    log = EventLog(workdir.events_dir)
    # Inside the test window: watches of every item the models would put in a feed.
    log.append(_events(candidates + popular, t2 + timedelta(hours=1), "watch", "in-test"))
    # After the log's end (the next day's ingest): more watches of the same feeds.
    log.append(_events(candidates + popular, end + timedelta(hours=1), "watch", "after-end"))
    # Late arrivals just before the test window: clicks that would move the feature snapshot.
    log.append(_events(candidates[::7], t2 - timedelta(hours=1), "click", "late"))

    after = evaluate(workdir, small_settings)
    changed = {
        f"{name}/{metric}": (value, after["models"][name].get(metric))
        for name, metrics in before["models"].items()
        for metric, value in metrics.items()
        if after["models"][name].get(metric) != value
    }
    assert not changed, changed  # (before, after) of every metric the new events moved
    # Everything but the run's own time (intervals and curves included) is the same.
    assert after.pop("created_at") > before.pop("created_at")
    assert after == before


def test_the_report_records_every_measured_models_version(
    workdir_copy: Callable[..., Workdir], small_settings: Settings
) -> None:
    workdir = workdir_copy(publish=False)
    report = evaluate(workdir, small_settings)
    names = ("popularity", small_settings.models.retrieval, small_settings.models.ranker.type)
    assert report["dataset_version"] == load_dataset(workdir).version
    assert report["model_versions"] == {
        name: read_manifest(workdir.model_dir(name), f"model/{name}", (1,), "train").version
        for name in names
    }
