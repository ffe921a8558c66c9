"""``/metrics`` of ``feedforge serve --workers 2``: one count for the whole service.

Each worker answers a scrape from the counts of every worker (Prometheus' multiprocess mode),
so consecutive scrapes never go down, whichever worker answers them.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedforge.workdir import Workdir

from .conftest import EventFactory, ServerProcess

pytestmark = pytest.mark.integration

REQUESTS = 24


def _sample(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split(" ")[0] == f"{name}{{{labels}}}":
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("given_dir", [True, False], ids=["PROMETHEUS_MULTIPROC_DIR", "own-dir"])
def test_counters_add_up_over_every_worker(
    published_workdir: Workdir, small_config: Path, tmp_path: Path, given_dir: bool
) -> None:
    """With the directory given (emptied at start), or one ``feedforge serve`` makes."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left over by an earlier run")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)} if given_dir else {}
    server = ServerProcess(published_workdir, small_config, env=env)
    server.command += ["--workers", "2"]
    server.start(timeout_s=120)
    try:
        for n in range(REQUESTS):
            # A new connection per request, so the kernel spreads them over both workers.
            response = httpx.get(
                f"{server.base}/recommend", params={"user_id": f"u{n:06d}", "k": 3}, timeout=30
            )
            assert response.status_code == 200, response.text
        recommend = 'endpoint="/recommend",status="200"'
        scraped = 'endpoint="/metrics",status="200"'
        seen: list[float] = []
        scrapes: list[float] = []
        for _ in range(8):
            text = httpx.get(f"{server.base}/metrics", timeout=30).text
            seen.append(_sample(text, "feedforge_requests_total", recommend))
            scrapes.append(_sample(text, "feedforge_requests_total", scraped))
        assert seen == [REQUESTS] * 8, seen
        assert scrapes == sorted(scrapes), scrapes  # monotonic, whichever worker answers
        feeds = _sample(text, "feedforge_feeds_total", 'strategy="popular"') + _sample(
            text, "feedforge_feeds_total", 'strategy="personalized"'
        )
        assert feeds == REQUESTS
        if given_dir:
            assert not stale.exists(), "the multiprocess directory was not cleaned at start"
            # Both workers wrote their counts (one file each).
            assert len(list(metrics_dir.glob("counter_*.db"))) == 2
    finally:
        output = server.stop()
    assert "Traceback" not in output, output
    # Each worker fixed its allocator's mmap threshold (feedforge.serving.allocator).
    assert output.count("glibc mmap threshold fixed at 131072 bytes") == 2, output


LOAD_S = 8.0
LOAD_THREADS = 4
SCRAPE_EVERY_S = 0.1
MIN_SCRAPES = 50
PROCESS_GAUGES = (
    "feedforge_worker_cpu_seconds",
    "feedforge_worker_resident_memory_bytes",
    "feedforge_worker_open_fds",
)

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _counter_samples(text: str) -> dict[SampleKey, float]:
    """Every sample of a counter or histogram family (``_total``, ``_bucket``, ``_count``,
    ``_sum``), keyed by sample name and labels."""
    out: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        # (a histogram's _bucket, _count and _sum are all cumulative: none may go down)
    return out


def _process_gauges(text: str) -> dict[str, dict[str, float]]:
    """Per process gauge: ``pid`` label -> value."""
    out: dict[str, dict[str, float]] = {name: {} for name in PROCESS_GAUGES}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in out:
                out[sample.name][sample.labels.get("pid", "")] = sample.value
    return out


def _new_connections(server: ServerProcess) -> httpx.Client:
    """A client that opens a new connection for every request (none kept alive), so the
    kernel spreads them over both workers."""
    return httpx.Client(
        base_url=server.base, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    )


def test_counters_never_go_down_between_scrapes_under_load(
    published_workdir: Workdir, small_config: Path, make_event: EventFactory
) -> None:
    """Scrapes under load from several threads (new connections, so both workers answer
    requests and scrapes) see every counter and histogram sample only go up; at the end the
    request count is exact and each worker exports its own process gauges."""
    server = ServerProcess(published_workdir, small_config)
    server.command += ["--workers", "2"]
    server.start(timeout_s=120)
    stop = threading.Event()
    lock = threading.Lock()
    recommended = 0
    failures: list[str] = []

    def load(thread: int) -> None:
        nonlocal recommended
        n = thread
        # Users of this test only for posted events (the work directory is shared).
        user = f"it-metrics-{uuid.uuid4().hex[:8]}-{thread}"
        with _new_connections(server) as http:
            while not stop.is_set():
                try:
                    if n % 10 == 9:
                        events = [
                            make_event(user_id=user, item_id=f"i{1 + (n + j) % 50:06d}")
                            for j in range(5)
                        ]
                        response = http.post("/events", json=events)
                        ok = response.status_code == 200 and response.json()["accepted"] == 5
                    else:
                        params = {"user_id": f"u{1 + n % 200:06d}", "k": 5}
                        response = http.get("/recommend", params=params)
                        ok = response.status_code == 200
                        if ok:
                            with lock:
                                recommended += 1
                    if not ok:
                        with lock:
                            failures.append(
                                f"{response.request.url}: {response.status_code} "
                                f"{response.text[:300]}"
                            )
                except httpx.HTTPError as error:
                    with lock:
                        failures.append(f"{type(error).__name__}: {error}")
                n += LOAD_THREADS

    threads = [
        threading.Thread(target=load, args=(t,), name=f"load-{t}", daemon=True)
        for t in range(LOAD_THREADS)
    ]
    scraper = _new_connections(server)
    try:
        for thread in threads:
            thread.start()
        previous: dict[SampleKey, float] | None = None
        scrapes = 0
        went_down: list[str] = []
        deadline = time.monotonic() + LOAD_S
        while time.monotonic() < deadline or scrapes < MIN_SCRAPES:
            response = scraper.get("/metrics")
            assert response.status_code == 200, response.text
            current = _counter_samples(response.text)
            scrapes += 1
            if previous is not None:
                for key, before in previous.items():
                    after = current.get(key)
                    if after is None or after < before:
                        went_down.append(f"scrape {scrapes}: {key} {before} -> {after}")
            previous = current
            time.sleep(SCRAPE_EVERY_S)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert not went_down, "\n".join(went_down[:20])
        assert not failures, "\n".join(failures[:20])
        assert scrapes >= MIN_SCRAPES
        assert recommended > 0

        # Every request counted once, whichever worker answered it.
        text = scraper.get("/metrics").text
        assert _sample(text, "feedforge_requests_total", 'endpoint="/recommend",status="200"') == (
            recommended
        )

        # Each worker's process gauges (refreshed every 5 s by its monitor thread).
        gauges = _process_gauges(text)
        poll_until = time.monotonic() + 15
        while time.monotonic() < poll_until and not all(
            len(by_pid) == 2 and all(v > 0 for v in by_pid.values()) for by_pid in gauges.values()
        ):
            time.sleep(0.5)
            gauges = _process_gauges(scraper.get("/metrics").text)
        pids = set(gauges["feedforge_worker_cpu_seconds"])
        assert len(pids) == 2 and "" not in pids, gauges
        for name in PROCESS_GAUGES:
            assert set(gauges[name]) == pids, gauges
        for pid in pids:
            assert gauges["feedforge_worker_resident_memory_bytes"][pid] > 10e6, gauges
            assert gauges["feedforge_worker_open_fds"][pid] > 0, gauges
            assert gauges["feedforge_worker_cpu_seconds"][pid] > 0, gauges
    finally:
        stop.set()
        scraper.close()
        output = server.stop()
    assert "Traceback" not in output, output
