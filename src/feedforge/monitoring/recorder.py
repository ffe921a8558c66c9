"""The serving profile: what a service actually served, counted per version, experiment
variant and time window, added up exactly across every worker and host in the online store.

Each worker counts the served rows of its requests in memory (:meth:`ProfileRecorder.record`
queues the feature rows of the items a feed shows, their ranker scores and the request's
device; :meth:`ProfileRecorder.accumulate` bins them on the version's reference profile in one
pass, off the request path), and every ``monitoring.profile_flush_s`` adds the counts to the
store (:meth:`ProfileRecorder.flush`,
:meth:`~feedforge.store.base.OnlineStore.add_counts`: Redis ``HINCRBY`` in one
``MULTI``/``EXEC``). Counts the store did not take stay in memory and go with the next flush,
so a store outage loses none; a worker that stops flushes first. The profile of a version and
variant is read back with :func:`served_windows`.

Profiled columns (:func:`profiled_columns`): every ranking feature but ``position``, which
serving pins to :data:`~feedforge.features.definitions.SERVING_POSITION` by design (its
training distribution is the logged slots'), then ``score`` (and ``score_<head>`` for a
multi-task ranker's heads), then the categorical ``device`` of the request. Columns of the
item (its counters, age, duration, price, the user x item affinity, the retrieval score and
the ranker's score) are counted once per shown item; columns of the request
(:func:`request_level`: the user's counters, the hour, the device) once per feed, so their
counts are requests and drift's significance tests see independent draws.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from feedforge.errors import StoreError
from feedforge.features.definitions import DEVICES, FEATURES
from feedforge.monitoring.metrics import ServiceMetrics
from feedforge.monitoring.profile import Profile, ProfileAccumulator, ProfileSpec
from feedforge.store.base import OnlineStore

QUEUED_FEEDS = 10_000
"""Feeds queued before the request path bins them itself (the monitor thread normally does,
every ``monitoring.profile_flush_s``)."""
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


PROFILE_PREFIX = "profile."
"""The store's counters of a serving profile are named this, then the variant."""


def counts_name(variant: str) -> str:
    """The store's name of a variant's serving profile counts (characters a store name may
    not hold become ``_``: ``a.x+b.y`` is stored as ``profile.a.x_b.y``)."""
    return PROFILE_PREFIX + _UNSAFE.sub("_", variant)


def served_windows(
    store: OnlineStore, version: str, variant: str, spec: ProfileSpec
) -> dict[int, Profile]:
    """The serving profile of a version and variant, per window (start, epoch seconds)."""
    return Profile.windows_from_fields(spec, store.get_counts(version, counts_name(variant)))


def window_of(now_s: float, window_s: int) -> int:
    """The start of the window ``now_s`` falls in."""
    return int(now_s // window_s) * window_s


@dataclass(frozen=True)
class _Feed:
    """One feed's served rows, queued by the request path."""

    key: tuple[str, str, int]
    spec: ProfileSpec
    X: np.ndarray
    names: tuple[str, ...]
    scores: dict[str, np.ndarray]


@dataclass
class _Pending:
    accumulator: ProfileAccumulator
    rows: int = 0


@dataclass
class _Layout:
    """Where a feature matrix's columns go in an accumulator's rows, which of them are
    counted once per feed, and where the device one-hot is."""

    targets: np.ndarray
    sources: np.ndarray
    scores: list[tuple[int, str]]
    request: np.ndarray
    devices: np.ndarray
    width: int
    _masks: dict[int, np.ndarray] = field(default_factory=dict)

    def counted(self, n: int) -> np.ndarray:
        """The cells of ``n`` rows to count (the request's columns in the first row only)."""
        mask = self._masks.get(n)
        if mask is None:
            mask = np.ones((n, self.width), dtype=bool)
            mask[1:, self.request] = False
            self._masks[n] = mask
        return mask


def request_level(column: str) -> bool:
    """Whether a column describes the request rather than the shown item: the user's
    counters and CTRs, the hour and the device (every shown item of a feed shares them, so
    they are counted once per feed, as their training rows are correlated the same way)."""
    return (column.startswith("user_") and column != "user_category_affinity") or column.startswith(
        ("hour_", "device")
    )


class ProfileRecorder:
    """One worker's serving-profile counts, added to the store on :meth:`flush` (see the
    module docs). Thread-safe."""

    def __init__(self, store: OnlineStore, window_s: int, metrics: ServiceMetrics) -> None:
        self.store = store
        self.window_s = window_s
        self.metrics = metrics
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._queue: deque[_Feed] = deque()
        self._pending: dict[tuple[str, str, int], _Pending] = {}
        self._layouts: dict[tuple[tuple[str, ...], tuple[str, ...]], _Layout] = {}
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
        """Count one feed's served rows: ``X`` (their features, columns ``names``), their
        ``scores`` (``{"score": ..., "score_<head>": ...}``), at wall time ``now_s``. The
        request's columns (:func:`request_level`) are counted once, from the first row.

        The request only queues the rows (a deque append); :meth:`accumulate` bins every
        queued feed in one pass (the monitor thread, before each flush), or the request
        itself once :data:`QUEUED_FEEDS` are waiting."""
        if not len(X):
            return
        key = (version, variant, window_of(now_s, self.window_s))
        self._queue.append(_Feed(key, spec, X, tuple(names), dict(scores)))
        if len(self._queue) >= QUEUED_FEEDS:
            self.accumulate()

    def accumulate(self) -> None:
        """Bin the queued feeds into the pending counts, one batch per version, variant and
        window."""
        with self._lock:
            batches: dict[tuple[str, str, int], list[_Feed]] = {}
            while self._queue:
                feed = self._queue.popleft()
                batches.setdefault(feed.key, []).append(feed)
            for key, feeds in batches.items():
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = _Pending(ProfileAccumulator(feeds[0].spec))
                self._add(pending, feeds)

    def _add(self, pending: _Pending, feeds: list[_Feed]) -> None:
        accumulator = pending.accumulator
        parts, masks, devices = [], [], []
        for feed in feeds:
            layout = self._layout(accumulator, feed.names)
            n = len(feed.X)
            rows = np.empty((n, len(accumulator.numeric_names)))
            rows[:, layout.targets] = feed.X[:, layout.sources]
            for j, name in layout.scores:
                rows[:, j] = feed.scores.get(name, np.nan)
            parts.append(rows)
            masks.append(layout.counted(n))
            onehot = feed.X[0, layout.devices]
            hot = int(onehot.argmax())
            devices.append(DEVICES[hot] if onehot[hot] > 0 else UNKNOWN_DEVICE)
            pending.rows += n
        accumulator.add_rows(np.vstack(parts), np.vstack(masks))
        accumulator.add_categories(DEVICE_COLUMN, devices)

    def _layout(self, accumulator: ProfileAccumulator, names: Sequence[str]) -> _Layout:
        key = (accumulator.numeric_names, names if isinstance(names, tuple) else tuple(names))
        layout = self._layouts.get(key)
        if layout is None:
            position = {name: j for j, name in enumerate(names)}
            columns = accumulator.numeric_names
            pairs = [(j, position[name]) for j, name in enumerate(columns) if name in position]
            layout = self._layouts[key] = _Layout(
                targets=np.asarray([t for t, _ in pairs], dtype=np.int64),
                sources=np.asarray([s for _, s in pairs], dtype=np.int64),
                scores=[(j, name) for j, name in enumerate(columns) if name not in position],
                request=np.asarray(
                    [j for j, name in enumerate(columns) if request_level(name)], dtype=np.int64
                ),
                devices=np.asarray([position[f"device_{d}"] for d in DEVICES], dtype=np.int64),
                width=len(columns),
            )
        return layout

    def flush(self) -> bool:
        """Add the counts so far to the store; False when some could not be (they are kept
        for the next flush, so none is lost; a batch is applied all or none, so a refused one
        is never half added; only a reply lost after the store applied it would be added
        again, once, by the next flush)."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> bool:
        self.accumulate()
        with self._lock:
            pending, self._pending = self._pending, {}
        for (version, variant, window), entry in pending.items():
            fields = self._unflushed.setdefault((version, variant), {})
            for slot, n in entry.accumulator.take().to_fields(window).items():
                fields[slot] = fields.get(slot, 0) + n
            self.metrics.profiled_rows.labels(version=version, variant=variant).inc(entry.rows)
        done = True
        for key in list(self._unflushed):
            version, variant = key
            try:
                # False: the version was deleted meanwhile; its counts go with it.
                self.store.add_counts(version, counts_name(variant), self._unflushed[key])
            except StoreError:
                done = False  # kept; the next flush tries again
                continue
            del self._unflushed[key]
        return done

    def queued(self) -> int:
        """Feeds queued by requests and not binned yet."""
        return len(self._queue)
