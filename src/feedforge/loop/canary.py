"""The canary: a staged candidate serves ``loop.canary_share`` of the users as an experiment
against the current version; after ``loop.canary_window_s`` it is promoted or rolled back.

The canary is an ordinary A/B experiment (:mod:`feedforge.experiments`) in the layer
``loop.layer``: variant ``current`` (the version serving when it starts, weight ``1 -
share``, the control) and variant ``canary`` (the candidate, weight ``share``), primary
metric the objective's (watch minutes, clicks, revenue, or the mix's value per user).
Every serving worker picks it up at its next experiments refresh, so the operator sees it
in ``feedforge experiment list`` and can analyse it like any other.

:func:`canary_verdict` promotes only when, after the window and with at least
``loop.canary_min_units`` users per arm:

* the allocation is sound (no sample-ratio mismatch),
* the primary metric is not worse: its 95% interval does not lie wholly below 0 (not
  significantly worse) and its relative lift is at least ``-loop.canary_max_drop`` (no large
  drop, significant or not; the default 25 % is wide because a canary of a few hundred users
  measures a per-user mean with a standard error of about 10 %),
* every guardrail of the canary arm holds: error rate, degraded rate and p99 latency within
  ``loop.canary_max_*`` (latency default: ``serving.latency_budget_ms``), and no served
  feature of the candidate drifted (the monitoring's drift check of its canary variant,
  ``loop.canary_drift``).

A canary that has not reached ``canary_min_units`` users per arm by ``loop.canary_max_wait_s``
is rolled back: an unproven model is not promoted.

:func:`finish` applies the decision so that no request fails: a promotion flips the
``current`` pointer to the candidate first (both arms already serve from loaded versions)
and then stops the experiment; a rollback stops the experiment (the canary's users return
to the current version, which kept serving everyone else) and retires the candidate. Both
are idempotent, so a cycle killed half-way finishes them on resume.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from feedforge.config import Settings
from feedforge.errors import ArtifactError, DataError, ValidationError
from feedforge.events.log import EventLog
from feedforge.experiments.analysis import analyze
from feedforge.experiments.definition import Experiment
from feedforge.experiments.online import online_metrics, read_feed_log
from feedforge.experiments.registry import ExperimentRegistry
from feedforge.features.objectives import settings_value
from feedforge.monitoring.status import drift_report
from feedforge.publish.publisher import promote
from feedforge.publish.versions import retire
from feedforge.store.base import OnlineStore
from feedforge.workdir import Workdir

CONTROL, CANARY = "current", "canary"
_PRIMARY = {
    "watch_time": "watch_minutes",
    "clicks": "clicks",
    "revenue": "revenue",
    "mix": "objective",
}


Clock = Callable[[], datetime]
"""The time canaries and off-policy windows are measured in."""


def wall_clock() -> datetime:
    """The default :data:`Clock`: now, in UTC."""
    return datetime.now(UTC)


def experiment_id(run_id: str) -> str:
    return f"canary-{run_id}"


def start_canary(
    store: OnlineStore,
    settings: Settings,
    run_id: str,
    candidate: str,
    clock: Clock = wall_clock,
) -> Experiment:
    """Create and start the canary experiment of ``candidate`` (idempotent: an existing one
    is started if still a draft, and returned as it is otherwise)."""
    registry = ExperimentRegistry(store, clock)
    exp_id = experiment_id(run_id)
    share = settings.loop.canary_share
    try:
        experiment = registry.get(exp_id)
    except ValidationError:
        experiment = registry.create(
            {
                "id": exp_id,
                "layer": settings.loop.layer,
                "variants": [
                    {"name": CONTROL, "weight": 1.0 - share, "version": "current"},
                    {"name": CANARY, "weight": share, "version": candidate},
                ],
                "control": CONTROL,
                "primary_metric": _PRIMARY[settings.objective],
            }
        )
    if experiment.status == "draft":
        experiment = registry.start(exp_id)
    return experiment


def canary_verdict(
    workdir: Workdir,
    settings: Settings,
    store: OnlineStore,
    run_id: str,
    candidate: str,
    clock: Clock = wall_clock,
) -> dict[str, Any]:
    """The decision on a running canary (see the module docs).

    Returns:
        ``{"action": "promote" | "rollback" | "wait", "reasons": [...], "checks": {...}}``;
        ``wait`` while the canary must go on (its reason says why).
    """
    cfg = settings.loop
    now = clock()
    experiment = ExperimentRegistry(store, clock).get(experiment_id(run_id))
    started = experiment.started_at or now
    elapsed = (now - started).total_seconds()
    if elapsed < cfg.canary_window_s:
        return _wait(f"{cfg.canary_window_s - elapsed:.0f} s of the canary window left", {})
    overdue = elapsed >= cfg.canary_max_wait_s
    log = EventLog(workdir.events_dir)
    try:
        feeds = read_feed_log(workdir.feedlog_dir, since=started)
        with log.reading():
            metrics = online_metrics(experiment, feeds, log.scan(), settings_value(settings), now)
    except DataError as exc:
        if not overdue:
            return _wait(f"no canary traffic yet ({exc})", {})
        return _rollback([f"no canary traffic after {elapsed:.0f} s ({exc})"], {})
    units = {
        name: int((metrics.units.get_column("variant") == name).sum()) for name in (CONTROL, CANARY)
    }
    checks: dict[str, Any] = {"units": units, "elapsed_s": round(elapsed, 1)}
    if min(units.values()) < cfg.canary_min_units:
        if not overdue:
            return _wait(f"{units} users per arm (< loop.canary_min_units)", checks)
        return _rollback(
            [f"{units} users per arm after {elapsed:.0f} s (< loop.canary_min_units)"], checks
        )
    analysis = analyze(experiment, metrics)
    reasons: list[str] = []
    if analysis.get("srm", {}).get("mismatch"):
        reasons.append("sample ratio mismatch: the canary's allocation is broken")
    primary = next(
        row
        for row in analysis["metrics"]
        if row["primary"] and row["variant"] == CANARY and "skipped" not in row
    )
    lift = primary.get("relative_lift")
    high = (primary.get("absolute_ci") or [None, None])[1]
    checks["primary"] = {
        "metric": primary["metric"],
        "control_mean": primary.get("control_mean"),
        "canary_mean": primary.get("treatment_mean"),
        "relative_lift": lift,
        "absolute_ci": primary.get("absolute_ci"),
    }
    if lift is not None and lift < -cfg.canary_max_drop:
        reasons.append(
            f"{primary['metric']} relative lift {lift:+.2%} < -loop.canary_max_drop "
            f"({cfg.canary_max_drop:.0%})"
        )
    if high is not None and high < 0:
        reasons.append(f"{primary['metric']} is significantly worse (95% CI upper {high:.4g} < 0)")
    guard = metrics.guardrails.get(CANARY, {})
    checks["guardrails"] = guard
    latency_limit = cfg.canary_max_latency_p99_ms or settings.serving.latency_budget_ms
    for name, limit in (
        ("error_rate", cfg.canary_max_error_rate),
        ("degraded_rate", cfg.canary_max_degraded_rate),
        ("latency_p99_ms", latency_limit),
    ):
        if guard.get(name, 0.0) > limit:
            reasons.append(f"guardrail {name} {guard[name]:.4g} > {limit:g}")
    if cfg.canary_drift:
        drifted, note = _drifted(workdir, store, settings, candidate, run_id)
        checks["drift"] = {"drifted": drifted, "note": note}
        if drifted:
            reasons.append(f"served features drifted: {', '.join(drifted)}")
    checks["analysis_decision"] = analysis.get("decision")
    if reasons:
        return _rollback(reasons, checks)
    return {
        "action": "promote",
        "reasons": ["primary metric not worse, guardrails hold"],
        "checks": checks,
    }


def _wait(reason: str, checks: dict[str, Any]) -> dict[str, Any]:
    return {"action": "wait", "reasons": [reason], "checks": checks}


def _rollback(reasons: list[str], checks: dict[str, Any]) -> dict[str, Any]:
    return {"action": "rollback", "reasons": reasons, "checks": checks}


def _drifted(
    workdir: Workdir, store: OnlineStore, settings: Settings, candidate: str, run_id: str
) -> tuple[list[str], str]:
    try:
        report = drift_report(workdir, store, settings, candidate)
    except ArtifactError as exc:
        return [], f"not checked: {exc.message}"
    label = f"{experiment_id(run_id)}.{CANARY}"
    entry = report["variants"].get(label)
    if entry is None:
        return [], "no served profile of the canary yet"
    measured = entry.get(settings.monitoring.drift_baseline) or {}
    if measured.get("filling"):
        return [], f"baseline still filling ({entry['served_rows']} rows served)"
    drifted = [c["feature"] for c in measured.get("columns", []) if c["drifted"]]
    return drifted, f"{entry['served_rows']} rows served"


def finish(
    workdir: Workdir,
    settings: Settings,
    store: OnlineStore,
    run_id: str,
    candidate: str,
    action: str,
    clock: Clock = wall_clock,
) -> None:
    """Promote or roll back (idempotent; see the module docs)."""
    registry = ExperimentRegistry(store, clock)
    exp_id = experiment_id(run_id)
    if action == "promote" and store.current_version() != candidate:
        promote(workdir, settings, store, candidate)
    try:
        if registry.get(exp_id).status == "running":
            registry.stop(exp_id)
    except ValidationError:
        pass  # never created (a cycle killed before its canary started)
    if action == "rollback":
        meta = store.get_meta(candidate)
        if meta is not None and "retired_at" not in meta:
            retire(store, candidate)
