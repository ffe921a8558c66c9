"""The shipped Prometheus files pass ``promtool``: the alert rules and the compose config are
valid, the rules' unit tests (``deploy/prometheus/alerts_test.yml``) pass, and every query of
the Grafana dashboard parses.

Needs ``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it): without it the
tests are skipped locally and fail when ``CI=true``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "feedforge-dashboard.json"
# Grafana's variables, as Grafana would substitute them, so the queries parse as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": "feedforge", "$kpi": "ctr"}


def _run(promtool: str, *args: str) -> None:
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_the_alert_rules_are_valid(promtool: str) -> None:
    _run(promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))


def test_the_prometheus_config_is_valid(promtool: str) -> None:
    _run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


def test_the_alert_rules_unit_tests_pass(promtool: str) -> None:
    _run(promtool, "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            rules.append(
                {"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr}
            )
    assert rules
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(promtool, "check", "rules", str(path))
