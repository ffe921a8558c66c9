"""An A/B and an interleaving experiment end to end through ``feedforge serve --workers 2``
against Redis, driven by the CLI: both workers assign alike, follow a stop without a restart,
and the analysis reads what they logged."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from feedforge.config import Settings, load_settings
from feedforge.datasets.load import load_dataset
from feedforge.experiments.assignment import Assigner
from feedforge.experiments.registry import ExperimentRegistry
from feedforge.serving.feedlog import read_feed_log
from feedforge.store.redis import RedisStore
from feedforge.workdir import Workdir

from .conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.redis]

AB = {
    "id": "ab-no-ranker",
    "layer": "ranking",
    "buckets": [0, 500],
    "primary_metric": "clicks",
    "variants": [
        {"name": "control", "weight": 0.5},
        {"name": "retrieval", "weight": 0.5, "overrides": {"ranker": False}},
    ],
}
INTERLEAVE = {
    "id": "il-no-ranker",
    "layer": "ranking",
    "buckets": [500, 1000],
    "mode": "interleave",
    "variants": [
        {"name": "ranker", "weight": 0.5},
        {"name": "retrieval", "weight": 0.5, "overrides": {"ranker": False}},
    ],
}


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "from feedforge.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_ab_and_interleaving_through_two_workers_and_redis(
    small_config: Path,
    tmp_path: Path,
    redis_url: str,
    redis_namespace: str,
    workdir_copy: Callable[..., Workdir],
    publish_into: Callable[[Workdir, Settings], str],
    write_config: Callable[..., Path],
) -> None:
    store_cfg = {"type": "redis", "redis_url": redis_url, "namespace": redis_namespace}
    config = write_config(
        tmp_path / "redis.yaml", store=store_cfg, serving={"experiments_refresh_s": 0.5}
    )
    settings = load_settings(config)
    workdir = workdir_copy(publish=False)
    publish_into(workdir, settings)
    common = ("--workdir", str(workdir.root), "--config", str(config))
    for definition in (AB, INTERLEAVE):
        path = tmp_path / f"{definition['id']}.yaml"
        path.write_text(yaml.safe_dump(definition), encoding="utf-8")
        assert "created experiment" in cli("experiment", "create", str(path), *common)
        assert "started experiment" in cli("experiment", "start", str(definition["id"]), *common)
    listed = cli("experiment", "list", *common)
    assert "ab-no-ranker" in listed and "il-no-ranker" in listed

    people = sorted(load_dataset(workdir).users.ids.to_list())[:160]
    server = ServerProcess(workdir, config)
    server.command += ["--workers", "2"]
    server.start(timeout_s=120)
    answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        for _ in range(2):  # every user twice: new connections land on either worker
            for user in people:
                response = httpx.get(
                    f"{server.base}/recommend", params={"user_id": user, "k": 6}, timeout=30
                )
                assert response.status_code == 200, response.text
                answers[user].append(response.json())
        now = datetime.now(UTC).isoformat()
        events = []
        for n, (user, bodies) in enumerate(answers.items()):
            body = bodies[0]
            for slot, item in enumerate(body["items"]):
                events.append(_event(user, item["item_id"], "impression", now, body, slot))
            # Half the users click (and watch) their first slot, the rest their second.
            slot = n % 2
            item = body["items"][slot]["item_id"]
            events.append(_event(user, item, "click", now, body, slot))
            events.append(_event(user, item, "watch", now, body, slot, watch_seconds=300.0))
        for start in range(0, len(events), 500):
            posted = httpx.post(f"{server.base}/events", json=events[start : start + 500])
            assert posted.status_code == 200, posted.text

        # A stop reaches both workers without a restart.
        cli("experiment", "stop", "ab-no-ranker", *common)
        time.sleep(1.5)
        for user in people[:40]:
            body = httpx.get(f"{server.base}/recommend", params={"user_id": user}).json()
            assert all(e["experiment"] != "ab-no-ranker" for e in body.get("experiments", []))
    finally:
        output = server.stop()
    assert "Traceback" not in output, output

    with RedisStore.from_url(redis_url, namespace=redis_namespace) as store:
        running = ExperimentRegistry(store).experiments()
    assigner = Assigner([e.model_copy(update={"status": "running"}) for e in running])
    for user, bodies in answers.items():
        (expected,) = assigner.assign(user)
        variant = (
            "interleaved" if expected.experiment.mode == "interleave" else expected.variant.name
        )
        for body in bodies:
            assert body["experiments"] == [
                {
                    "experiment": expected.experiment.id,
                    "variant": variant,
                    "version": body["version"],
                }
            ]
            if variant == "interleaved":
                assert {item["team"] for item in body["items"]} == {"ranker", "retrieval"}
    # Both workers served, each from its own feed-log files, with the same assignments.
    pids = {
        re.match(r"feeds-\d{8}-\d{6}-(\d+)-", p.name).group(1)
        for p in workdir.feedlog_dir.iterdir()
    }  # type: ignore[union-attr]
    assert len(pids) == 2, pids
    log = read_feed_log(workdir.feedlog_dir)
    assert log.height == 2 * len(people) + 40

    for experiment in ("ab-no-ranker", "il-no-ranker"):
        out = tmp_path / f"{experiment}.json"
        printed = cli("experiment", "analyze", experiment, *common, "--out", str(out))
        assert "decision" in printed
        analysis = json.loads(out.read_text())
        assert analysis["experiment"] == experiment
        if experiment == "ab-no-ranker":
            assert sum(analysis["units"].values()) > 40
            assert analysis["srm"]["p_value"] > 0.001
            assert {row["metric"] for row in analysis["metrics"]} >= {"clicks", "ctr"}
        else:
            pref = analysis["interleaving"]["prefer"]
            assert pref["ranker"] + pref["retrieval"] + pref["tie"] > 40
            assert pref["ranker"] + pref["retrieval"] > 0


def _event(
    user: str, item: str, kind: str, now: str, body: dict[str, Any], slot: int, **extra: Any
) -> dict[str, Any]:
    return {
        **extra,
        "event_id": f"x-{uuid.uuid4().hex}",
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        "timestamp": now,
        "context": {"request_id": body["request_id"], "position": slot},
    }
