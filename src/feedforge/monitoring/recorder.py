"""The serving profile: what a service actually served, counted per version, experiment
variant and time window, added up exactly across every worker and host in the online store.

Each worker counts the served rows of its requests in memory (:meth:`ProfileRecorder.record`:
the feature rows of the items a feed shows, their ranker scores and the request's device,
binned on the version's reference profile), and every ``monitoring.profile_flush_s`` adds the
counts to the store (:meth:`ProfileRecorder.flush`,
:meth:`~feedforge.store.base.OnlineStore.add_counts`: Redis ``HINCRBY`` in one
``MULTI``/``EXEC``). Counts the store did not take stay in memory and go with the next flush,
so a store outage loses none; a worker that stops flushes first. The profile of a version and
variant is read back with :func:`served_windows`.

Profiled columns (:func:`profiled_columns`): every ranking feature but ``position``, which
serving pins to :data:`~feedforge.features.definitions.SERVING_POSITION` by design (its
training distribution is the logged slots'), then ``score`` (and ``score_<head>`` for a
multi-task ranker's heads), then the categorical ``device`` of the request.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from feedforge.errors import StoreError
from feedforge.features.definitions import DEVICES, FEATURES
from feedforge.monitoring.metrics import ServiceMetrics
from feedforge.monitoring.profile import Profile, ProfileAccumulator, ProfileSpec
from feedforge.store.base import OnlineStore

UNPROFILED = frozenset({"position"})
"""Features left out of the profiles (see the module docs)."""
DEVICE_COLUMN = "device"
UNKNOWN_DEVICE = "unknown"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def profiled_columns(heads: Sequence[str] = ()) -> list[str]:
    """The numeric columns of a profile, in order: features, ``score``, ``score_<head>``."""
    return [
        *(f for f in FEATURES if f not in UNPROFILED),
        "score",
        *(f"score_{h}" for h in heads),
    ]


def devices_of(X: np.ndarray, names: Sequence[str]) -> list[str]:
    """The request device of each row, from its ``device_*`` one-hot features."""
    columns = [list(names).index(f"device_{d}") for d in DEVICES]
    onehot = X[:, columns]
    hot = onehot.argmax(axis=1)
    return [DEVICES[j] if onehot[r, j] > 0 else UNKNOWN_DEVICE for r, j in enumerate(hot)]


def counts_name(variant: str) -> str:
    """The store's name of a variant's serving profile counts."""
    return "profile." + _UNSAFE.sub("_", variant)


def served_windows(
    store: OnlineStore, version: str, variant: str, spec: ProfileSpec
) -> dict[int, Profile]:
    """The serving profile of a version and variant, per window (start, epoch seconds)."""
    return Profile.windows_from_fields(spec, store.get_counts(version, counts_name(variant)))


def window_of(now_s: float, window_s: int) -> int:
    """The start of the window ``now_s`` falls in."""
    return int(now_s // window_s) * window_s


@dataclass
class _Pending:
    accumulator: ProfileAccumulator
    rows: int = 0


class ProfileRecorder:
    """One worker's serving-profile counts, added to the store on :meth:`flush` (see the
    module docs). Thread-safe."""

    def __init__(self, store: OnlineStore, window_s: int, metrics: ServiceMetrics) -> None:
        self.store = store
        self.window_s = window_s
        self.metrics = metrics
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._pending: dict[tuple[str, str, int], _Pending] = {}
        self._unflushed: dict[tuple[str, str], dict[str, int]] = {}

    def record(
        self,
        version: str,
        spec: ProfileSpec,
        variant: str,
        X: np.ndarray,
        names: Sequence[str],
        scores: Mapping[str, np.ndarray],
        now_s: float,
    ) -> None:
        """Count served rows: ``X`` (their features, columns ``names``), their ``scores``
        (``{"score": ..., "score_<head>": ...}``), at wall time ``now_s``."""
        if not len(X):
            return
        key = (version, variant, window_of(now_s, self.window_s))
        position = {name: j for j, name in enumerate(names)}
        numeric = {
            column.name: X[:, position[column.name]]
            for column in spec.columns
            if column.kind == "numeric" and column.name in position
        }
        numeric.update(scores)
        devices = devices_of(X, names)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Pending(ProfileAccumulator(spec))
            pending.accumulator.add_columns(numeric, {DEVICE_COLUMN: devices})
            pending.rows += len(X)

    def flush(self) -> bool:
        """Add the counts so far to the store; False when some could not be (they are kept
        for the next flush: none is lost, none added twice, as a batch is applied all or
        none)."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            pending, self._pending = self._pending, {}
        for (version, variant, window), entry in pending.items():
            fields = self._unflushed.setdefault((version, variant), {})
            for field, n in entry.accumulator.take().to_fields(window).items():
                fields[field] = fields.get(field, 0) + n
            self.metrics.profiled_rows.labels(version=version, variant=variant).inc(entry.rows)
        done = True
        for key in list(self._unflushed):
            version, variant = key
            try:
                self.store.add_counts(version, counts_name(variant), self._unflushed[key])
            except StoreError:
                done = False  # kept; the next flush tries again
                continue
            del self._unflushed[key]
        return done

    def backlog(self) -> int:
        """Field sets not yet in the store (after a failed flush)."""
        return len(self._unflushed)
