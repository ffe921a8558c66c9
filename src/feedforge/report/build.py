"""``feedforge report``: one self-contained HTML page that walks the 7 steps with the numbers
of a work directory's artifacts.

The page inlines everything it needs: its styles, the Vega-Lite runtime (once,
:mod:`feedforge.vega`) and each chart's spec and data, and its Content-Security-Policy forbids
every network request, so it opens offline, from a file or an e-mail attachment. Every
number comes from an artifact (configuration, dataset, model manifests, the evaluation runs,
bundles, the online store, the logs, benchmark and off-policy outputs); the page's last table
names each artifact read and its version.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from feedforge import __version__
from feedforge.artifacts import write_text_atomic
from feedforge.config import Settings
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.errors import FeedforgeError
from feedforge.evaluation.history import evaluation_history
from feedforge.report import evaluation, offline, online
from feedforge.report.blocks import Section
from feedforge.store.base import OnlineStore
from feedforge.store.factory import open_store
from feedforge.vega import javascript_bundle
from feedforge.workdir import Workdir

Progress = Callable[[str], None]
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class ReportResult:
    """Where the page was written, its size, its charts and how long it took."""

    path: Path
    bytes: int
    charts: int
    seconds: float
    empty_sections: list[str]


def write_report(
    workdir: Workdir,
    settings: Settings,
    *,
    config_source: str = "defaults",
    out: Path | None = None,
    load_bench: Path | None = None,
    progress: Progress | None = None,
) -> ReportResult:
    """Write the report of ``workdir`` (default ``WORKDIR/reports/report.html``).

    Args:
        workdir: The work directory.
        settings: The configuration in use (its objective, budget and models).
        config_source: Where ``settings`` came from, as the report prints it.
        out: The HTML file to write.
        load_bench: A ``feedforge bench serve`` result (JSON), shown against the budget.
        progress: Called with a message as each section is built.
    """
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    dataset = _dataset(workdir)
    manifests = offline.model_manifests(workdir)
    runs, unreadable = evaluation_history(workdir.reports_dir)
    with _store(settings, workdir) as (store, why):
        serving = store.current_version() if store is not None else None
        builders: list[tuple[str, Callable[[], Section]]] = [
            ("clarify", lambda: offline.clarify(settings, config_source)),
            ("frame", lambda: offline.frame(settings, manifests)),
            ("data", lambda: offline.data(workdir, dataset)),
            ("models", lambda: offline.models(workdir, settings, manifests)),
            ("evaluate", lambda: evaluation.evaluate(workdir, runs, unreadable)),
            ("serve", lambda: online.serve(workdir, settings, store, why, serving, load_bench)),
            ("monitor", lambda: online.monitor(workdir, settings, store, why)),
        ]
        sections = []
        for name, build in builders:
            say(f"report: {name}")
            sections.append(build())
    sections.insert(0, _glance(dataset, runs, serving, sections))
    html, charts = render(sections, workdir)
    path = out or workdir.reports_dir / REPORT_FILE
    write_text_atomic(path, html)
    return ReportResult(
        path=path,
        bytes=len(html.encode("utf-8")),
        charts=charts,
        seconds=time.perf_counter() - started,
        empty_sections=[s.key for s in sections[1:] if all(b.kind == "empty" for b in s.blocks)],
    )


def _glance(
    dataset: Dataset | None, runs: evaluation.Runs, serving: str | None, sections: list[Section]
) -> Section:
    """The first screen: the headline numbers and which steps have data."""
    section = Section("glance", "At a glance", "The headline numbers of this work directory.")
    facts: list[tuple[str, str]] = []
    if dataset is not None:
        facts.append(
            ("dataset", f"{len(dataset.users):,} users x {len(dataset.items):,} items "
             f"({dataset.version})")
        )  # fmt: skip
    facts += evaluation.glance(runs)
    facts.append(("serving version", serving or "none published"))
    section.facts("Headline", facts)
    comparison = next(
        (b for s in sections for b in s.blocks if b.title.startswith("Baselines against")), None
    )
    if comparison is not None:
        section.chart(comparison.title, comparison.spec)
    rows = []
    for step in sections:
        empty = [b.title for b in step.blocks if b.kind == "empty"]
        if len(empty) == len(step.blocks):
            rows.append([step.title, "no data yet"])
            continue
        charts = _count(sum(b.kind == "chart" for b in step.blocks), "chart")
        tables = _count(sum(b.kind in ("table", "facts") for b in step.blocks), "table")
        rows.append(
            [
                step.title,
                f"{charts}, {tables}" + (f"; no data: {', '.join(empty)}" if empty else ""),
            ]
        )
    section.table("The 7 steps", ["step", "what the report shows"], rows)
    return section


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _dataset(workdir: Workdir) -> Dataset | None:
    try:
        return load_dataset(workdir)
    except FeedforgeError:
        return None


@contextlib.contextmanager
def _store(settings: Settings, workdir: Workdir) -> Iterator[tuple[OnlineStore | None, str]]:
    """The online store, or None and why (the report then says so)."""
    path = Path(settings.store.path or workdir.store_path)
    if settings.store.type == "embedded" and not path.is_file():
        # Reading never creates an embedded store.
        yield None, f"no online store at {path}: nothing published yet"
        return
    try:
        store = open_store(settings.store, workdir.store_path)
    except (FeedforgeError, OSError) as exc:
        yield None, f"the online store could not be opened: {exc}"
        return
    if not store.ping():
        store.close()
        yield None, f"the {settings.store.type} online store does not answer"
        return
    try:
        yield store, ""
    finally:
        store.close()


def render(sections: list[Section], workdir: Workdir) -> tuple[str, int]:
    """The page's HTML and its number of charts."""
    specs: list[dict[str, Any]] = []
    for section in sections:
        for block in section.blocks:
            if block.kind == "chart" and block.spec is not None:
                block.index = len(specs)
                specs.append(block.spec)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("feedforge.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    # "</" may not appear inside a <script> element: escape it in the JSON.
    specs_json = json.dumps(specs, separators=(",", ":"), default=str).replace("</", "<\\/")
    html = env.get_template("report.html.j2").render(
        sections=sections,
        workdir=str(workdir.root),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        code_version=__version__,
        specs_json=specs_json,
        vega_bundle=javascript_bundle(),
    )
    return html, len(specs)
