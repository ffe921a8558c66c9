"""Experiment definitions in the online store, where every serving worker reads them.

All experiments live in one revisioned store document, ``experiments``
(:meth:`~feedforge.store.base.OnlineStore.put_document`): ``{"experiments": [...]}``, each
entry an :class:`~feedforge.experiments.definition.Experiment` as JSON. Every change is a
compare-and-set on the document's revision, retried on a conflict, so two operators never
overwrite each other; each experiment carries its own ``revision`` too. Workers poll the
document (:class:`~feedforge.experiments.follow.ExperimentFollower` in the service), so a
start or stop reaches every worker on every host without a restart.

Checks made here (each error names the experiment and the field):

* ``create``: a new id; the definition valid; its versions, if named, published.
* ``start``: versions published (``current`` resolved to the version current now, so the
  experiment compares fixed versions); compatible with the running experiments
  (:func:`~feedforge.experiments.assignment.check_compatible`).
* ``stop``: only a running experiment. A stopped experiment is kept (its analysis reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from feedforge.errors import StoreConflictError, ValidationError
from feedforge.experiments.assignment import check_compatible
from feedforge.experiments.definition import Experiment, parse_experiment
from feedforge.store.base import OnlineStore

DOCUMENT = "experiments"
"""The store document holding every experiment."""
_MAX_ATTEMPTS = 20


def decode_document(body: dict[str, Any] | None) -> list[Experiment]:
    """The experiments of a stored document body (empty when none was written).

    Raises:
        ValidationError: an entry is not a valid experiment (names it).
    """
    entries = (body or {}).get("experiments", [])
    return [parse_experiment(entry, f"stored experiment #{n}") for n, entry in enumerate(entries)]


class ExperimentRegistry:
    """Create, start, stop and read experiments in an online store.

    Args:
        store: The online store (the service's).
        clock: The time of starts and stops; tests replace it.
    """

    def __init__(
        self, store: OnlineStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.store = store
        self.clock = clock

    def experiments(self) -> list[Experiment]:
        """Every experiment, in creation order."""
        return decode_document(self.store.get_document(DOCUMENT)[1])

    def get(self, experiment_id: str) -> Experiment:
        """One experiment.

        Raises:
            ValidationError: no experiment has that id.
        """
        return _find(self.experiments(), experiment_id)

    def create(self, definition: dict[str, Any] | Experiment) -> Experiment:
        """Add a draft experiment.

        Raises:
            ValidationError: the definition is invalid, the id is taken, or a named version
                is not published.
        """
        data = definition.model_dump() if isinstance(definition, Experiment) else dict(definition)
        data.update(status="draft", created_at=self.clock(), started_at=None, stopped_at=None)
        data["revision"] = 1
        experiment = parse_experiment(data)
        self._check_versions(experiment, resolve=False)

        def change(experiments: list[Experiment]) -> list[Experiment]:
            if any(e.id == experiment.id for e in experiments):
                raise ValidationError(f"experiment {experiment.id!r}: id: already exists")
            return [*experiments, experiment]

        self._update(change)
        return experiment

    def start(self, experiment_id: str) -> Experiment:
        """Start a draft experiment: resolve ``current``, check versions and compatibility.

        Raises:
            ValidationError: not a draft, a version is not published, or it conflicts with
                a running experiment.
        """
        started: list[Experiment] = []

        def change(experiments: list[Experiment]) -> list[Experiment]:
            experiment = _find(experiments, experiment_id)
            if experiment.status != "draft":
                raise ValidationError(
                    f"experiment {experiment_id!r}: status: is {experiment.status}; only a "
                    "draft can start (create a new experiment to run it again)"
                )
            experiment = self._check_versions(experiment, resolve=True)
            experiment = experiment.model_copy(
                update={
                    "status": "running",
                    "started_at": self.clock(),
                    "revision": experiment.revision + 1,
                }
            )
            others = [e for e in experiments if e.status == "running" and e.id != experiment_id]
            check_compatible([*others, experiment])
            started[:] = [experiment]
            return [experiment if e.id == experiment_id else e for e in experiments]

        self._update(change)
        return started[0]

    def stop(self, experiment_id: str) -> Experiment:
        """Stop a running experiment (its units get the default feed from the next refresh).

        Raises:
            ValidationError: it is not running.
        """
        stopped: list[Experiment] = []

        def change(experiments: list[Experiment]) -> list[Experiment]:
            experiment = _find(experiments, experiment_id)
            if experiment.status != "running":
                raise ValidationError(
                    f"experiment {experiment_id!r}: status: is {experiment.status}, not running"
                )
            experiment = experiment.model_copy(
                update={
                    "status": "stopped",
                    "stopped_at": self.clock(),
                    "revision": experiment.revision + 1,
                }
            )
            stopped[:] = [experiment]
            return [experiment if e.id == experiment_id else e for e in experiments]

        self._update(change)
        return stopped[0]

    def pinned_versions(self) -> set[str]:
        """Versions that running experiments serve (publishing must not prune them)."""
        return {v for e in self.experiments() if e.status == "running" for v in e.versions()}

    # -- internals ----------------------------------------------------------------------------
    def _check_versions(self, experiment: Experiment, *, resolve: bool) -> Experiment:
        variants = []
        for n, variant in enumerate(experiment.variants):
            version = variant.version
            if version == "current" and resolve:
                version = self.store.current_version()
                if version is None:
                    raise ValidationError(
                        f"experiment {experiment.id!r}: variants.{n}.version: 'current', but "
                        "nothing is published"
                    )
            elif version is not None and version != "current" and not self.store.get_meta(version):
                raise ValidationError(
                    f"experiment {experiment.id!r}: variants.{n}.version: {version!r} is not "
                    f"a published version (kept: {self.store.versions()})"
                )
            variants.append(variant.model_copy(update={"version": version}))
        return experiment.model_copy(update={"variants": variants})

    def _update(self, change: Callable[[list[Experiment]], list[Experiment]]) -> None:
        for _ in range(_MAX_ATTEMPTS):
            revision, body = self.store.get_document(DOCUMENT)
            experiments = change(decode_document(body))
            document = {"experiments": [e.model_dump(mode="json") for e in experiments]}
            try:
                self.store.put_document(DOCUMENT, document, revision)
                return
            except StoreConflictError:
                continue
        raise StoreConflictError(
            f"the experiments document kept changing under {_MAX_ATTEMPTS} attempts; try again"
        )


def _find(experiments: list[Experiment], experiment_id: str) -> Experiment:
    for experiment in experiments:
        if experiment.id == experiment_id:
            return experiment
    known = [e.id for e in experiments]
    raise ValidationError(f"experiment {experiment_id!r}: not found (known: {known})")
