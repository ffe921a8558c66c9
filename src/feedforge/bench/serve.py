"""The load benchmark: a simulated catalog published to a real Redis, served by
``feedforge serve``, driven at a fixed arrival rate from a separate process.

``feedforge bench serve`` runs, in a temporary work directory:

1. **setup**: simulate the world (``--items``, ``--users``, ``--days``), build, train the
   configured models, publish to Redis (``--redis-url``, a namespace of its own, deleted at
   the end), all timed;
2. **service**: ``feedforge serve --workers W`` in its own process, warmed up (every worker
   loads the version) before measuring;
3. **feeds**: an open-loop driver (aiohttp) in another process sends ``GET /recommend`` at Poisson
   arrivals of ``--rate`` per second for ``--duration`` seconds, each request at its scheduled
   time whatever the earlier ones are doing; a request's latency counts from its *scheduled*
   send time, so queueing behind a slow server is measured (no coordinated omission). p50 /
   p95 / p99, errors (non-200 or transport failures), degraded answers, achieved throughput;
4. **ingestion**: ``POST /events`` in batches of ``--ingest-batch`` from 4 concurrent clients
   for ``--ingest-seconds``; an event counts when acknowledged, i.e. durable in the log;
5. **compute floor**: in this process, with no HTTP and no Redis, the same version's ANN search
   for ``serving.candidates`` candidates plus the ranker's feature assembly and forward pass,
   per request (median over sampled users);
6. **profile**: the service's own per-stage histogram sums (``/metrics``) over the run.

Results go to ``docs/benchmarks/serve.json`` and ``.md`` with the command that made them.

The load generator is :mod:`feedforge.bench.serve_load` (its clients, aiohttp and httpx, are
the ``bench`` extra: ``pip install 'feedforge[bench]'``); the report is
:mod:`feedforge.bench.serve_report`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feedforge.bench import serve_load, serve_report
from feedforge.bench.report import run_info, write_report
from feedforge.bench.service import (
    Progress,
    bench_settings,
    drop_namespace,
    key_env,
    key_header,
    set_up_world,
    start_service,
    write_service_config,
)
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.features.definitions import RAW_COUNTERS, derive_features
from feedforge.index.ann import AnnIndex
from feedforge.index.extended import ExtendedIndex
from feedforge.serving.version import load_version
from feedforge.store.factory import open_store
from feedforge.store.keys import USER_EMB
from feedforge.workdir import Workdir


@dataclass(frozen=True)
class LoadSpec:
    """What the benchmark builds and how hard it drives it."""

    items: int = 1_000_000
    users: int = 20_000
    days: int = 7
    rate: float = 200.0
    duration_s: float = 60.0
    workers: int = 2
    candidates: int = 500
    ingest_seconds: float = 10.0
    ingest_batch: int = 1_000
    floor_users: int = 200
    redis_url: str = "redis://127.0.0.1:6379/0"
    extra_rates: tuple[float, ...] = ()  # further open-loop runs, e.g. to find the capacity


def _compute_floor(settings: Settings, workdir: Workdir, spec: LoadSpec) -> dict[str, Any]:
    """ANN search + feature assembly + ranker forward per request, no HTTP, no Redis."""
    with open_store(settings.store, workdir.store_path) as store:
        version = store.current_version()
        assert version is not None
        meta = store.get_meta(version) or {}
        state = load_version(store, version, meta, settings.serving, workdir.bundles_dir)
        users = load_dataset(workdir).users.ids.to_list()[: spec.floor_users]
        vectors, _ = store.get_vectors(version, USER_EMB, users)
    n = settings.serving.candidates
    n_categories = int(meta["n_categories"])
    timings: dict[str, list[float]] = {"retrieve": [], "features": [], "score": []}
    raw_base = {name: np.zeros(n) for name in RAW_COUNTERS}
    for query in vectors:
        t0 = time.perf_counter()
        found = state.index.retrieve(query, n)
        t1 = time.perf_counter()
        scores = np.asarray(found.scores, dtype=np.float64)
        raw = {name: values[: len(scores)] for name, values in raw_base.items()}
        X = derive_features(raw, scores, n_categories)
        t2 = time.perf_counter()
        if state.ranker is not None:
            state.ranker.score(X)
        t3 = time.perf_counter()
        timings["retrieve"].append(t1 - t0)
        timings["features"].append(t2 - t1)
        timings["score"].append(t3 - t2)
    total = [sum(parts) for parts in zip(*timings.values(), strict=True)]
    return {
        "beam": _beam_tradeoff(
            state.index.base if isinstance(state.index, ExtendedIndex) else state.index, vectors, n
        ),
        "users": len(vectors),
        "candidates": n,
        "ranker": meta.get("ranker"),
        "ann": meta.get("ann"),
        "served_items": int(meta.get("n_items", 0)),
        "cold_items": meta.get("cold_items"),
        "served_users": int(meta.get("n_users", 0)),
        "median_ms": {k: float(np.median(v) * 1e3) for k, v in timings.items()},
        "floor_p50_ms": float(np.median(total) * 1e3),
    }


BEAMS = (512, 768, 1024, 2048)
"""HNSW search beams (``serving.ann_ef_search``) whose recall and time the floor reports."""


def _beam_tradeoff(index: AnnIndex, queries: np.ndarray, n: int) -> list[dict[str, float]]:
    """Per search beam: median ms of one query's search for ``n`` candidates and the mean
    recall@n against exact search, over the floor's users (empty for an exact index)."""
    if index.kind != "hnsw" or not len(queries):
        return []
    exact_ids, _ = index.exact_search(queries, n)
    configured = index.ef_search
    rows = []
    try:
        for beam in BEAMS:
            index.ef_search = beam
            times, recalls = [], []
            for query, truth in zip(queries, exact_ids, strict=True):
                t0 = time.perf_counter()
                found = index.retrieve(query, n)
                times.append(time.perf_counter() - t0)
                truth = truth[truth >= 0]
                recalls.append(np.isin(found.ids, truth).sum() / max(len(truth), 1))
            rows.append(
                {
                    "ef_search": beam,
                    "median_ms": float(np.median(times) * 1e3),
                    "recall": float(np.mean(recalls)),
                }
            )
    finally:
        index.ef_search = configured
    return rows


def _profile(metrics_text: str) -> dict[str, dict[str, float]]:
    """Per stage: count and mean milliseconds from ``feedforge_stage_seconds``; under
    ``"request"`` the same for whole ``/recommend`` requests (``feedforge_request_seconds``,
    from the app's arrival of the request to the start of its answer)."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    sources = (
        ("feedforge_stage_seconds", 'stage="', None),
        ("feedforge_request_seconds", 'endpoint="/recommend"', "request"),
    )
    for line in metrics_text.splitlines():
        for name, label, fixed in sources:
            for suffix, target in (("_sum", sums), ("_count", counts)):
                prefix = f"{name}{suffix}{{{label}"
                if line.startswith(prefix):
                    key = fixed or line[len(prefix) :].split('"', 1)[0]
                    target[key] = float(line.rsplit(" ", 1)[1])
    return {
        stage: {"count": counts.get(stage, 0.0), "mean_ms": 1e3 * sums[stage] / counts[stage]}
        for stage in sums
        if counts.get(stage)
    }


def run_serve(
    base_settings: Settings, spec: LoadSpec, out_dir: Path | None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the benchmark (see the module docs); write ``serve.json`` / ``.md`` to ``out_dir``.

    Raises:
        FeedforgeError: the ``bench`` extra (the load generator's clients) is not installed,
            or the service did not start.
    """
    serve_load.require_client_libraries()
    # httpx is the bench extra's (checked above), imported here so the CLI can import this
    # module, and print that check's one line, without it.
    import httpx

    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    namespace = f"bench-{uuid.uuid4().hex[:12]}"
    settings = bench_settings(
        base_settings,
        items=spec.items,
        users=spec.users,
        days=spec.days,
        redis_url=spec.redis_url,
        namespace=namespace,
        serving={"candidates": spec.candidates},
        dataset={"validation_days": 1, "test_days": 1},
    )
    with tempfile.TemporaryDirectory(prefix="feedforge-bench-serve-") as tmp:
        workdir = Workdir.at(Path(tmp) / "work")
        config = Path(tmp) / "config.yaml"
        write_service_config(settings, config)
        read_headers = key_header(settings.serving.read_api_key)
        write_headers = key_header(settings.serving.api_key)
        try:
            setup = set_up_world(workdir, settings, say)
            users = load_dataset(workdir).users.ids.to_list()
            say("compute floor")
            floor = _compute_floor(settings, workdir, spec)
            say(f"starting feedforge serve --workers {spec.workers}")
            process, base = start_service(workdir, config, spec.workers, key_env(settings))
            try:
                say("warming up (each worker loaded the version before it listened)")
                with httpx.Client(base_url=base, timeout=300, headers=read_headers) as client:
                    for j in range(20 * spec.workers):
                        client.get("/recommend", params={"user_id": users[j % len(users)]})
                say(f"driving {spec.rate}/s for {spec.duration_s} s (open loop)")
                feeds = serve_load.drive_once(
                    base, users, spec.rate, spec.duration_s, process.pid, read_headers
                )
                # An overloaded service still works through requests the driver gave up on.
                profile = _profile(httpx.get(f"{base}/metrics", timeout=600).text)
                sweep = []
                for rate in spec.extra_rates:
                    time.sleep(5)  # let a saturated run's backlog drain
                    say(f"driving {rate}/s for {spec.duration_s} s (open loop)")
                    sweep.append(
                        serve_load.drive_once(
                            base, users, rate, spec.duration_s, process.pid, read_headers
                        )
                    )
                say(f"ingesting for {spec.ingest_seconds} s")
                ingest = asyncio.run(
                    serve_load.ingest(
                        base, spec.ingest_seconds, spec.ingest_batch, headers=write_headers
                    )
                )
            finally:
                process.terminate()
                process.wait(timeout=30)
        finally:
            drop_namespace(settings)
    report: dict[str, Any] = {
        "spec": asdict(spec),
        "namespace": namespace,
        "setup_seconds": setup,
        "feeds": feeds,
        "sweep": sweep,
        "compute_floor": floor,
        "profile_one_worker": profile,
        "ingestion": ingest,
        "targets": serve_report.targets(feeds, floor, ingest),
        **run_info(started),
    }
    if out_dir is not None:
        write_report(out_dir, "serve", report, serve_report.render_markdown(report))
    return report
