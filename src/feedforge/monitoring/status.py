"""What ``feedforge monitor drift`` and ``feedforge monitor freshness`` report, from the
online store, the bundles and the event log of a work directory (no running service needed).

* :func:`drift_report`: for a version (default: the current one) and each experiment variant
  it served, the serving profile's drift against both baselines: the configured one
  (``monitoring.drift_baseline``) and the other, i.e. the version's own first served rows and
  its ranker's training rows (the training-serving gap).
* :func:`freshness_report`: the age of the current version, of its feature snapshot, of the
  newest event in the log, and of the precomputed feeds (``feedforge batch-score
  --to-store`` records its run in the version's metadata).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import polars as pl

from feedforge.config import Settings
from feedforge.errors import NotPublishedError
from feedforge.events.log import EventLog
from feedforge.monitoring.drift import ColumnDrift, compare, measured, total
from feedforge.monitoring.profile import Profile
from feedforge.monitoring.recorder import PROFILE_PREFIX, served_windows
from feedforge.store.base import OnlineStore
from feedforge.store.bundle import REFERENCE_PROFILE_FILE
from feedforge.workdir import Workdir


def _current(store: OnlineStore) -> str:
    version = store.current_version()
    if version is None:
        raise NotPublishedError("nothing is published: run `feedforge publish` first")
    return version


def reference_of(workdir: Workdir, store: OnlineStore, version: str) -> Profile:
    """A version's reference profile, from its bundle (where the service reads it).

    Raises:
        feedforge.errors.ArtifactError: the version was published without one (no ranker,
            or by an older feedforge): publish again.
    """
    meta = store.get_meta(version) or {}
    bundle = workdir.bundles_dir / version
    if not bundle.is_dir() and meta.get("bundle"):
        bundle = type(bundle)(meta["bundle"])
    return Profile.load(bundle / REFERENCE_PROFILE_FILE, workdir.command("publish"))


def _columns(drift: list[ColumnDrift]) -> list[dict[str, Any]]:
    return [d.to_json() for d in drift]


def drift_report(
    workdir: Workdir, store: OnlineStore, settings: Settings, version: str | None = None
) -> dict[str, Any]:
    """Drift of every variant a version served (see the module docs).

    Returns:
        ``{"version", "baseline", "variants": {variant: {"served_rows", "windows",
        "configured": {"baseline", "columns" | "filling"}, "training": {...},
        "serving": {...}}}}``; each ``columns`` is a list of
        :meth:`~feedforge.monitoring.drift.ColumnDrift.to_json`.
    """
    cfg = settings.monitoring
    version = version or _current(store)
    reference = reference_of(workdir, store, version)
    variants: dict[str, Any] = {}
    for name in store.counts_names(version):
        if not name.startswith(PROFILE_PREFIX):
            continue
        variant = name[len(PROFILE_PREFIX) :]
        windows = served_windows(store, version, variant, reference.spec)
        if not windows:
            continue
        entry: dict[str, Any] = {
            "served_rows": total(windows.values(), reference.spec.empty()).rows,
            "windows": len(windows),
            "first_window": datetime.fromtimestamp(min(windows), UTC).isoformat(),
            "last_window": datetime.fromtimestamp(max(windows), UTC).isoformat(),
        }
        for baseline in ("serving", "training"):
            config = cfg.model_copy(update={"drift_baseline": baseline})
            pair = measured(windows, reference, config)
            entry[baseline] = (
                {"filling": True}
                if pair is None
                else {
                    "baseline_rows": pair[0].rows,
                    "served_rows": pair[1].rows,
                    "columns": _columns(compare(*pair, config)),
                }
            )
        variants[variant] = entry
    return {
        "version": version,
        "baseline": cfg.drift_baseline,
        "thresholds": {
            "psi": cfg.psi_threshold,
            "ks": cfg.ks_threshold,
            "js": cfg.js_threshold,
            "alpha": cfg.drift_alpha,
            "min_rows": cfg.drift_min_rows,
            "baseline_rows": cfg.baseline_rows,
            "ignored": list(cfg.drift_ignore),
        },
        "reference": reference.meta,
        "variants": variants,
        "computed_at": datetime.now(UTC).isoformat(),
    }


def _age(stamp: float | None, now: float) -> dict[str, Any]:
    if stamp is None:
        return {"at": None, "age_seconds": None}
    return {
        "at": datetime.fromtimestamp(stamp, UTC).isoformat(),
        "age_seconds": round(max(0.0, now - stamp), 1),
    }


def format_age(seconds: float) -> str:
    """A duration as an operator reads it: ``45 s``, ``12 min``, ``3.5 h``, ``4.2 d``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def freshness_report(workdir: Workdir, store: OnlineStore, settings: Settings) -> dict[str, Any]:
    """Ages of what the service serves from (see the module docs), each with its threshold
    and whether it is stale."""
    cfg = settings.monitoring
    now = time.time()
    version = store.current_version()
    meta = (store.get_meta(version) or {}) if version is not None else {}

    def stamp(key: str) -> float | None:
        value = meta.get(key)
        return datetime.fromisoformat(value).timestamp() if value else None

    newest = None
    if workdir.events_dir.is_dir():
        log = EventLog(workdir.events_dir)
        with log.reading():
            last = log.scan().select(pl.col("timestamp").max()).collect().item()
        newest = last.timestamp() if last is not None else None
    items = {
        "published_version": (stamp("published_at"), cfg.max_version_age_s),
        "feature_snapshot": (stamp("snapshot_time"), None),
        "newest_event": (newest, cfg.max_event_age_s),
        "precomputed_feeds": (stamp("precomputed_at"), settings.serving.precomputed_max_age_s),
    }
    out: dict[str, Any] = {"version": version, "checked_at": datetime.now(UTC).isoformat()}
    for name, (value, limit) in items.items():
        entry = _age(value, now)
        entry["threshold_seconds"] = limit
        entry["stale"] = bool(
            limit is not None and entry["age_seconds"] is not None and entry["age_seconds"] > limit
        )
        out[name] = entry
    if version is None:
        out["note"] = "nothing is published"
    return out
