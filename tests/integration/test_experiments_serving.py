"""Running experiments through the service (embedded store): assignment, serving overrides,
pinned versions, interleaving, exposure logging, and definitions changing under a running
service without failing a request."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.experiments.assignment import Assigner
from feedforge.experiments.registry import DOCUMENT, ExperimentRegistry
from feedforge.publish.versions import prune_versions
from feedforge.serving.app import create_app
from feedforge.serving.feedlog import read_feed_log
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration


def users(workdir: Workdir, n: int = 120) -> list[str]:
    return sorted(load_dataset(workdir).users.ids.to_list())[:n]


def feeds(client: TestClient, user_ids: list[str], k: int = 10) -> dict[str, dict[str, Any]]:
    out = {}
    for user in user_ids:
        response = client.get("/recommend", params={"user_id": user, "k": k})
        assert response.status_code == 200, response.text
        out[user] = response.json()
    return out


AB = {
    "id": "no-ranker",
    "variants": [
        {"name": "control", "weight": 0.5},
        {
            "name": "retrieval-order",
            "weight": 0.5,
            "overrides": {
                "ranker": False,
                "reranking": {"exploration": {"type": "epsilon_greedy", "epsilon": 0.5}},
            },
        },
    ],
}


def test_an_ab_experiment_assigns_serves_logs_and_stops(
    fresh_workdir: Workdir, small_settings: Settings
) -> None:
    workdir, people = fresh_workdir, users(fresh_workdir)
    with open_store(small_settings.store, workdir.store_path) as store:
        registry = ExperimentRegistry(store)
        registry.create(AB)
        started = registry.start("no-ranker")
        with TestClient(create_app(small_settings, workdir)) as client:
            answers = feeds(client, people)
            service = client.app.state.service  # type: ignore[attr-defined]
            expected = Assigner([started])
            by_variant: Counter[str] = Counter()
            for user, body in answers.items():
                (exposure,) = body["experiments"]
                variant = expected.assign(user)[0].variant.name
                assert exposure == {
                    "experiment": "no-ranker",
                    "variant": variant,
                    "version": body["version"],
                }
                by_variant[variant] += 1
                explored = any(item["propensity"] < 1 for item in body["items"])
                # epsilon 0.5 over 10 slots: the treatment explores in nearly every feed
                assert explored or variant == "control"
                if variant == "control":
                    assert all(item["propensity"] == 1 for item in body["items"])
            assert min(by_variant.values()) > 30
            registry.stop("no-ranker")
            service.experiments.refresh()
            after = feeds(client, people[:5])
            assert all("experiments" not in body for body in after.values())
    log = read_feed_log(workdir.feedlog_dir)
    exposed = log.filter(log.get_column("experiments").is_not_null())
    assert exposed.height == len(people)
    assert log.height == len(people) + 5
    assert (log.get_column("latency_ms") > 0).all()
    first = exposed.row(0, named=True)
    assert first["experiments"][0]["experiment"] == "no-ranker"


def test_a_variant_keeps_its_pinned_version_after_a_publish(
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    publish_into: Callable[[Workdir, Settings], str],
) -> None:
    workdir = workdir_copy()
    people = users(workdir, 60)
    with open_store(small_settings.store, workdir.store_path) as store:
        old = store.current_version()
        assert old is not None
        registry = ExperimentRegistry(store)
        registry.create(
            {
                "id": "pinned",
                "variants": [
                    {"name": "old", "weight": 0.5, "version": "current"},
                    {"name": "follow", "weight": 0.5},
                ],
            }
        )
        registry.start("pinned")
        new = publish_into(workdir, small_settings)
        assert new != old
        # Publishing again prunes old versions beyond keep_versions, never a pinned one.
        assert old not in prune_versions(workdir, store, keep=1, grace_s=0)
        assert old in store.versions()
        with TestClient(create_app(small_settings, workdir)) as client:
            answers = feeds(client, people)
    served = {body["experiments"][0]["variant"]: set() for body in answers.values()}
    for body in answers.values():
        served[body["experiments"][0]["variant"]].add(body["version"])
    assert served == {"old": {old}, "follow": {new}}


def test_an_interleaving_experiment_credits_each_slot_to_a_team(
    fresh_workdir: Workdir, small_settings: Settings
) -> None:
    people = users(fresh_workdir, 40)
    with open_store(small_settings.store, fresh_workdir.store_path) as store:
        registry = ExperimentRegistry(store)
        registry.create(
            {
                "id": "ranker-vs-retrieval",
                "mode": "interleave",
                "variants": [
                    {"name": "ranker", "weight": 0.5},
                    {"name": "retrieval", "weight": 0.5, "overrides": {"ranker": False}},
                ],
            }
        )
        registry.start("ranker-vs-retrieval")
        with TestClient(create_app(small_settings, fresh_workdir)) as client:
            answers = feeds(client, people)
    teams: Counter[str] = Counter()
    for body in answers.values():
        assert body["experiments"][0]["variant"] == "interleaved"
        slots = [item["team"] for item in body["items"]]
        assert len(body["items"]) == 10
        # team draft: after every pair of slots each team has placed the same number
        for end in range(2, 11, 2):
            assert slots[:end].count("ranker") == end // 2
        teams.update(slots)
    assert teams == {"ranker": 200, "retrieval": 200}
    log = read_feed_log(fresh_workdir.feedlog_dir)
    assert log.get_column("teams").list.len().to_list() == [10] * len(people)


def test_a_broken_definition_never_fails_a_request(
    fresh_workdir: Workdir, small_settings: Settings
) -> None:
    people = users(fresh_workdir, 10)
    with open_store(small_settings.store, fresh_workdir.store_path) as store:
        registry = ExperimentRegistry(store)
        registry.create(AB)
        registry.start("no-ranker")
        with TestClient(create_app(small_settings, fresh_workdir)) as client:
            service = client.app.state.service  # type: ignore[attr-defined]
            revision, _ = store.get_document(DOCUMENT)
            # Written around the registry: weights that do not sum to 1.
            broken = {"experiments": [{**AB, "status": "running", "variants": AB["variants"][:1]}]}
            store.put_document(DOCUMENT, broken, revision)
            service.experiments.refresh()
            answers = feeds(client, people)
    # The last good definitions keep serving.
    assert all(body["experiments"][0]["experiment"] == "no-ranker" for body in answers.values())


def test_analyze_joins_the_feed_log_to_events_and_reports_every_method(
    fresh_workdir: Workdir, small_settings: Settings, small_config: Path
) -> None:
    people = users(fresh_workdir, 120)
    with open_store(small_settings.store, fresh_workdir.store_path) as store:
        registry = ExperimentRegistry(store)
        registry.create({**AB, "primary_metric": "clicks"})
        registry.start("no-ranker")
    with TestClient(create_app(small_settings, fresh_workdir)) as client:
        answers = feeds(client, people)
        now = datetime.now(UTC)  # events follow their feeds (earlier ones are not attributed)
        events = []
        for n, (user, body) in enumerate(answers.items()):
            for slot, item in enumerate(body["items"][:3]):
                context = {"request_id": body["request_id"], "position": slot}
                events.append(
                    {
                        "event_id": f"imp-{n}-{slot}",
                        "user_id": user,
                        "item_id": item["item_id"],
                        "event_type": "impression",
                        "timestamp": now.isoformat(),
                        "context": context,
                    }
                )
            if n % 3 == 0:
                events.append(
                    {
                        "event_id": f"clk-{n}",
                        "user_id": user,
                        "item_id": body["items"][0]["item_id"],
                        "event_type": "click",
                        "timestamp": now.isoformat(),
                        "context": {"request_id": body["request_id"], "position": 0},
                    }
                )
        events.append(  # no request id: counted, never attributed
            {
                "event_id": "orphan",
                "user_id": people[0],
                "item_id": answers[people[0]]["items"][0]["item_id"],
                "event_type": "click",
                "timestamp": now.isoformat(),
            }
        )
        response = client.post("/events", json=events)
        assert response.status_code == 200, response.text
    out = fresh_workdir.root / "analysis.json"
    result = CliRunner().invoke(
        app,
        [
            "experiment",
            "analyze",
            "no-ranker",
            "--workdir",
            str(fresh_workdir.root),
            "--config",
            str(small_config),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    analysis = json.loads(out.read_text())
    assert sum(analysis["units"].values()) == len(people)
    assert analysis["srm"]["mismatch"] is False
    assert analysis["data_quality"]["events_without_request_id"] >= 1
    by_metric = {row["metric"]: row for row in analysis["metrics"]}
    assert by_metric["impressions"]["control_mean"] == 3.0
    assert by_metric["impressions"]["treatment_mean"] == 3.0
    clicks = sum(1 for n in range(len(people)) if n % 3 == 0)
    control_n, treat_n = analysis["units"]["control"], analysis["units"]["retrieval-order"]
    total_clicks = (
        by_metric["clicks"]["control_mean"] * control_n
        + by_metric["clicks"]["treatment_mean"] * treat_n
    )
    assert round(total_clicks) == clicks
    assert by_metric["ctr"]["method"] == "delta"
    assert "cuped" in by_metric["clicks"] and "p_value_holm" in by_metric["clicks"]
    assert set(analysis["guardrails"]) == {"control", "retrieval-order"}
    assert analysis["decision"]["winner"] is None
    assert "decision" in result.output


def test_the_cli_names_the_experiment_and_field_of_a_bad_definition(
    fresh_workdir: Workdir, small_config: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "id: wrong-weights\nvariants:\n  - {name: a, weight: 0.5}\n  - {name: b, weight: 0.4}\n"
    )
    common = ["--workdir", str(fresh_workdir.root), "--config", str(small_config)]
    result = CliRunner().invoke(app, ["experiment", "create", str(bad), *common])
    assert result.exit_code != 0
    assert "experiment 'wrong-weights': variants: weights sum to 0.9, not 1" in result.output
    result = CliRunner().invoke(app, ["experiment", "start", "nope", *common])
    assert result.exit_code != 0 and "experiment 'nope': not found" in result.output


def test_publishing_prunes_nothing_while_the_experiments_do_not_read(
    workdir_copy: Callable[..., Workdir],
    small_settings: Settings,
    publish_into: Callable[[Workdir, Settings], str],
) -> None:
    workdir = workdir_copy()
    with open_store(small_settings.store, workdir.store_path) as store:
        old = store.current_version()
        new = publish_into(workdir, small_settings)
        store.put_document(DOCUMENT, {"experiments": [{"id": "broken"}]}, 0)
        assert prune_versions(workdir, store, keep=1, grace_s=0) == []
        assert store.versions() == [old, new]
        store.put_document(DOCUMENT, {"experiments": []}, 1)
        assert prune_versions(workdir, store, keep=1, grace_s=0) == [old]
