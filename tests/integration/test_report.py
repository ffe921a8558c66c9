"""``feedforge report``: one self-contained page of the 7 steps, opened in a real Chromium.

The page is written from a published work directory with two evaluation runs (so it compares
them), then loaded from its file: no console error, no request leaves the machine (its
Content-Security-Policy forbids them, and the browser's own log shows none was sent), every
chart draws marks, and a screenshot of its first screen is saved.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from feedforge.cli import app
from feedforge.config import Settings
from feedforge.evaluation.evaluate import evaluate
from feedforge.evaluation.history import evaluation_history
from feedforge.report.build import write_report
from feedforge.workdir import Workdir

STEPS = ("clarify", "frame", "data", "models", "evaluate", "serve", "monitor")
MAX_BYTES = 5_000_000
MAX_SECONDS = 10.0

CHART_MARKS = """
return [...document.querySelectorAll('[data-chart]')].map((el) => {
  const svg = el.querySelector('svg');
  return {
    title: el.dataset.title,
    rendered: el.dataset.rendered === '1',
    width: svg ? svg.getBoundingClientRect().width : 0,
    marks: el.querySelectorAll('.role-mark path, .role-mark line, .role-mark rect').length,
  };
});
"""


@pytest.fixture
def report_workdir(workdir_copy: Any, small_settings: Settings) -> tuple[Workdir, Path]:
    """A published work directory evaluated twice, and its report."""
    workdir: Workdir = workdir_copy()
    evaluate(workdir, small_settings)  # the copy holds one run already: now two or more
    started = time.perf_counter()
    result = write_report(workdir, small_settings, config_source="small.yaml")
    elapsed = time.perf_counter() - started
    assert elapsed < MAX_SECONDS, elapsed
    assert result.path == workdir.reports_dir / "report.html"
    assert result.bytes < MAX_BYTES, result.bytes
    return workdir, result.path


def test_the_report_walks_the_seven_steps_with_the_artifacts_versions(
    report_workdir: tuple[Workdir, Path],
) -> None:
    workdir, path = report_workdir
    html = path.read_text(encoding="utf-8")
    for step in STEPS:
        assert f'<section id="{step}">' in html, step
    # No address outside the page: the runtime and every chart's data are inlined.
    assert not re.search(r"""(src|href)=["']https?://""", html)
    assert "default-src 'none'" in html
    # Every artifact's version, read from the artifacts themselves.
    runs, unreadable = evaluation_history(workdir.reports_dir)
    assert len(runs) >= 2 and not unreadable
    latest = runs[-1][1]
    assert latest["dataset_version"] in html
    for version in latest["model_versions"].values():
        assert version in html
    assert runs[-1][0] in html and runs[-2][0] in html  # the latest run against the previous
    bundles = [p.name for p in workdir.bundles_dir.iterdir()]
    assert bundles and all(b in html for b in bundles)


def test_the_report_renders_in_chromium_offline(
    report_workdir: tuple[Workdir, Path], browser: Any
) -> None:
    _, path = report_workdir
    browser.open(path.as_uri())
    drawn = browser.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.feedforgeChartsDone.then(done, (e) => done('failed: ' + e));"
    )
    charts = browser.js(CHART_MARKS)
    assert drawn == len(charts) >= 8, (drawn, charts)
    empty = [c for c in charts if not (c["rendered"] and c["width"] > 0 and c["marks"] > 0)]
    assert not empty, empty
    console, urls = browser.logs()
    assert not browser.errors(console), console
    assert urls and urls[0] == path.as_uri()
    assert not browser.outside(urls), urls
    # Each of the 7 steps is on the page, with a section heading a reader sees.
    headings = browser.js(
        "return [...document.querySelectorAll('section > h2')].map(h => h.innerText)"
    )
    steps = [f"{i}. {s.capitalize()}" for i, s in enumerate(STEPS, 1)]
    assert headings[:8] == ["At a glance", *steps], headings
    assert browser.screenshot("report").stat().st_size > 10_000
    browser.screenshot("report-full", full_page=True)


def test_evaluate_keeps_every_run(workdir_copy: Any, small_settings: Settings) -> None:
    workdir: Workdir = workdir_copy()
    before, _ = evaluation_history(workdir.reports_dir)
    first = evaluate(workdir, small_settings)
    second = evaluate(workdir, small_settings)
    runs, _ = evaluation_history(workdir.reports_dir)
    assert len(runs) == len(before) + 2
    assert [r["created_at"] for _, r in runs[-2:]] == [first["created_at"], second["created_at"]]
    for name, report in runs[-2:]:
        assert name.endswith(f"_{report['dataset_version']}.json")


def test_report_cli_prints_the_path(report_workdir: tuple[Workdir, Path]) -> None:
    workdir, _ = report_workdir
    out = workdir.root / "elsewhere" / "page.html"
    result = CliRunner().invoke(app, ["report", "--workdir", str(workdir.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in "".join(result.output.split())
    assert out.stat().st_size > 100_000


def test_a_report_of_an_empty_workdir_says_what_each_stage_lacks(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path / "empty")
    result = write_report(workdir, Settings())
    html = result.path.read_text(encoding="utf-8")
    assert set(result.empty_sections) == {"data", "models", "evaluate", "serve", "monitor"}
    for step in STEPS:
        assert f'<section id="{step}">' in html, step
    assert f"no dataset built yet: run feedforge build --workdir {workdir.root}" in html
    assert "no model trained yet" in html and "no evaluation yet" in html
    assert f"no online store at {workdir.store_path}: nothing published yet" in html
    assert not workdir.store_path.exists()  # reading created nothing


def test_the_report_shows_the_online_loop_when_it_has_data(
    fresh_workdir: Workdir,
    small_settings: Settings,
    write_config: Any,
    tmp_path: Path,
    browser: Any,
) -> None:
    """An exploring experiment served by the closed loop, an off-policy estimate: the monitor
    step shows the experiment's lifts, the estimates and the served version's drift."""
    from feedforge.experiments.registry import ExperimentRegistry
    from feedforge.store.factory import open_store

    config = write_config(
        tmp_path / "explore.yaml",
        reranking={"exploration": {"type": "epsilon_greedy", "epsilon": 0.3}},
        monitoring={"drift_min_rows": 10, "baseline_rows": 50},
    )
    with open_store(small_settings.store, fresh_workdir.store_path) as store:
        registry = ExperimentRegistry(store)
        registry.create(
            {
                "id": "more-candidates",
                "variants": [
                    {"name": "control", "weight": 0.5},
                    {"name": "wide", "weight": 0.5, "overrides": {"candidates": 300}},
                ],
            }
        )
        registry.start("more-candidates")
    common = ["--workdir", str(fresh_workdir.root), "--config", str(config)]
    runner = CliRunner()
    done = runner.invoke(app, ["simulate-online", *common, "--users", "60", "--days", "2"])
    assert done.exit_code == 0, done.output
    target = tmp_path / "greedy.yaml"
    target.write_text("overrides: {reranking: {exploration: {type: none}}}\n")
    done = runner.invoke(app, ["ope", *common, "--target", str(target)])
    assert done.exit_code == 0, done.output

    from feedforge.config import load_settings

    result = write_report(fresh_workdir, load_settings(config))
    html = result.path.read_text(encoding="utf-8")
    assert "monitor" not in result.empty_sections
    assert "more-candidates" in html and "Experiments: lifts against control" in html
    assert "Off-policy estimates of value per feed" in html and "snips" in html
    assert "Freshness (checked" in html
    browser.open(result.path.as_uri())
    drawn = browser.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.feedforgeChartsDone.then(done, (e) => done('failed: ' + e));"
    )
    charts = browser.js(CHART_MARKS)
    assert drawn == len(charts), (drawn, charts)
    assert not [c for c in charts if not (c["rendered"] and c["marks"] > 0)], charts
    titles = {c["title"] for c in charts}
    assert {"Primary metric lift per variant", "Off-policy estimates"} <= titles, titles
    console, urls = browser.logs()
    assert not browser.errors(console), console
    assert not browser.outside(urls), urls
    browser.screenshot("report-online-full", full_page=True)
