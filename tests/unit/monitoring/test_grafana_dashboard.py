"""The shipped Grafana dashboard and Prometheus alert rules name only metrics the service
exports.

The exported names come from the code, not from a list kept here: the families of
:class:`~feedforge.monitoring.metrics.ServiceMetrics`'s registry, plus the gauges computed at
scrape time by the collectors the service attaches
(:data:`~feedforge.monitoring.metrics.COMPUTED_FAMILIES`). Renaming a metric without updating
``deploy/grafana/feedforge-dashboard.json`` or ``deploy/prometheus/alerts.yml`` fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedforge.monitoring.metrics import COMPUTED_FAMILIES, MULTIPROC_ENV, ServiceMetrics

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "feedforge-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# The sample names each metric type exposes besides its family name. A labelled metric has
# no sample before its first ``.labels()`` call, so its samples alone would miss it.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "info": ("_info",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# An identifier not inside a number (0.99, 1e3, 5m) and not a Grafana variable ($job).
_IDENTIFIER = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
)
NOT_EXPORTED = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
"""Series Prometheus itself makes (scrape health, alert state)."""


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, aggregations, keywords,
    label matchers, ranges, grouping labels and Grafana variables left out)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every metric name (family and sample names) the service exports."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(MULTIPROC_ENV, raising=False)  # the single-process registry
        metrics = ServiceMetrics()
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
    return names | set(COMPUTED_FAMILIES)  # gauges: no suffixes


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return groups


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def _recorded(rule_groups: list[dict[str, Any]]) -> set[str]:
    return {rule["record"] for group in rule_groups for rule in group["rules"] if "record" in rule}


def test_metric_names_leave_out_functions_labels_and_variables() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (stage, le) (rate(feedforge_stage_seconds_bucket"
        '{job=~"$job",stage!="a b"}[$__rate_interval]))) > on(job) group_left 14.4 * '
        '(1 - max by (job) (feedforge_threshold{name="latency_slo"})) '
        "and job:x:ratio_rate5m offset 5m "
        "unless count(up == 0) or vector(1e3)"
    )
    assert metric_names(expr) == {
        "feedforge_stage_seconds_bucket",
        "feedforge_threshold",
        "job:x:ratio_rate5m",
        "up",
    }


def test_every_dashboard_metric_is_exported(
    dashboard: dict[str, Any], rule_groups: list[dict[str, Any]], exported: set[str]
) -> None:
    recorded = _recorded(rule_groups)
    missing: dict[str, set[str]] = {}
    exprs = 0
    for panel in _panels(dashboard):
        for target in panel.get("targets") or []:
            exprs += 1
            unknown = metric_names(target["expr"]) - exported - recorded
            if unknown:
                missing.setdefault(panel["title"], set()).update(unknown)
    assert exprs > 0
    assert not missing, f"metrics the service does not export, by panel: {missing}"


def test_every_alert_rule_metric_is_exported(
    rule_groups: list[dict[str, Any]], exported: set[str]
) -> None:
    recorded = _recorded(rule_groups)
    missing: dict[str, set[str]] = {}
    for group in rule_groups:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - exported - recorded - NOT_EXPORTED
            if unknown:
                missing[rule.get("alert") or rule["record"]] = unknown
    assert not missing, f"metrics the service does not export, by rule: {missing}"


def test_alerts_have_a_severity_a_summary_and_config_thresholds(
    rule_groups: list[dict[str, Any]],
) -> None:
    (alerting,) = [group for group in rule_groups if group["name"] == "feedforge"]
    alerts = alerting["rules"]
    assert alerts and all("alert" in rule for rule in alerts)
    for rule in alerts:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        assert "for" in rule, rule["alert"]
    # Thresholds live in the service's config (feedforge_threshold), not in the rules.
    own_threshold = {"FeedforgeDown", "FeedforgeFeatureDrift", "FeedforgeThresholdsMissing"}
    for rule in alerts:
        if rule["alert"] not in own_threshold:
            assert "feedforge_threshold{" in rule["expr"], rule["alert"]


def test_the_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    """Grafana 10+ model: unique panel ids, the datasource a variable, every variable used
    defined, panels inside the 24-column grid."""
    assert dashboard["schemaVersion"] >= 39
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert "DS_PROMETHEUS" in variables
    builtin = {"__rate_interval", "__interval", "__range"}
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), ids
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= variables | builtin, (panel["title"], used - variables)
