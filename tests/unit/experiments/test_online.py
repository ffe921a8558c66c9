"""Online metrics from a feed log and events: attribution by request id within the window,
unattributable events counted, CUPED's pre-period, guardrails, interleaving credit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedforge.errors import DataError, ValidationError
from feedforge.events.schema import EVENT_SCHEMA
from feedforge.experiments.analysis import analyze, interleaving_preference
from feedforge.experiments.definition import parse_experiment
from feedforge.experiments.interleaving import team_draft
from feedforge.experiments.online import OnlineMetrics, online_metrics, read_feed_log
from feedforge.serving.feedlog import FeedLog

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)


def experiment(mode: str = "ab"):
    return parse_experiment(
        {
            "id": "e",
            "mode": mode,
            "status": "running",
            "started_at": T0 - timedelta(minutes=1),
            "attribution_window_s": 3600,
            "variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5}],
        }
    )


def events(rows: list[dict]) -> pl.LazyFrame:
    full = [
        {
            "event_id": f"x{n}",
            "watch_seconds": None,
            "price": None,
            "value": None,
            "position": None,
            "surface": None,
            "device": None,
            **row,
        }
        for n, row in enumerate(rows)
    ]
    return pl.DataFrame(full, schema=EVENT_SCHEMA).lazy()


def feed_log(tmp_path: Path, lines: list[dict]) -> pl.DataFrame:
    log = FeedLog(tmp_path / "feedlog")
    for line in lines:
        log.write(line)
    log.close()
    frame = read_feed_log(tmp_path / "feedlog")
    # Written now; moved to T0 so the events below are after their feeds.
    return frame.with_columns(pl.lit(T0).alias("ts"))


def line(request: str, user: str, variant: str, items: list[str], **extra: object) -> dict:
    return {
        "request_id": request,
        "user_id": user,
        "version": "v1",
        "degraded": False,
        "items": items,
        "scores": [1.0] * len(items),
        "propensities": [1.0] * len(items),
        "latency_ms": 5.0,
        "experiments": [{"experiment": "e", "variant": variant, "version": "v1"}],
        **extra,
    }


def test_events_are_attributed_by_request_id_within_the_window(tmp_path: Path) -> None:
    log = feed_log(
        tmp_path,
        [
            line("r1", "u1", "a", ["i1", "i2"]),
            line("r2", "u2", "b", ["i1"]),
            line("r3", "u2", "b", [], error="StoreError"),
            {"request_id": "r4", "user_id": "u3", "items": ["i9"], "version": "v1"},
        ],
    )
    at = T0 + timedelta(minutes=5)
    evs = events(
        [
            {
                "timestamp": at,
                "user_id": "u1",
                "item_id": "i1",
                "event_type": "impression",
                "request_id": "r1",
            },
            {
                "timestamp": at,
                "user_id": "u1",
                "item_id": "i1",
                "event_type": "click",
                "request_id": "r1",
            },
            {
                "timestamp": at,
                "user_id": "u1",
                "item_id": "i1",
                "event_type": "watch",
                "request_id": "r1",
                "watch_seconds": 120.0,
            },
            # after the window: not attributed
            {
                "timestamp": T0 + timedelta(hours=2),
                "user_id": "u1",
                "item_id": "i2",
                "event_type": "click",
                "request_id": "r1",
            },
            # no request id, and an unknown request id: counted
            {
                "timestamp": at,
                "user_id": "u2",
                "item_id": "i1",
                "event_type": "click",
                "request_id": None,
            },
            {
                "timestamp": at,
                "user_id": "u2",
                "item_id": "i1",
                "event_type": "click",
                "request_id": "nope",
            },
            {
                "timestamp": at,
                "user_id": "u2",
                "item_id": "i1",
                "event_type": "purchase",
                "request_id": "r2",
                "price": 9.5,
            },
            # the pre-period (CUPED's covariate)
            {
                "timestamp": T0 - timedelta(hours=3),
                "user_id": "u1",
                "item_id": "i5",
                "event_type": "click",
                "request_id": None,
            },
        ]
    )
    metrics = online_metrics(
        experiment(), log, evs, {"watch_seconds": 1.0}, now=T0 + timedelta(hours=3)
    )
    units = {row["user_id"]: row for row in metrics.units.iter_rows(named=True)}
    assert set(units) == {"u1", "u2"}  # u3 is in no experiment
    assert units["u1"]["clicks"] == 1 and units["u1"]["impressions"] == 1
    assert units["u1"]["watch_minutes"] == 2.0 and units["u1"]["objective"] == 120.0
    assert units["u1"]["pre_clicks"] == 1
    assert units["u2"]["revenue"] == 9.5 and units["u2"]["clicks"] == 0
    assert units["u2"]["feeds"] == 1  # the failed request is not a served feed
    assert metrics.counts["events_without_request_id"] == 2
    assert metrics.counts["events_of_unknown_requests"] == 1
    assert metrics.counts["failed_requests"] == 1
    assert metrics.guardrails["b"]["error_rate"] == 0.5
    assert metrics.guardrails["a"]["latency_p99_ms"] == 5.0


def test_no_exposure_and_too_few_units_are_refused(tmp_path: Path) -> None:
    log = feed_log(tmp_path, [{"request_id": "r", "user_id": "u", "items": [], "version": "v"}])
    with pytest.raises(DataError, match="experiment 'e': no feed in the log"):
        online_metrics(experiment(), log, events([]), {"clicked": 1.0})
    log = feed_log(tmp_path / "2", [line("r1", "u1", "a", ["i1"]), line("r2", "u2", "b", ["i1"])])
    metrics = online_metrics(experiment(), log, events([]), {"clicked": 1.0})
    with pytest.raises(ValidationError, match="experiment 'e': variant 'a' has 1 exposed units"):
        analyze(experiment(), metrics)


def test_interleaving_credit_goes_to_the_team_of_the_engaged_slot(tmp_path: Path) -> None:
    lines, rows = [], []
    at = T0 + timedelta(minutes=1)
    for n in range(30):
        user = f"u{n}"
        lines.append(line(f"r{n}", user, "interleaved", ["x", "y"], teams=["a", "b"]))
        # 25 users engage with team a's slot, 5 with team b's
        item = "x" if n < 25 else "y"
        rows.append(
            {
                "timestamp": at,
                "user_id": user,
                "item_id": item,
                "event_type": "click",
                "request_id": f"r{n}",
            }
        )
    metrics = online_metrics(
        experiment("interleave"), feed_log(tmp_path, lines), events(rows), {"clicked": 1.0}
    )
    result = interleaving_preference(experiment("interleave"), metrics)
    assert result["prefer"] == {"a": 25, "b": 5, "tie": 0}
    assert result["winner"] == "a" and result["p_value"] < 0.001


def test_team_draft_alternates_and_never_repeats_an_item() -> None:
    rng = np.random.default_rng(0)
    a, b = ["1", "2", "3", "4"], ["3", "5", "1", "6"]
    for _ in range(50):
        got = team_draft(a, b, 6, rng)
        assert len(set(got.item_ids)) == len(got.item_ids) == 6
        for end in range(2, 7, 2):
            assert got.teams[:end].count(0) == end // 2
        for item, team, rank in zip(got.item_ids, got.teams, got.source_ranks, strict=True):
            assert (a, b)[team][rank] == item
    # one ranking runs out: the other fills the feed
    assert team_draft(["1"], ["2", "3", "4"], 4, rng).item_ids[-2:] == ["3", "4"]


def test_the_credit_test_decides_where_the_vote_and_the_mean_disagree() -> None:
    # 20 units earn b a little more, 6 earn a a lot more: b wins the vote, a the mean.
    credit_a = [0.0] * 20 + [100.0] * 6
    credit_b = [1.0] * 20 + [0.0] * 6
    frame = pl.DataFrame(
        {"user_id": [f"u{n}" for n in range(26)], "credit_a": credit_a, "credit_b": credit_b}
    )
    metrics = OnlineMetrics(units=pl.DataFrame(), guardrails={}, interleaving=frame)
    result = interleaving_preference(experiment("interleave"), metrics)
    assert result["prefer"] == {"a": 6, "b": 20, "tie": 0}
    assert result["delta"] < 0  # the vote goes to b
    diff = np.array(credit_a) - np.array(credit_b)
    assert result["credit"]["mean_difference"] == pytest.approx(diff.mean())
    from scipy import stats as sps

    assert result["credit"]["p_value"] == pytest.approx(sps.ttest_1samp(diff, 0).pvalue)
    assert result["winner"] == "a"


def test_feed_kpis_per_version_and_variant(tmp_path: Path) -> None:
    from feedforge.experiments.online import feed_kpis

    log = feed_log(
        tmp_path,
        [
            line("r1", "u1", "a", ["i1", "i2"]),
            line("r2", "u2", "b", ["i1"]),
            line("r3", "u2", "b", [], error="StoreError"),  # failed: not a served feed
            {"request_id": "r4", "user_id": "u3", "items": ["i9"], "version": "v2"},
        ],
    )
    at = T0 + timedelta(minutes=5)

    def ev(kind: str, request: str, user: str, **extra: object) -> dict:
        return {"timestamp": at, "user_id": user, "item_id": "i1", "event_type": kind,
                "request_id": request, **extra}  # fmt: skip

    evs = events(
        [
            ev("impression", "r1", "u1"),
            ev("impression", "r1", "u1"),
            ev("click", "r1", "u1"),
            ev("watch", "r1", "u1", watch_seconds=600.0),
            ev("impression", "r2", "u2"),
            ev("purchase", "r2", "u2", price=9.5),
            ev("click", "r4", "u3"),
            {**ev("click", "r1", "u1"), "timestamp": at + timedelta(hours=2)},  # too late
            {**ev("click", "r2", "u1")},  # another user's request: not attributed
        ]
    )
    kpis = feed_kpis(log, evs, T0 - timedelta(hours=1), attribution_window_s=3600)
    rows = {(r["version"], r["variant"]): r for r in kpis.iter_rows(named=True)}
    assert set(rows) == {("v1", "e.a"), ("v1", "e.b"), ("v2", "default")}
    a, b, default = rows[("v1", "e.a")], rows[("v1", "e.b")], rows[("v2", "default")]
    assert a["feeds"] == 1 and a["ctr"] == pytest.approx(0.5)
    assert a["watch_minutes_per_feed"] == pytest.approx(10.0)
    assert b["feeds"] == 1 and b["ctr"] == 0.0 and b["revenue_per_feed"] == pytest.approx(9.5)
    assert default["feeds"] == 1 and default["ctr"] == 0.0  # a click without impressions
    # Feeds before the window are left out.
    assert feed_kpis(log, evs, T0 + timedelta(seconds=1), 3600).height == 0
