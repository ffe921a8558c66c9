"""``/metrics`` of ``feedforge serve --workers 2``: one count for the whole service.

Each worker answers a scrape from the counts of every worker (Prometheus' multiprocess mode),
so consecutive scrapes never go down, whichever worker answers them.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from feedforge.workdir import Workdir

from .conftest import ServerProcess

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
