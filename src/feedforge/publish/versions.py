"""The lifecycle of published versions: retire, prune after a grace period, roll back.

* A version stops being current when a publish or a rollback flips the pointer away from it;
  :func:`retire` records that moment in its metadata (``retired_at``).
* :func:`prune_versions` deletes versions older than the newest ``keep`` once they have been
  retired for ``grace_s`` seconds (with their bundles): a service that resolved the old
  pointer just before a flip still finds the old version's keys for its last requests.
  Versions with no ``retired_at`` (never current, or written before it existed) count as
  retired long ago. The current version is never deleted.
* :func:`rollback` flips the pointer back to an earlier kept version (by default the newest
  one before the current), atomically, as a publish does; running services follow it on their
  next request.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime

from feedforge.errors import ArtifactError, NotPublishedError, StoreError, ValidationError
from feedforge.experiments.registry import ExperimentRegistry
from feedforge.store.base import OnlineStore
from feedforge.store.last_current import remember_current
from feedforge.workdir import Workdir

logger = logging.getLogger("feedforge.publish")


def retire(store: OnlineStore, version: str, now: datetime | None = None) -> None:
    """Record that ``version`` stopped being current at ``now`` (default: now)."""
    meta = store.get_meta(version)
    if meta is None:
        return
    meta["retired_at"] = (now or datetime.now(UTC)).isoformat()
    store.put_meta(version, meta)


def _retired_for_s(meta: dict[str, object] | None, now: datetime) -> float:
    stamp = (meta or {}).get("retired_at")
    if not isinstance(stamp, str):
        return float("inf")
    return (now - datetime.fromisoformat(stamp)).total_seconds()


def prune_versions(
    workdir: Workdir,
    store: OnlineStore,
    keep: int,
    grace_s: float = 0.0,
    now: datetime | None = None,
) -> list[str]:
    """Delete versions beyond the newest ``keep`` retired at least ``grace_s`` ago (never the
    current one, nor one a running experiment serves).

    Returns:
        The deleted version ids.
    """
    now = now or datetime.now(UTC)
    current = store.current_version()
    versions = store.versions()
    try:
        pinned = ExperimentRegistry(store).pinned_versions()
    except ValidationError as exc:
        # Which versions the experiments need is unknown: delete none of them this time.
        logger.warning("not pruning versions: the experiment definitions do not read (%s)", exc)
        return []
    doomed = [
        v
        for v in versions[: max(len(versions) - keep, 0)]
        if v != current and v not in pinned and _retired_for_s(store.get_meta(v), now) >= grace_s
    ]
    for version in doomed:
        store.delete_version(version)
        shutil.rmtree(workdir.bundles_dir / version, ignore_errors=True)
    return doomed


def rollback(workdir: Workdir, store: OnlineStore, to: str | None = None) -> tuple[str, str]:
    """Make an earlier kept version current again.

    Args:
        workdir: The work directory holding the versions' bundles.
        store: The online store.
        to: The version to return to; default: the newest version before the current one.

    Returns:
        ``(previous current version, new current version)``.

    Raises:
        NotPublishedError: nothing is published.
        StoreError: there is no earlier version, or ``to`` is not a kept version.
        ArtifactError: the target's bundle is gone from ``WORKDIR/bundles``.
    """
    current = store.current_version()
    if current is None:
        raise NotPublishedError("nothing is published yet: there is nothing to roll back")
    versions = store.versions()
    if to is None:
        earlier = [v for v in versions if v < current]
        if not earlier:
            raise StoreError(
                f"no version before {current} is kept (kept: {versions}); raise "
                "store.keep_versions to keep rollback targets"
            )
        to = earlier[-1]
    elif to not in versions:
        raise StoreError(f"version {to!r} is not in the store (kept: {versions})")
    if to == current:
        raise StoreError(f"version {to} is already current")
    bundle = workdir.bundles_dir / to
    if not (bundle / "manifest.json").is_file():
        raise ArtifactError(bundle, f"the bundle of version {to} is missing", "feedforge publish")
    meta = store.get_meta(to)
    if meta is not None and "retired_at" in meta:
        # Back in service: a prune must not count its earlier retirement.
        store.put_meta(to, {k: v for k, v in meta.items() if k != "retired_at"})
    store.set_current(to)
    if meta is not None:
        remember_current(workdir.current_dir, store, to, meta.get("popular") or [])
    retire(store, current)
    return current, to
