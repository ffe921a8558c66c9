"""Training-serving skew on a small hand-built work directory (no training): the feature log
reader, the per-feature comparison, and :func:`skew_report` against rows computed the way the
service computes them (store records -> :func:`raw_from_table` -> :func:`derive_features`,
retrieval score ``V[item] · u``). The real service's log is checked end to end in
``tests/integration/test_skew.py``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from feedforge.artifacts import Manifest, write_manifest
from feedforge.cli import app
from feedforge.errors import DataError
from feedforge.events.catalog import write_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA
from feedforge.features.definitions import FEATURES, derive_features
from feedforge.features.item_table import ItemTable, raw_from_table
from feedforge.features.offline import snapshot_candidate_counters, snapshot_counters
from feedforge.features.online import item_records, user_records
from feedforge.monitoring.skew import (
    NO_CANDIDATES,
    RETRIEVAL,
    UNKNOWN_VERSION,
    FeatureSkew,
    SkewReport,
    compare_feature,
    read_feature_log,
    skew_report,
)
from feedforge.serving.feedlog import FeedLog
from feedforge.store.bundle import BUNDLE_ARTIFACT, BUNDLE_SCHEMA_VERSION
from feedforge.store.embedded import EmbeddedStore
from feedforge.store.keys import ITEM_EMB, ITEM_FEAT, USER_EMB, USER_FEAT
from feedforge.workdir import Workdir

T = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
VERSION = "v1"
N_CATEGORIES = 3
USERS = [f"u{j}" for j in range(8)]
EMBEDDED_USERS = USERS[:6]  # u6, u7: no embedding (retrieval score 0 on both sides)
ITEMS = pl.DataFrame(
    {
        "item_id": [f"i{j}" for j in range(6)],
        "title": [f"item {j}" for j in range(6)],
        "categories": [["drama"], ["comedy"], ["news", "drama"], [], ["drama"], ["comedy"]],
        "created_at": [T - timedelta(days=d) for d in (1, 3, 10, 0.5, 40, -0.1)],
        "duration_seconds": [600.0, None, 1800.0, 60.0, 300.0, 90.0],
        "price": [None, 2.5, None, 0.0, 9.99, None],
    },
    schema=ITEM_SCHEMA,
)  # fmt: skip


def _events(rng: np.random.Generator) -> pl.DataFrame:
    rows = []
    for n in range(400):
        ts = T - timedelta(seconds=float(rng.uniform(-7_200, 9 * 86_400)))  # some after T
        kind = "impression" if rng.random() < 0.7 else "click"
        device = (["tv", "mobile", "web", "other", None][int(rng.integers(5))]
                  if kind == "impression" else None)  # fmt: skip
        rows.append(
            {
                "event_id": f"e{n}",
                "timestamp": ts,
                "user_id": USERS[int(rng.integers(len(USERS)))],
                "item_id": f"i{int(rng.integers(7))}",  # i6: not in the catalog
                "event_type": kind,
                "device": device,
            }
        )
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


@dataclass
class World:
    workdir: Workdir
    store: EmbeddedStore
    user_vectors: dict[str, np.ndarray]
    item_ids: list[str]
    item_matrix: np.ndarray


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A work directory with catalog and events, and version ``v1`` published into an
    embedded store by hand (snapshot at ``T``), as the publisher does."""
    rng = np.random.default_rng(0)
    workdir = Workdir.at(tmp_path / "w")
    write_catalog(workdir, ITEMS, pl.DataFrame({"user_id": USERS}))
    EventLog(workdir.events_dir).append(_events(rng))
    events = EventLog(workdir.events_dir).scan()
    users, items, cats = snapshot_counters(events, ITEMS, T)
    seen = pl.DataFrame(schema={"user_id": pl.String, "seen": pl.List(pl.String)})
    store = EmbeddedStore(workdir.store_path)
    u_ids, u_recs = user_records(users, cats, seen)
    i_ids, i_recs = item_records(items)
    store.put_records(VERSION, USER_FEAT, u_ids, u_recs)
    store.put_records(VERSION, ITEM_FEAT, i_ids, i_recs)
    served = [f"i{j}" for j in range(7)]
    item_matrix = rng.normal(size=(len(served), 4)).astype(np.float32)
    user_matrix = rng.normal(size=(len(EMBEDDED_USERS), 4)).astype(np.float32)
    store.put_vectors(VERSION, ITEM_EMB, served, item_matrix)
    store.put_vectors(VERSION, USER_EMB, EMBEDDED_USERS, user_matrix)
    meta = {"version": VERSION, "snapshot_time": T.isoformat(), "n_categories": N_CATEGORIES}
    store.put_meta(VERSION, meta)
    vectors = dict(zip(EMBEDDED_USERS, user_matrix, strict=True))
    yield World(workdir, store, vectors, served, item_matrix)
    store.close()


def _serve_log(world: World, n_requests: int = 12, **line: Any) -> None:
    """Log ``n_requests`` requests whose features are computed the way the service does."""
    store = world.store
    table = ItemTable.from_records(store.get_records(VERSION, ITEM_FEAT, world.item_ids))
    log = FeedLog(world.workdir.featurelog_dir, max_items=10_000)
    for n in range(n_requests):
        user = USERS[n % len(USERS)]
        device = (None, "tv", "mobile", "web")[n % 4]
        now_s = T.timestamp() + 1_234.567 * n  # crosses hours
        idx = np.arange(len(world.item_ids))
        record = store.get_records(VERSION, USER_FEAT, [user])[0]
        raw, _ = raw_from_table(record, table, idx, now_s, device)
        u = world.user_vectors.get(user)
        retrieval = (world.item_matrix @ u).astype(np.float64) if u is not None else np.zeros(7)
        X = derive_features(raw, retrieval, N_CATEGORIES)
        log.write(
            {
                "request_id": f"r{n}",
                "user_id": user,
                "device": device,
                "version": VERSION,
                "variant": "default",
                "scored_at_s": now_s,
                "names": list(FEATURES),
                "item_ids": world.item_ids,
                "features": X.tolist(),
                **line,
            }
        )
    log.close()


def test_logged_rows_equal_their_recompute(world: World) -> None:
    _serve_log(world)
    report = skew_report(world.workdir, world.store)
    assert report.requests == 12 and report.rows == 12 * 7
    assert report.skipped == {} and report.bad_lines == [] and report.notes == []
    assert {f.feature for f in report.features} == set(FEATURES)
    for feature in report.features:
        assert feature.rows == report.rows
        assert feature.mismatches == 0, (feature.feature, feature.example)
    assert report.live_history_rows == 0 and report.live_history_source == "store"
    json.dumps(report.to_json(), allow_nan=False)  # plain JSON


def test_an_online_bug_is_found_and_ranked_worst(world: World) -> None:
    _serve_log(world)
    (path,) = world.workdir.featurelog_dir.glob("feeds-*.jsonl")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    j = FEATURES.index("hour_sin")
    for line in lines[::2]:  # half the requests: the hour of another time zone, 1 hour off
        hour = datetime.fromtimestamp(line["scored_at_s"], UTC).hour + 1
        for row in line["features"]:
            row[j] = float(np.sin(2 * np.pi * hour / 24))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    report = skew_report(world.workdir, world.store)
    worst = report.worst()[0]
    assert worst.feature == "hour_sin"
    assert worst.mismatch_rate == pytest.approx(0.5)
    assert worst.example is not None and worst.example["request_id"] in {"r0", "r2", "r4"}
    assert all(f.mismatches == 0 for f in report.worst()[1:])
    assert [f.feature for f in report.over(0.1)] == ["hour_sin"]


def test_live_history_is_counted_apart(world: World) -> None:
    world.store.append_history("u0", ["i1"], 10)
    _serve_log(world, n_requests=8)
    report = skew_report(world.workdir, world.store)
    assert report.live_history_rows == 7  # u0's one request
    assert {f.live_history_rows for f in report.features} == {7}
    _serve_log(world, n_requests=8, live_history=0)  # the log's word wins over the store's
    logged = skew_report(world.workdir, world.store)
    assert logged.live_history_source == "log, else store"
    assert logged.live_history_rows == 7


def test_a_version_gone_from_the_store(world: World) -> None:
    _serve_log(world)
    meta = world.store.get_meta(VERSION)
    world.store.delete_version(VERSION)
    report = skew_report(world.workdir, world.store)
    assert report.skipped == {UNKNOWN_VERSION: 12} and report.features == []
    # Its bundle still on disk: every feature but the retrieval score is compared.
    bundle = Manifest(BUNDLE_ARTIFACT, BUNDLE_SCHEMA_VERSION, version=VERSION, extra=meta or {})
    write_manifest(world.workdir.bundles_dir / VERSION, bundle)
    report = skew_report(world.workdir, world.store)
    assert report.requests == 12 and report.skipped == {}
    assert RETRIEVAL not in {f.feature for f in report.features}
    assert all(f.mismatches == 0 for f in report.features)
    assert any(RETRIEVAL in note for note in report.notes)


def test_bad_lines_are_named_and_the_others_compared(world: World) -> None:
    _serve_log(world, n_requests=4)
    (path,) = world.workdir.featurelog_dir.glob("feeds-*.jsonl")
    good = path.read_text(encoding="utf-8").splitlines()
    short = json.loads(good[0]) | {"item_ids": ["i0"]}
    empty = json.loads(good[0]) | {"item_ids": [], "features": [], "request_id": "none"}
    no_user = json.loads(good[0]) | {"user_id": None}
    lines = [good[0], "{not json", json.dumps(short), good[1], json.dumps(no_user),
             json.dumps(empty), good[2], good[3]]  # fmt: skip
    path.write_text("\n".join(lines) + "\n" + '{"ts": "2026-', encoding="utf-8")
    log = read_feature_log(world.workdir.featurelog_dir)
    assert [e.split(": ")[0] for e in log.errors] == [f"{path}:{n}" for n in (2, 3, 5, 9)]
    assert f"shape (7, {len(FEATURES)}), expected (1, {len(FEATURES)})" in log.errors[1]
    assert "'user_id'" in log.errors[2]
    assert "unfinished last line" in log.errors[3]
    assert log.requests.get_column("line").to_list() == [1, 4, 6, 7, 8]
    report = skew_report(world.workdir, world.store, feature_log=log)
    assert report.requests == 4 and report.skipped == {NO_CANDIDATES: 1}
    assert report.bad_lines == log.errors
    assert all(f.mismatches == 0 for f in report.features)


def test_since_keeps_later_requests(world: World) -> None:
    _serve_log(world, n_requests=3)
    (path,) = world.workdir.featurelog_dir.glob("feeds-*.jsonl")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    lines[0]["ts"] = "2020-01-01T00:00:00+00:00"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    log = read_feature_log(world.workdir.featurelog_dir, since=datetime(2021, 1, 1))
    assert log.requests.get_column("request_id").to_list() == ["r1", "r2"]
    report = skew_report(world.workdir, world.store, since=datetime(2021, 1, 1))
    assert report.requests == 2 and report.since == datetime(2021, 1, 1, tzinfo=UTC)


def test_no_feature_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no feature log in .*monitoring\.skew_sample"):
        read_feature_log(tmp_path)


def test_logged_names_other_than_the_code_s(tmp_path: Path) -> None:
    line = {"ts": "2026-01-01T00:00:00+00:00", "user_id": "u", "version": "v",
            "scored_at_s": 1.0, "names": ["a", "b"], "item_ids": ["i"],
            "features": [[1.0, None]]}  # fmt: skip
    (tmp_path / "feeds-20260101-000000-1-000001.jsonl").write_text(json.dumps(line) + "\n")
    log = read_feature_log(tmp_path)
    assert log.names == ["a", "b"] and log.errors == []
    assert np.isnan(log.rows.item(0, "b")) and log.requests.item(0, "variant") == "default"


# -- the comparison ----------------------------------------------------------------------------
def _keys(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_id": [f"r{j}" for j in range(n)],
            "user_id": ["u"] * n,
            "item_id": [f"i{j}" for j in range(n)],
            "version": ["v"] * n,
        }
    )


def test_compare_feature_tolerance_nan_and_example() -> None:
    offline = np.array([1.0, 1.0, 100.0, 0.0, np.nan, np.nan, 2.0, 5.0])
    online = np.array([1.0 + 5e-7, 1.0 + 2e-4, 100.0 + 5e-3, 2e-6, np.nan, 1.0, 2.0, 8.0])
    live = np.array([False, False, False, False, False, False, True, True])
    f = compare_feature("x", online, offline, live, _keys(8))
    # within atol; over (atol + rtol); within rtol * 100; over atol; NaN both; NaN vs 1; live.
    assert f.mismatches == 4 and f.rows == 8 and f.mismatch_rate == 0.5
    assert f.live_history_rows == 2 and f.live_history_mismatches == 1
    assert f.mismatch_rate_without_live_history == pytest.approx(3 / 6)
    assert f.max_abs_diff == pytest.approx(3.0)
    assert f.mean_abs_diff == pytest.approx((2e-4 + 2e-6 + 3.0) / 3)
    assert f.mean_rel_diff == pytest.approx((2e-4 + 3.0 / 5.0) / 2)
    assert f.example == {"request_id": "r7", "user_id": "u", "item_id": "i7", "version": "v",
                         "online": 8.0, "offline": 5.0}  # fmt: skip
    only_nan = compare_feature("y", np.array([np.nan]), np.array([1.0]), np.array([False]),
                               _keys(1))  # fmt: skip
    assert only_nan.mismatches == 1 and only_nan.max_abs_diff is None
    assert only_nan.example is not None and only_nan.example["online"] == "nan"
    json.dumps(only_nan.to_json(), allow_nan=False)


def test_report_ranks_worst_first() -> None:
    features = [
        FeatureSkew("b", 10, 1, 0.1, max_abs_diff=5.0),
        FeatureSkew("a", 10, 0, 0.0),
        FeatureSkew("c", 10, 1, 0.1, max_abs_diff=9.0),
        FeatureSkew("d", 10, 9, 0.9, max_abs_diff=0.1),
    ]
    report = SkewReport(features=features, requests=1, rows=10)
    assert [f.feature for f in report.worst()] == ["d", "c", "b", "a"]
    assert [f.feature for f in report.over(0.05)] == ["d", "c", "b"]
    assert [f["feature"] for f in report.to_json()["features"]] == ["d", "c", "b", "a"]


def test_per_row_clock_and_device_equal_one_call_per_request(world: World) -> None:
    """The skew check's vectorised recompute (a scoring time and device per row) gives what
    one :func:`snapshot_candidate_counters` call per request gives."""
    snapshot = snapshot_counters(EventLog(world.workdir.events_dir).scan(), ITEMS, T)
    requests = [("u0", T + timedelta(minutes=50), None), ("u3", T + timedelta(hours=5), "web"),
                ("u9", T - timedelta(hours=11), "tv")]  # fmt: skip
    items = ["i0", "i2", "i5", "i6", "i9"]
    per_request = [
        snapshot_candidate_counters(
            pl.DataFrame({"user_id": [user] * len(items), "item_id": items}), snapshot, at, device
        )
        for user, at, device in requests
    ]
    rows = pl.DataFrame(
        {
            "user_id": [u for u, _, _ in requests for _ in items],
            "item_id": items * len(requests),
            "at": [at for _, at, _ in requests for _ in items],
            "dev": [d for _, _, d in requests for _ in items],
        },
        schema_overrides={"at": pl.Datetime("us", "UTC"), "dev": pl.String},
    )
    together = snapshot_candidate_counters(rows, snapshot, pl.col("at"), pl.col("dev"))
    expected = pl.concat(per_request)
    for name in ("item_age_seconds", "hour", "device_code", "user_clicks", "item_impressions_7d",
                 "user_category_clicks"):  # fmt: skip
        assert together.get_column(name).to_list() == expected.get_column(name).to_list(), name


# -- the command -------------------------------------------------------------------------------
def test_the_command_prints_writes_and_exits_0(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("FEEDFORGE_"):
            monkeypatch.delenv(name)
    root = str(world.workdir.root)
    missing = CliRunner().invoke(app, ["monitor", "skew", "--workdir", root])
    assert missing.exit_code == 1 and "no feature log in" in missing.output
    _serve_log(world)
    result = CliRunner().invoke(app, ["monitor", "skew", "--workdir", root])
    assert result.exit_code == 0, result.output
    assert "compared 12 request(s), 84 candidate row(s)" in result.output
    assert "item_age_days_log" in result.output
    written = json.loads((world.workdir.reports_dir / "skew.json").read_text(encoding="utf-8"))
    assert written["requests"] == 12 and len(written["features"]) == len(FEATURES)
    out = tmp_path / "out" / "skew.json"
    args = ["--json-out", str(out), "--fail-over", "0", "--since", "2000-01-01T00:00"]
    passed = CliRunner().invoke(app, ["monitor", "skew", "--workdir", root, *args])
    assert passed.exit_code == 0, passed.output  # no mismatch at all
    assert json.loads(out.read_text(encoding="utf-8"))["since"] == "2000-01-01T00:00:00+00:00"
    bad = CliRunner().invoke(app, ["monitor", "skew", "--workdir", root, "--since", "yesterday"])
    assert bad.exit_code == 1 and "--since" in bad.output
    nowhere = CliRunner().invoke(app, ["monitor", "skew", "--workdir", str(tmp_path / "typo")])
    assert nowhere.exit_code == 1 and "missing work directory" in nowhere.output
