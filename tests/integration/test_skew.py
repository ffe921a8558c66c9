"""Training-serving skew end to end: the real service logs the feature vectors it scored
(``monitoring.skew_sample: 1``), ``feedforge monitor skew`` recomputes them offline.

* served as is, every feature but ``retrieval_score`` matches exactly, and
  ``retrieval_score`` mismatches only for users with live history (the service adds their
  history to the query vector, by design);
* with a skew injected into the online path (item age counted in minutes), the report names
  ``item_age_days_log`` as the worst feature, the others still match;
* an unreadable line is reported by file and line, and the other lines are still compared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.events.schema import Event
from feedforge.monitoring.skew import RETRIEVAL, SkewReport, skew_report
from feedforge.serving import pipeline
from feedforge.serving.pipeline import FeedService
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

pytestmark = pytest.mark.integration

DEVICES = (None, "tv", "mobile", "web")
LIVE_USERS = 3


@dataclass
class Served:
    workdir: Workdir
    settings: Settings
    live_users: list[str]


def _settings(small_settings: Settings) -> Settings:
    monitoring = small_settings.monitoring.model_copy(update={"skew_sample": 1.0, "profile": False})
    return small_settings.model_copy(update={"monitoring": monitoring})


def _serve(workdir: Workdir, settings: Settings, n_users: int = 24) -> list[str]:
    """Serve feeds to ``n_users`` trained users through the real service (every request's
    features logged); the first :data:`LIVE_USERS` get live history first."""
    users = load_dataset(workdir).users.ids.to_list()[:n_users]
    with open_store(settings.store, workdir.store_path) as store:
        service = FeedService(settings, workdir, store)
        try:
            state = service.versions.current()
            assert state.ranker is not None, "the skew log needs a ranked version"
            after = datetime.fromtimestamp(state.snapshot_time) + timedelta(hours=1)
            events = [
                Event(
                    event_id=f"skew-live-{u}-{j}",
                    timestamp=after.astimezone(),
                    user_id=u,
                    item_id=state.items.id_of(np.asarray([j]))[0],
                    event_type="click",
                )
                for u in users[:LIVE_USERS]
                for j in (0, 1)
            ]
            _, applied = service.ingest(events)
            assert applied
            for n, user in enumerate(users):
                feed = service.recommend(
                    user, 10, device=DEVICES[n % len(DEVICES)], request_id=f"skew-r{n}"
                )
                assert feed.strategy == "personalized"
        finally:
            service.close()
    return users[:LIVE_USERS]


@pytest.fixture
def served(workdir_copy: Callable[..., Workdir], small_settings: Settings) -> Callable[..., Served]:
    """``served(inject=None)``: a private published work directory whose service served
    feeds with the feature log on; ``inject`` (a monkeypatch context) runs while serving."""

    def factory(patch: Callable[[pytest.MonkeyPatch], None] | None = None) -> Served:
        settings = _settings(small_settings)
        workdir = workdir_copy(settings)
        with pytest.MonkeyPatch.context() as mp:
            if patch is not None:
                patch(mp)
            live = _serve(workdir, settings)
        return Served(workdir, settings, live)

    return factory


def _report(served: Served, **kwargs: Any) -> SkewReport:
    with open_store(served.settings.store, served.workdir.store_path) as store:
        return skew_report(served.workdir, store, **kwargs)


def _minutes_for_seconds(mp: pytest.MonkeyPatch) -> None:
    """The injected bug: the service's item age in minutes instead of seconds."""
    real = pipeline.raw_from_table

    def skewed(*args: Any, **kwargs: Any) -> Any:
        raw, missing = real(*args, **kwargs)
        raw["item_age_seconds"] = raw["item_age_seconds"] / 60.0
        return raw, missing

    mp.setattr(pipeline, "raw_from_table", skewed)


def _summary(report: SkewReport) -> str:
    """The worst features, for ``pytest -s``."""
    return "; ".join(
        f"{f.feature}: {f.mismatches}/{f.rows} (w/o live history "
        f"{f.mismatch_rate_without_live_history:.3f}, max |diff| {f.max_abs_diff})"
        for f in report.worst(3)
    )


def _by_name(report: SkewReport) -> dict[str, Any]:
    return {f.feature: f for f in report.features}


def test_served_features_match_their_offline_recompute(served: Callable[..., Served]) -> None:
    run = served()
    report = _report(run)
    print(_summary(report))
    assert report.requests == 24 and report.rows > 24 * 10
    assert report.skipped == {} and report.bad_lines == []
    assert report.live_history_source == "log"  # the service logs it with each request
    features = _by_name(report)
    for name, feature in features.items():
        assert feature.rows == report.rows, name
        if name != RETRIEVAL:
            assert feature.mismatches == 0, (name, feature.example)
    retrieval = features[RETRIEVAL]
    # Live-history users are scored with their history in the query: a mismatch by design,
    # reported apart; every other user's retrieval score is <U[user], V[item]> exactly.
    assert retrieval.live_history_rows > 0
    assert retrieval.mismatches == retrieval.live_history_mismatches > 0
    assert retrieval.mismatch_rate_without_live_history == 0.0
    assert retrieval.example is not None and retrieval.example["user_id"] in run.live_users
    assert report.worst()[0].feature == RETRIEVAL
    assert report.over(0.0) == []  # the live-history rows differ by design: no gate trips


def test_the_gate_ignores_mismatches_by_design(
    served: Callable[..., Served], small_config: Path
) -> None:
    run = served()
    args = ["monitor", "skew", "--workdir", str(run.workdir.root), "--config", str(small_config)]
    result = CliRunner().invoke(app, [*args, "--fail-over", "0"])
    assert result.exit_code == 0, result.output
    assert "retrieval_score" in result.output


def test_an_injected_skew_is_named_worst(
    served: Callable[..., Served], small_config: Path, tmp_path: Path
) -> None:
    run = served(_minutes_for_seconds)
    report = _report(run)
    worst = report.worst()[0]
    print(_summary(report))
    assert worst.feature == "item_age_days_log"
    assert worst.mismatch_rate > 0.95
    assert worst.example is not None and worst.example["online"] < worst.example["offline"]
    for feature in report.worst()[1:]:
        if feature.feature == RETRIEVAL:
            assert feature.mismatch_rate_without_live_history == 0.0
        else:
            assert feature.mismatch_rate == 0.0, feature.feature

    # The command: a table worst first, the JSON report, exit 0 (or 1 over --fail-over).
    out = tmp_path / "skew.json"
    args = ["monitor", "skew", "--workdir", str(run.workdir.root), "--config", str(small_config)]
    result = CliRunner().invoke(app, args)
    print(result.output)
    assert result.exit_code == 0, result.output
    assert "item_age_days_log" in result.output
    written = json.loads((run.workdir.reports_dir / "skew.json").read_text(encoding="utf-8"))
    assert written["features"][0]["feature"] == "item_age_days_log"
    failed = CliRunner().invoke(app, [*args, "--json-out", str(out), "--fail-over", "0.5"])
    assert failed.exit_code == 1, failed.output
    assert "item_age_days_log" in failed.output
    assert json.loads(out.read_text(encoding="utf-8"))["requests"] == report.requests


def test_a_bad_line_is_named_and_the_others_compared(served: Callable[..., Served]) -> None:
    run = served()
    (path,) = sorted(run.workdir.featurelog_dir.glob("feeds-*.jsonl"))
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    broken = json.loads(lines[1])
    broken["features"] = broken["features"][:-1]  # one row short
    lines[1] = json.dumps(broken) + "\n"
    lines.append('{"ts": "2026-01-01T00:00:00+00:00", "user_id": ')  # unfinished
    path.write_text("".join(lines), encoding="utf-8")
    report = _report(run)
    assert len(report.bad_lines) == 2
    assert report.bad_lines[0].startswith(f"{path}:2: ")
    assert "shape" in report.bad_lines[0]
    assert report.bad_lines[1].startswith(f"{path}:{len(lines)}: ")
    assert "unfinished" in report.bad_lines[1]
    assert report.requests == 23
    assert _by_name(report)["item_age_days_log"].mismatches == 0


def test_since_and_an_unknown_version(served: Callable[..., Served]) -> None:
    run = served()
    (path,) = sorted(run.workdir.featurelog_dir.glob("feeds-*.jsonl"))
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    gone = json.loads(lines[0])
    gone["version"] = "20000101T000000000Z-gone"
    path.write_text("".join([json.dumps(gone) + "\n", *lines[1:]]), encoding="utf-8")
    report = _report(run)
    assert report.skipped == {"version neither in the store nor in WORKDIR/bundles": 1}
    assert report.requests == 23
    later = _report(run, since=datetime.now().astimezone() + timedelta(minutes=5))
    assert later.requests == 0 and later.features == []
