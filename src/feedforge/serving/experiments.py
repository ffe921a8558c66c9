"""The running experiments as a worker sees them: assignment, each request's serving plan, and
the extra versions experiments pin.

Every worker reads the store's ``experiments`` document
(:mod:`feedforge.experiments.registry`) at start-up and then every
``serving.experiments_refresh_s`` on a background thread, so a start or a stop reaches every
worker on every host within that time, without a restart. Nothing on the request path reads
the store for it: a request assigns its user from the definitions in memory
(:class:`~feedforge.experiments.assignment.Assigner`). A document that cannot be read (the
store is down; logged once per outage) or does not validate (logged once per revision) keeps
the last good one, so an experiment change never fails a request.

**Versions.** A variant that names a published version is served from that version: the
worker keeps it in memory (:class:`~feedforge.serving.version.LoadedVersion`) beside the
current one, loaded on the refresh thread when an experiment starts, dropped when no running
experiment needs it. Each such version costs a worker about what the current version costs
(item matrix, feature snapshot, ANN index, ranker): 922 MiB at 1M items
(``feedforge bench version-memory``, ``docs/benchmarks/version_memory.md``). Until
a pinned version has loaded, the experiment's units get the default feed and no exposure is
logged for them (so analysis never counts a unit under a variant it did not see).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from feedforge.config import ReRankConfig, Settings
from feedforge.errors import FeedforgeError
from feedforge.experiments.assignment import Assigner, Assignment
from feedforge.experiments.definition import Variant
from feedforge.experiments.registry import DOCUMENT, decode_document
from feedforge.serving.version import LoadedVersion, load_version
from feedforge.store.base import OnlineStore
from feedforge.workdir import Workdir

logger = logging.getLogger("feedforge.serving")


@dataclass(frozen=True)
class Plan:
    """How one feed is served: the service's settings with the variants' overrides.

    Attributes:
        version: The pinned version to serve, or None for the store's current one.
        candidates: Retrieval candidates.
        history_weight: The live history's weight in the query vector.
        use_ranker: False: candidates keep their retrieval order.
        reranking: The re-ranking settings.
        variant: The experiment variants it serves, ``experiment.variant`` joined by ``+``
            (``default`` outside every experiment): the monitoring profiles' key.
    """

    version: LoadedVersion | None
    candidates: int
    history_weight: float
    use_ranker: bool
    reranking: ReRankConfig
    variant: str = "default"


@dataclass(frozen=True)
class Assigned:
    """A user's running experiments whose variants are ready, with the pinned versions as
    they were when the user was assigned (a refresh never changes them under a request)."""

    assignments: list[Assignment] = field(default_factory=list)
    pinned: Mapping[str, LoadedVersion] = field(default_factory=dict)

    def interleaving(self) -> Assignment | None:
        """The user's interleaving experiment, if any."""
        return next((a for a in self.assignments if a.experiment.mode == "interleave"), None)


def default_plan(settings: Settings) -> Plan:
    """The plan of a user outside every experiment."""
    return Plan(
        version=None,
        candidates=settings.serving.candidates,
        history_weight=settings.serving.history_weight,
        use_ranker=True,
        reranking=settings.reranking,
    )


class ExperimentFollower:
    """The running experiments of one worker (see the module docs).

    Args:
        store: The online store holding the definitions.
        settings: The service's settings (defaults of every plan; the refresh period).
        workdir: The work directory (the bundles of pinned versions).
        current: Returns the worker's current loaded version (reused when a variant pins it).
        load: Loads a version (tests replace it).
    """

    def __init__(
        self,
        store: OnlineStore,
        settings: Settings,
        workdir: Workdir,
        current: Callable[[], LoadedVersion | None],
        load: Callable[[str], LoadedVersion] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.workdir = workdir
        self._current = current
        self._load = load or self._load_version
        self._assigner = Assigner([])
        self._revision = -1
        self._bad_revision = -1
        self._unreadable = False
        # Replaced, never mutated: a request keeps the mapping it was assigned with.
        self._pinned: Mapping[str, LoadedVersion] = {}
        # version -> (failed loads, monotonic time of the next try)
        self._failed: dict[str, tuple[int, float]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._default = default_plan(settings)

    # -- the background refresh ---------------------------------------------------------------
    def start(self) -> None:
        """Read the definitions now, then every ``serving.experiments_refresh_s``."""
        self.refresh()
        self._thread = threading.Thread(
            target=self._loop, name="feedforge-experiments", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.wait(self.settings.serving.experiments_refresh_s):
            try:
                self.refresh()
            except Exception:  # the thread must outlive any one failed refresh
                logger.exception("refreshing the experiments failed")

    def close(self) -> None:
        """Stop the refresh thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def refresh(self) -> None:
        """Read the definitions; on a new revision, rebuild the assigner and load or drop
        pinned versions. A failure keeps what is in memory."""
        try:
            revision, body = self.store.get_document(DOCUMENT)
        except FeedforgeError as exc:
            if not self._unreadable:  # once per outage, not every refresh
                logger.warning("could not read the experiments (%s); keeping the last ones", exc)
            self._unreadable = True
            return
        if self._unreadable:
            logger.info("the experiments are readable again")
            self._unreadable = False
        if revision == self._revision or revision == self._bad_revision:
            self._load_pinned()  # retries versions that failed to load
            return
        try:
            assigner = Assigner(decode_document(body))
        except FeedforgeError as exc:
            self._bad_revision = revision
            logger.error(
                "experiments revision %d refused (%s); keeping the last ones", revision, exc
            )
            return
        self._assigner = assigner
        self._revision = revision
        self._load_pinned()
        ids = [f"{e.id}({e.mode})" for e in assigner.experiments]
        logger.info("experiments revision %d: running %s", revision, ids or "none")

    def _load_pinned(self) -> None:
        wanted = {v for e in self._assigner.experiments for v in e.versions()}
        pinned = {v: state for v, state in self._pinned.items() if v in wanted}
        now = time.monotonic()
        for version in sorted(wanted - set(pinned)):
            failures, retry_at = self._failed.get(version, (0, 0.0))
            if now < retry_at:
                continue
            current = self._current()
            if current is not None and current.version == version:
                pinned[version] = current
                continue
            try:
                pinned[version] = self._load(version)
            except Exception:
                delay = min(self.settings.serving.load_retry_s * 2**failures, 600.0)
                self._failed[version] = (failures + 1, time.monotonic() + delay)
                logger.exception(
                    "could not load version %s for an experiment; next try in %.0f s",
                    version,
                    delay,
                )
            else:
                self._failed.pop(version, None)
                logger.info("loaded version %s for the running experiments", version)
        self._pinned = pinned  # dropped versions go with the last request using them

    def _load_version(self, version: str) -> LoadedVersion:
        meta = self.store.get_meta(version)
        if meta is None:
            raise FeedforgeError(f"version {version} has no metadata in the store")
        return load_version(
            self.store, version, meta, self.settings.serving, self.workdir.bundles_dir
        )

    # -- the request path -----------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The revision of the definitions in use (-1: none read yet)."""
        return self._revision

    def assign(self, user_id: str) -> Assigned:
        """The user's running experiments whose variants are ready to serve."""
        assigner, pinned = self._assigner, self._pinned
        if not assigner:
            return Assigned()
        ready = [a for a in assigner.assign(user_id) if _ready(a, pinned)]
        return Assigned(ready, pinned)

    def plan(
        self, assigned: Assigned, variant: Variant | None = None, experiment: str | None = None
    ) -> Plan:
        """The plan of a feed under ``assigned``. ``variant`` replaces the variant of
        ``experiment`` (default: the interleaving experiment; each team's feed is planned
        with its variant), e.g. for the counterfactual feeds of a simulation."""
        fields: dict[str, object] = {}
        labels: list[str] = []
        for assignment in assigned.assignments:
            chosen = assignment.variant
            target = (
                assignment.experiment.id == experiment
                if experiment is not None
                else assignment.experiment.mode == "interleave"
            )
            if variant is not None and target:
                chosen = variant
            pinned = assigned.pinned[chosen.version] if chosen.version is not None else None
            fields.update(variant_fields(chosen, pinned))
            labels.append(f"{assignment.experiment.id}.{chosen.name}")
        if not labels:
            return self._default
        fields["variant"] = "+".join(labels)
        return replace(self._default, **fields)  # type: ignore[arg-type]

    @property
    def default(self) -> Plan:
        """The plan of a user outside every experiment."""
        return self._default


def variant_fields(variant: Variant, version: LoadedVersion | None) -> dict[str, object]:
    """The :class:`Plan` fields a variant changes (``version``: its pinned version, loaded)."""
    over = variant.overrides
    fields: dict[str, object] = {} if version is None else {"version": version}
    for name, key in (
        ("candidates", "candidates"),
        ("history_weight", "history_weight"),
        ("ranker", "use_ranker"),
        ("reranking", "reranking"),
    ):
        if getattr(over, name) is not None:
            fields[key] = getattr(over, name)
    return fields


def _ready(assignment: Assignment, pinned: Mapping[str, LoadedVersion]) -> bool:
    experiment = assignment.experiment
    variants = experiment.variants if experiment.mode == "interleave" else [assignment.variant]
    return all(v.version is None or v.version in pinned for v in variants)
