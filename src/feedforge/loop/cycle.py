"""One continuous-training cycle: build -> data gate -> train -> offline gate -> stage ->
off-policy gate -> canary -> promote or roll back.

:func:`run_cycle` holds the loop's lock (:func:`~feedforge.loop.runs.loop_lock`: two cycles
never run at once), then advances the newest unfinished run, or starts a new one. Each step
is recorded in the run's record before it starts and after it ends
(:class:`~feedforge.loop.runs.Run`), so a cycle killed at any step is resumed by the next
``loop run``: finished steps are skipped, the interrupted one is redone from a clean state
(its products deleted first; a half-written staged version is deleted from the store and the
bundles before a new one is written).

* **compact** the event log's finished days (``loop.compact``; one file per day instead of
  one per request, so the build's scan does not grow with the traffic);
* **build** the dataset from the event log up to now, into the run's own directory;
* **data gate** (:func:`~feedforge.loop.gates.data_gate`);
* **train** every configured model into the run's directory;
* **offline gate**: the candidate against the current version on the same test window;
* **stage**: publish the candidate to the store without making it current;
* **off-policy gate** on the recent feed log (the staged candidate is deleted if it fails:
  it never served a request);
* **canary**: an experiment serving it to ``loop.canary_share`` of the users
  (:mod:`feedforge.loop.canary`);
* **decide** after ``loop.canary_window_s``: promote or roll back.

A candidate that fails a gate ends the run as ``rejected`` with the gate's name and reason;
nothing was published. A step that raises ends it as ``failed`` with the error (the next
cycle starts afresh). With ``wait=False`` the cycle returns while its canary runs (status
``canary``), for cron: the next call decides once the window has passed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from feedforge.artifacts import new_version
from feedforge.config import Settings
from feedforge.datasets.build import build_dataset
from feedforge.datasets.load import Dataset, load_dataset
from feedforge.errors import ArtifactError, EventLogError, FeedforgeError
from feedforge.events.log import EventLog
from feedforge.loop.canary import Clock, canary_verdict, finish, start_canary, wall_clock
from feedforge.loop.gates import Gate, data_gate, offline_gate, ope_gate, published_pipeline
from feedforge.loop.runs import Run, loop_lock, new_run, prune_runs, unfinished
from feedforge.models.base import EmbeddingRecommender
from feedforge.models.registry import load_ranker, load_recommender
from feedforge.models.train import WarmStart, train_models
from feedforge.publish.publisher import publish
from feedforge.serving.pipeline import FeedService
from feedforge.store.base import OnlineStore
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

Progress = Callable[[str], None]
Traffic = Callable[[Run], None]
"""Called while a canary waits for its window (e.g. simulated users in a benchmark)."""


def run_cycle(
    workdir: Workdir,
    settings: Settings,
    *,
    wait: bool = True,
    poll_s: float = 30.0,
    traffic: Traffic | None = None,
    trigger: str = "manual",
    progress: Progress | None = None,
    clock: Clock | None = None,
    after_train: Callable[[Workdir], None] | None = None,
) -> Run:
    """Advance the unfinished run, or start and advance a new one (see the module docs).

    Args:
        workdir: The work directory (its event log, catalog, bundles and store).
        settings: The settings (``loop`` the gates and canary).
        wait: Wait through the canary window (else return while it runs).
        poll_s: How often a waiting canary is checked.
        traffic: Called instead of sleeping while a canary waits (simulated users).
        trigger: Why the cycle started (recorded).
        progress: Progress messages.
        clock: The time the canary and the off-policy window are measured in (default: the
            wall clock; a simulation passes its own).
        after_train: Called with the run's staged work directory after training (a
            benchmark injects a broken candidate with it).

    Returns:
        The run, finished or (with ``wait=False``) with its canary running.

    Raises:
        feedforge.errors.LoopBusyError: another cycle holds the lock.
        feedforge.errors.FeedforgeError: a step failed (the run is recorded as failed).
    """
    say = progress or (lambda _msg: None)
    with loop_lock(workdir), open_store(settings.store, workdir.store_path) as store:
        run = unfinished(workdir)
        if run is None:
            run = new_run(workdir, store.current_version(), trigger)
            say(f"run {run.run_id}: incumbent {run.data['incumbent']}")
        else:
            run.update(resumed=int(run.data.get("resumed", 0)) + 1)
            say(f"run {run.run_id}: resumed at status {run.status}")
        try:
            _advance(
                run,
                _Context(workdir, settings, store, clock or wall_clock, after_train),
                wait,
                poll_s,
                traffic,
                say,
            )
        except BaseException as exc:
            if isinstance(exc, FeedforgeError | ValueError | OSError):
                run.update(
                    status="failed",
                    error=f"{type(exc).__name__}: {exc}",
                    finished_at=datetime.now(UTC).isoformat(),
                )
                _abandon(workdir, settings, store, run, clock or wall_clock)
            raise
        if run.finished:
            prune_runs(workdir, settings.loop.keep_runs, protect=set(store.versions()))
        return run


def _reject(run: Run, gate: Gate) -> None:
    run.update(
        status="rejected",
        decision={"action": "reject", "gate": gate.name, "reasons": [gate.reason]},
        finished_at=datetime.now(UTC).isoformat(),
    )


def _passes(run: Run, step: str, compute: Callable[[], Gate], say: Progress) -> bool:
    """Run (or, on resume, read back) a gate step; a failed gate rejects the run."""
    if run.done(step):
        result = run.step(step).get("result") or {}
        gate = Gate(
            str(result.get("name", step)),
            bool(result.get("passed")),
            str(result.get("reason", "")),
            dict(result.get("numbers", {})),
            bool(result.get("skipped", False)),
        )
    else:
        with run.timed(step) as result:
            gate = compute()
            result.update(gate.to_json())
        run.data["gates"] = [g for g in run.data["gates"] if g["name"] != gate.name]
        run.data["gates"].append(gate.to_json())
        run.save()
    say(f"{gate.name} gate: {'passed' if gate.passed else 'FAILED'}: {gate.reason}")
    if not gate.passed:
        _reject(run, gate)
    return gate.passed


def _abandon(
    workdir: Workdir, settings: Settings, store: OnlineStore, run: Run, clock: Clock
) -> None:
    """After a failed step: a staged candidate that is not current stops its canary (if it
    started one) and is retired, so the versions' pruning removes it in time."""
    candidate = run.data.get("candidate")
    if not candidate:
        return
    with contextlib.suppress(FeedforgeError):  # best effort: the step's error is the news
        if store.current_version() != candidate and store.get_meta(str(candidate)):
            finish(workdir, settings, store, run.run_id, str(candidate), "rollback", clock)


def _discard(workdir: Workdir, store: OnlineStore, version: str) -> None:
    """Delete a staged version that never served (store keys and bundle)."""
    if store.current_version() != version:
        store.delete_version(version)
    shutil.rmtree(workdir.bundles_dir / version, ignore_errors=True)


@dataclass(frozen=True)
class _Context:
    workdir: Workdir
    settings: Settings
    store: OnlineStore
    clock: Clock
    after_train: Callable[[Workdir], None] | None


def _advance(
    run: Run, ctx: _Context, wait: bool, poll_s: float, traffic: Traffic | None, say: Progress
) -> None:
    workdir, settings, store = ctx.workdir, ctx.settings, ctx.store
    staged = run.products(workdir)
    incumbent = run.data.get("incumbent")
    if settings.loop.compact and not run.done("compact"):
        with run.timed("compact") as result:
            # The service writes a file per POST /events; merging the finished days keeps
            # the build's scan from growing with the number of requests.
            try:
                done = EventLog(workdir.events_dir).compact(before=ctx.clock().date())
                result.update(asdict(done))
            except EventLogError as exc:  # the build reads an uncompacted log as well
                result["error"] = exc.message
    if not run.done("build"):
        with run.timed("build") as result:
            shutil.rmtree(staged.dataset_dir, ignore_errors=True)
            say("building the dataset from the event log")
            manifest = build_dataset(staged, settings, say)
            result.update(dataset_version=manifest.version, counts=manifest.counts)
        run.update(dataset_version=manifest.version)
    dataset = load_dataset(staged)

    earlier = _incumbent_products(workdir, store, incumbent)

    def check_data() -> Gate:
        previous = None
        if earlier is not None:
            with contextlib.suppress(ArtifactError):  # unreadable: no label-rate comparison
                previous = load_dataset(earlier)
        return data_gate(dataset, settings, previous)

    if not _passes(run, "data_gate", check_data, say):
        return

    if not run.done("train"):
        with run.timed("train") as result:
            shutil.rmtree(staged.models_dir, ignore_errors=True)
            warm = (
                WarmStart(earlier, settings.loop.warm_iterations)
                if settings.loop.warm_start and earlier is not None
                else None
            )
            saved = train_models(staged, settings, say, warm)
            result["models"] = {name: m.version for name, m in saved.items()}
            result["warm_start"] = {
                name: m.extra["warm_start"] for name, m in saved.items() if "warm_start" in m.extra
            }
            if ctx.after_train is not None:
                ctx.after_train(staged)
        run.update(model_versions=run.step("train")["result"]["models"])

    offline = lambda: _offline(staged, workdir, settings, store, dataset, incumbent)  # noqa: E731
    if not _passes(run, "offline_gate", offline, say):
        return

    if not run.done("stage"):
        interrupted = run.data.get("candidate")
        if interrupted:
            _discard(workdir, store, str(interrupted))
        version = new_version()
        run.update(candidate=version)
        with run.timed("stage") as result:
            publish(staged, settings, store, say, make_current=False, version=version)
            result["version"] = version
    candidate = str(run.data["candidate"])

    ope = lambda: _ope(workdir, settings, store, candidate, incumbent, ctx.clock())  # noqa: E731
    if not _passes(run, "ope_gate", ope, say):
        _discard(workdir, store, candidate)
        return

    if incumbent is None or store.current_version() is None:
        # Nothing serves yet: there is no one to canary against.
        with run.timed("decide") as result:
            finish(workdir, settings, store, run.run_id, candidate, "promote", ctx.clock)
            result["action"] = "promote"
        _decided(run, {"action": "promote", "reasons": ["nothing was serving"], "checks": {}})
        return

    if not run.done("canary"):
        with run.timed("canary") as result:
            experiment = start_canary(store, settings, run.run_id, candidate, ctx.clock)
            result.update(experiment=experiment.id, started_at=str(experiment.started_at))
        run.update(status="canary", experiment=run.step("canary")["result"]["experiment"])
        say(f"canary {run.data['experiment']}: {settings.loop.canary_share:.0%} of users")

    while True:
        verdict = canary_verdict(workdir, settings, store, run.run_id, candidate, ctx.clock)
        if verdict["action"] != "wait":
            break
        run.update(canary_status=verdict["reasons"][0])
        if traffic is not None:
            traffic(run)
            continue
        if not wait:
            say(f"canary running: {verdict['reasons'][0]}")
            return
        time.sleep(poll_s)
    with run.timed("decide") as result:
        result.update(verdict)
        finish(workdir, settings, store, run.run_id, candidate, verdict["action"], ctx.clock)
    _decided(run, verdict)
    say(f"decision: {verdict['action']}: {'; '.join(verdict['reasons'])}")


def _decided(run: Run, verdict: dict[str, object]) -> None:
    run.update(
        status="promoted" if verdict["action"] == "promote" else "rolled_back",
        decision=verdict,
        finished_at=datetime.now(UTC).isoformat(),
    )


def _offline(
    staged: Workdir,
    workdir: Workdir,
    settings: Settings,
    store: OnlineStore,
    dataset: Dataset,
    incumbent: str | None,
) -> Gate:
    command = staged.command("train")
    retrieval = load_recommender(
        settings.models.retrieval, staged.model_dir(settings.models.retrieval), command
    )
    if not isinstance(retrieval, EmbeddingRecommender):
        raise ArtifactError(
            staged.model_dir(settings.models.retrieval),
            f"retrieval model {settings.models.retrieval!r} has no embeddings to serve",
            command,
        )
    ranker_dir = staged.model_dir(settings.models.ranker.type)
    ranker = (
        load_ranker(settings.models.ranker.type, ranker_dir, command)
        if ranker_dir.is_dir()
        else None
    )
    current = (
        published_pipeline(workdir, store, incumbent, dataset)
        if incumbent is not None and store.get_meta(incumbent) is not None
        else None
    )
    return offline_gate(dataset, settings, (retrieval, ranker), current)


def _ope(
    workdir: Workdir,
    settings: Settings,
    store: OnlineStore,
    candidate: str,
    incumbent: str | None,
    now: datetime,
) -> Gate:
    service = FeedService(settings, workdir, store)
    try:
        service.versions.preload()
        return ope_gate(workdir, settings, service, candidate, incumbent, now)
    finally:
        service.close()


def _incumbent_products(
    workdir: Workdir, store: OnlineStore, incumbent: str | None
) -> Workdir | None:
    """Where the dataset and models the serving version was built from are, when still on
    disk (the work directory's own, or an earlier run's)."""
    if incumbent is None:
        return None
    meta = store.get_meta(incumbent) or {}
    wanted = meta.get("dataset_version")
    places = [workdir] + [
        workdir.staged(path)
        for path in sorted((workdir.loop_dir / "runs").glob("*"), reverse=True)
        if path.is_dir()
    ]
    for place in places:
        try:
            manifest = json.loads((place.dataset_dir / "manifest.json").read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("version") == wanted:
            return place
    return None
