"""The scale-out benchmark: each stage on its distributed engine beside its one-machine path.

``feedforge bench scale`` measures, on this machine:

1. **build**: the dataset build of simulated logs of about ``--events`` events (1M and 10M by
   default; ~100 events per simulated user over 30 days) with polars and with Spark
   (``--spark-master``, ``local[2]``), each ``feedforge build`` in a process of its own: wall
   time and the peak resident memory of its process tree (the Spark driver's JVM included),
   sampled every 0.2 s; the two datasets' row counts must agree (``parity``);
2. **train**: ``feedforge train --nproc N`` for each ``--nproc`` on the first build's dataset
   (two-tower retrieval and the DCN ranker): each torch model's fit time and examples per
   second (two-tower: next-item pairs x epochs; DCN: its fit time and epochs run);
3. **serve**: one simulated world published to a single Redis and to a Redis Cluster (3
   masters, 3 replicas), both servers of the benchmark's own on this host, each served by
   ``feedforge serve --workers 2`` and driven open-loop at the same rate
   (:func:`feedforge.bench.serve_load.drive_once`): p50/p99, errors, degraded answers;
4. **stream**: ``--stream-producers`` threads append batches of events to a Redis Stream on a
   server with ``appendfsync always`` (each append acknowledged once durable) for
   ``--stream-seconds``, while ``--stream-consumers`` ``feedforge ingest`` processes write
   them to the Parquet log; the append rate, and the end-to-end rate until the log holds
   every event (target: 20,000 durable events/s).

Results go to ``docs/benchmarks/scale.json`` and ``.md`` with the command that made them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from feedforge.bench import serve_load
from feedforge.bench.redis_local import LocalRedis, LocalRedisCluster
from feedforge.bench.report import run_info, write_report
from feedforge.bench.service import (
    Progress,
    bench_settings,
    key_env,
    key_header,
    set_up_world,
    start_service,
    write_service_config,
)
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.errors import FeedforgeError
from feedforge.events.log import EventLog
from feedforge.events.schema import Event
from feedforge.events.simulator import simulate
from feedforge.publish.publisher import publish
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir

EVENTS_PER_USER = 102
"""Events the simulator's default user makes in 30 days (2,046,595 for 20,000 users)."""
STREAM_TARGET = 20_000
"""Durable events per second through the stream (the issue's target)."""


@dataclass(frozen=True)
class ScaleSpec:
    """What the benchmark measures (see the module docs)."""

    events: tuple[int, ...] = (1_000_000, 10_000_000)
    spark_master: str = "local[2]"
    spark_driver_memory: str = "6g"
    nproc: tuple[int, ...] = (1, 2)
    train_epochs: int = 3
    serve_items: int = 50_000
    serve_users: int = 10_000
    serve_rate: float = 100.0
    serve_duration_s: float = 30.0
    stream_seconds: float = 20.0
    stream_producers: int = 4
    stream_batch: int = 200
    stream_consumers: int = 2
    parts: tuple[str, ...] = ("build", "train", "serve", "stream")


def measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command``; its wall seconds, the peak summed RSS of its process tree (sampled
    every 0.2 s with psutil) and the tail of its output.

    Raises:
        FeedforgeError: the command failed (its output's tail says why).
    """
    import psutil  # the bench extra

    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        root = psutil.Process(process.pid)
        peak = 0
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        log.seek(0)
        tail = log.read()[-3000:]
    if process.returncode != 0:
        raise FeedforgeError(f"{' '.join(command[3:6])} failed: {tail}")
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak / 2**20), "tail": tail}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from feedforge.cli import main; main()", *args]


def _build_part(spec: ScaleSpec, root: Path, say: Progress) -> tuple[list[dict[str, Any]], Path]:
    """Build each log size with both engines; returns the rows and the first size's work
    directory (the train part's dataset)."""
    rows = []
    first: Path | None = None
    for target in spec.events:
        users = max(100, round(target / EVENTS_PER_USER))
        workdir = Workdir.at(root / f"build-{target}")
        config = root / f"build-{target}.yaml"
        sections = {
            "simulator": {"n_users": users, "n_items": max(2000, users // 4), "n_days": 30},
            "dataset": {
                "spark_master": spec.spark_master,
                "spark_driver_memory": spec.spark_driver_memory,
            },
        }
        config.write_text(yaml.safe_dump(sections))
        settings = Settings.model_validate(sections)
        say(f"build: simulating {users} users (~{target:,} events)")
        t0 = time.perf_counter()
        simulate(settings.simulator, workdir)
        simulated = time.perf_counter() - t0
        events = EventLog(workdir.events_dir).count()
        counts: dict[str, dict[str, int]] = {}
        for engine in ("polars", "spark"):
            say(f"build: {events:,} events with {engine}")
            run = measured(
                _cli("build", "--workdir", str(workdir.root), "--config", str(config),
                     "--engine", engine)
            )  # fmt: skip
            manifest = json.loads((workdir.dataset_dir / "manifest.json").read_text())
            counts[engine] = manifest["counts"]
            rows.append(
                {
                    "events": events,
                    "users": users,
                    "engine": engine if engine == "polars" else f"spark {spec.spark_master}",
                    "seconds": run["seconds"],
                    "peak_rss_mb": run["peak_rss_mb"],
                    "events_per_s": round(events / run["seconds"]),
                    "simulate_seconds": round(simulated, 1),
                }
            )
        rows[-1]["parity"] = rows[-2]["parity"] = counts["polars"] == counts["spark"]
        if first is None:
            first = workdir.root
        else:
            shutil.rmtree(workdir.root, ignore_errors=True)  # 10M events: ~1 GB of disk
    assert first is not None
    return rows, first


def _train_part(
    spec: ScaleSpec, workdir_root: Path, root: Path, say: Progress
) -> list[dict[str, Any]]:
    """``feedforge train --nproc N`` on one dataset: the torch models' fit times."""
    config = root / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "retrieval": "two_tower",
                    "ranker": {"type": "dcn"},
                    "params": {
                        "two_tower": {"epochs": spec.train_epochs, "batch_size": 512},
                        "dcn": {"max_epochs": spec.train_epochs, "patience": spec.train_epochs},
                    },
                }
            }
        )
    )
    workdir = Workdir.at(workdir_root)
    sequences = load_dataset(workdir).train_interactions().sequences()
    pairs = sum(max(len(s) - 1, 0) for s in sequences)
    rows = []
    for nproc in spec.nproc:
        say(f"train: --nproc {nproc}")
        run = measured(
            _cli("train", "--workdir", str(workdir.root), "--config", str(config),
                 "--nproc", str(nproc))
        )  # fmt: skip
        tower = json.loads((workdir.model_dir("two_tower") / "manifest.json").read_text())
        dcn = json.loads((workdir.model_dir("dcn") / "manifest.json").read_text())
        rows.append(
            {
                "nproc": nproc,
                "train_seconds": run["seconds"],
                "peak_rss_mb": run["peak_rss_mb"],
                "two_tower_fit_seconds": tower["extra"]["fit_seconds"],
                "two_tower_pairs_per_s": round(
                    pairs * spec.train_epochs / tower["extra"]["fit_seconds"]
                ),
                "dcn_fit_seconds": dcn["extra"]["fit_seconds"],
                "dcn_epochs": dcn["extra"].get("epochs"),
            }
        )
    return rows


def _serve_part(spec: ScaleSpec, base: Settings, root: Path, say: Progress) -> list[dict[str, Any]]:
    """One world served from a single Redis and from a Redis Cluster at the same rate."""
    serve_load.require_client_libraries()
    import httpx

    single = LocalRedis(root / "redis-single")
    (root / "redis-single").mkdir()
    cluster = LocalRedisCluster(root / "redis-cluster")
    rows = []
    try:
        single.start()
        say("serve: starting a 3+3 Redis Cluster")
        cluster.start()
        namespace = f"scale-{uuid.uuid4().hex[:8]}"
        stores = {
            "redis": bench_settings(
                base, items=spec.serve_items, users=spec.serve_users, days=7,
                redis_url=single.url, namespace=namespace, serving={"candidates": 500},
                dataset={"validation_days": 1, "test_days": 1},
            ),
            "redis-cluster": bench_settings(
                base, items=spec.serve_items, users=spec.serve_users, days=7,
                redis_url=cluster.url, namespace=namespace, serving={"candidates": 500},
                dataset={"validation_days": 1, "test_days": 1}, store_type="redis-cluster",
            ),
        }  # fmt: skip
        workdir = Workdir.at(root / "serve")
        set_up_world(workdir, stores["redis"], say)
        with open_store(stores["redis-cluster"].store, workdir.store_path) as store:
            say("serve: publishing to the cluster")
            publish(workdir, stores["redis-cluster"], store)
        users = load_dataset(workdir).users.ids.to_list()
        for name, settings in stores.items():
            config = root / f"serve-{name}.yaml"
            write_service_config(settings, config)
            say(f"serve: {name}, {spec.serve_rate}/s for {spec.serve_duration_s} s")
            process, url = start_service(workdir, config, 2, key_env(settings))
            try:
                headers = key_header(settings.serving.read_api_key)
                with httpx.Client(base_url=url, timeout=300, headers=headers) as client:
                    for j in range(40):
                        client.get("/recommend", params={"user_id": users[j % len(users)]})
                feeds = serve_load.drive_once(
                    url, users, spec.serve_rate, spec.serve_duration_s, process.pid, headers
                )
            finally:
                process.terminate()
                process.wait(timeout=30)
            rows.append({"store": name, **feeds})
    finally:
        single.kill()
        cluster.stop()
    return rows


def _events(prefix: str, n: int, at: datetime) -> list[Event]:
    return [
        Event(
            event_id=f"{prefix}-{j}",
            timestamp=at + timedelta(microseconds=j),
            user_id=f"u{j % 5000}",
            item_id=f"i{j % 2000}",
            event_type="watch",
            watch_seconds=60.0,
        )
        for j in range(n)
    ]


def _stream_part(spec: ScaleSpec, root: Path, say: Progress) -> dict[str, Any]:
    """Producers append to a durable stream while ``feedforge ingest`` consumers drain it."""
    from feedforge.config import EventsConfig
    from feedforge.events.stream import RedisEventStream

    (root / "stream-redis").mkdir()
    server = LocalRedis(root / "stream-redis", durable=True)
    server.start()
    events_config = EventsConfig(stream="redis", stream_url=server.url, read_count=50)
    config = root / "stream.yaml"
    config.write_text(yaml.safe_dump({"events": events_config.model_dump(mode="json")}))
    workdir = Workdir.at(root / "stream")
    now = datetime.now(UTC)
    # Events built before the clock starts: the API's validation is not what is measured.
    say("stream: preparing events")
    pool = [_events(f"p{k}", spec.stream_batch, now) for k in range(200)]
    acknowledged = [0] * spec.stream_producers
    stop = threading.Event()

    def produce(worker: int) -> None:
        stream = RedisEventStream(events_config)
        sent = 0
        while not stop.is_set():
            batch = pool[sent % len(pool)]
            tag = f"w{worker}-{sent}"
            stream.publish(
                [e.model_copy(update={"event_id": f"{tag}-{j}"}) for j, e in enumerate(batch)]
            )
            acknowledged[worker] += len(batch)
            sent += 1
        stream.close()

    consumers = [
        subprocess.Popen(
            _cli(
                "ingest", "--workdir", str(workdir.root), "--config", str(config), "--name", f"c{j}"
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for j in range(spec.stream_consumers)
    ]
    try:
        say(f"stream: {spec.stream_producers} producers for {spec.stream_seconds} s")
        threads = [
            threading.Thread(target=produce, args=(w,)) for w in range(spec.stream_producers)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(spec.stream_seconds)
        stop.set()
        for thread in threads:
            thread.join()
        produced_s = time.perf_counter() - started
        total = sum(acknowledged)
        probe = RedisEventStream(events_config)
        deadline = time.monotonic() + 600
        while probe.lag() > 0:
            if time.monotonic() > deadline:
                raise FeedforgeError("the consumers did not drain the stream in 600 s")
            time.sleep(0.1)
        drained_s = time.perf_counter() - started
        probe.close()
    finally:
        for consumer in consumers:
            consumer.terminate()
        for consumer in consumers:
            consumer.wait(timeout=60)
        server.kill()
    stored = EventLog(workdir.events_dir).count()
    return {
        "producers": spec.stream_producers,
        "batch": spec.stream_batch,
        "consumers": spec.stream_consumers,
        "acknowledged": total,
        "stored": stored,
        "append_seconds": round(produced_s, 1),
        "append_events_per_s": round(total / produced_s),
        "end_to_end_seconds": round(drained_s, 1),
        "end_to_end_events_per_s": round(total / drained_s),
    }


def run_scale(
    base: Settings, spec: ScaleSpec, out_dir: Path | None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the benchmark (see the module docs); write ``scale.json`` / ``.md``."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    report: dict[str, Any] = {"spec": asdict(spec)}
    with tempfile.TemporaryDirectory(prefix="feedforge-bench-scale-") as tmp:
        root = Path(tmp)
        workdir: Path | None = None
        if "build" in spec.parts or "train" in spec.parts:
            report["build"], workdir = _build_part(spec, root, say)
        if "train" in spec.parts and workdir is not None:
            report["train"] = _train_part(spec, workdir, root, say)
        if "serve" in spec.parts:
            report["serve"] = _serve_part(spec, base, root, say)
        if "stream" in spec.parts:
            report["stream"] = _stream_part(spec, root, say)
    report["targets"] = _targets(report)
    report.update(run_info(started))
    if out_dir is not None:
        write_report(out_dir, "scale", report, render_markdown(report))
    return report


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    if "stream" in report:
        rate = report["stream"]["end_to_end_events_per_s"]
        targets.append(
            {
                "target": f"stream ingestion >= {STREAM_TARGET:,} durable events/s",
                "measured": rate,
                "met": rate >= STREAM_TARGET
                and report["stream"]["stored"] == report["stream"]["acknowledged"],
            }
        )
    if "build" in report:
        parity = all(row.get("parity") for row in report["build"])
        targets.append(
            {"target": "Spark build = polars build (row counts)", "measured": parity, "met": parity}
        )
    return targets


def render_markdown(report: dict[str, Any]) -> str:
    """The tables of :func:`run_scale`'s report."""
    lines = [
        "# Scale-out benchmark",
        "",
        f"Command: `{report['command']}` ({report['machine']['cpus']} CPUs, "
        f"{report['machine']['platform']}; {report['total_seconds']} s in all).",
        "",
    ]
    if "build" in report:
        lines += [
            "## Dataset build: polars vs Spark",
            "",
            "Each build is `feedforge build` in a process of its own (Spark: the driver and its "
            "JVM); peak RSS is the sum over the process tree, sampled every 0.2 s. The same "
            "row counts: every file of the two datasets has as many rows (the parity test "
            "compares them row for row on smaller logs).",
            "",
            "| events | engine | seconds | events/s | peak RSS (MB) | same row counts |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["build"]:
            lines.append(
                f"| {row['events']:,} | {row['engine']} | {row['seconds']} | "
                f"{row['events_per_s']:,} | {row['peak_rss_mb']:,} | {row.get('parity')} |"
            )
        lines.append("")
    if "train" in report:
        lines += [
            "## Training: PyTorch DDP processes",
            "",
            "`feedforge train --nproc N` on the first build's dataset (two-tower retrieval, "
            "DCN ranker, both for the same epochs); gloo on the CPU, each process with "
            "cores / N torch threads. Fit seconds are each model's own, from its manifest.",
            "",
            "| processes | whole train (s) | two-tower fit (s) | two-tower pairs/s | DCN fit (s) "
            "| DCN epochs | peak RSS (MB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in report["train"]:
            lines.append(
                f"| {row['nproc']} | {row['train_seconds']} | {row['two_tower_fit_seconds']} | "
                f"{row['two_tower_pairs_per_s']:,} | {row['dcn_fit_seconds']} | "
                f"{row['dcn_epochs']} | {row['peak_rss_mb']:,} |"
            )
        lines.append("")
    if "serve" in report:
        spec = report["spec"]
        lines += [
            "## Serving: single Redis vs Redis Cluster (3 masters + 3 replicas), same rate",
            "",
            f"One simulated world ({spec['serve_items']:,} items, {spec['serve_users']:,} "
            "users, 7 days) published to both stores (servers of the benchmark's own on this "
            "host), `feedforge serve --workers 2`, open-loop Poisson arrivals for "
            f"{spec['serve_duration_s']:g} s each; latency from each request's scheduled time.",
            "",
            "| store | rate/s | requests | p50 ms | p99 ms | errors | degraded |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in report["serve"]:
            lines.append(
                f"| {row['store']} | {row.get('offered_rate')} | {row.get('requests')} | "
                f"{row.get('p50_ms', 0):.1f} | {row.get('p99_ms', 0):.1f} | {row.get('errors')} | "
                f"{row.get('degraded')} |"
            )
        lines.append("")
    if "stream" in report:
        s = report["stream"]
        lines += [
            "## Event stream: Redis Streams (appendfsync always) -> feedforge ingest -> Parquet",
            "",
            "| producers x batch | consumers | acknowledged | stored in the log "
            "| append events/s | end-to-end events/s |",
            "|---|---|---|---|---|---|",
            f"| {s['producers']} x {s['batch']} | {s['consumers']} | {s['acknowledged']:,} | "
            f"{s['stored']:,} | {s['append_events_per_s']:,} | {s['end_to_end_events_per_s']:,} |",
            "",
        ]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target in report["targets"]:
        lines.append(f"| {target['target']} | {target['measured']} | {target['met']} |")
    return "\n".join(lines) + "\n"
