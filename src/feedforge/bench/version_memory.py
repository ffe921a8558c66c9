"""``feedforge bench version-memory``: what one more loaded version costs a service worker.

A running experiment whose variant pins a published version makes every worker keep that
version in memory beside the current one (:mod:`feedforge.serving.experiments`). This
measures the cost: a simulated catalog (1M items by default, as ``feedforge bench serve``)
is published to Redis; then a fresh interpreter imports the service, loads the version
(:func:`~feedforge.serving.version.load_version`: item matrix, feature snapshot, ANN index,
ranker) and loads it again as a second, independent object, as a pinned version is, reading
its resident set size (``VmRSS``) after each step. Like a service worker, it fixes glibc's
mmap threshold first (:mod:`feedforge.serving.allocator`), so freed load-time buffers are
returned to the system rather than counted. The namespace is dropped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from feedforge.bench.report import run_info, write_report
from feedforge.bench.service import Progress, bench_settings, drop_namespace, set_up_world
from feedforge.config import Settings
from feedforge.workdir import Workdir

_PROBE = """
import gc, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from feedforge.config import load_settings
from feedforge.serving.allocator import fix_mmap_threshold
from feedforge.serving.version import load_version
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir
settings = load_settings(sys.argv[1])
workdir = Workdir.at(sys.argv[2])
fix_mmap_threshold(settings.serving.malloc_mmap_threshold_bytes)  # as each service worker does
out = {"imports_mib": rss()}
with open_store(settings.store, workdir.store_path) as store:
    version = store.current_version()
    meta = store.get_meta(version)
    kept = []
    for n in range(2):
        kept.append(load_version(store, version, meta, settings.serving, workdir.bundles_dir))
        gc.collect()
        out[f"after_load_{n + 1}_mib"] = rss()
    out["items"] = int(kept[0].item_matrix.shape[0])
    out["dim"] = int(kept[0].item_matrix.shape[1])
    out["item_matrix_mib"] = kept[0].item_matrix.nbytes / 2**20
print(json.dumps(out))
"""


def run_version_memory(
    base: Settings, out_dir: Path, items: int, users: int, days: int, redis_url: str, say: Progress
) -> dict[str, Any]:
    """Set up, measure in a fresh interpreter, write ``version_memory.json`` / ``.md``."""
    started = time.perf_counter()
    namespace = f"bench-mem-{uuid.uuid4().hex[:8]}"
    settings = bench_settings(
        base, items=items, users=users, days=days, redis_url=redis_url, namespace=namespace,
        serving={}, dataset={"validation_days": 1, "test_days": 1},
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ff-bench-mem-") as tmp:
        workdir = Workdir.at(Path(tmp) / "w")
        try:
            setup = set_up_world(workdir, settings, say)
            config = Path(tmp) / "settings.json"
            config.write_text(settings.model_dump_json(), encoding="utf-8")
            say("measuring two loads of the version in a fresh interpreter")
            done = subprocess.run(
                [sys.executable, "-c", _PROBE, str(config), str(workdir.root)],
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            drop_namespace(settings)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    first = probe["after_load_1_mib"] - probe["imports_mib"]
    second = probe["after_load_2_mib"] - probe["after_load_1_mib"]
    report = {
        "items": probe["items"],
        "dim": probe["dim"],
        "setup_seconds": setup,
        "rss_mib": {k: round(v, 1) for k, v in probe.items() if k.endswith("_mib")},
        "first_version_mib": round(first, 1),
        "each_more_version_mib": round(second, 1),
        **run_info(started),
    }
    markdown = "\n".join(
        [
            "# Memory of one more loaded version",
            "",
            f"Command: `{report['command']}`",
            "",
            f"Catalog: {report['items']:,} items, {report['dim']}-dimensional embeddings, "
            "published to Redis (settings: the defaults, HNSW index).",
            "",
            "| resident set of a fresh interpreter | MiB |",
            "|---|---|",
            f"| after importing the service | {probe['imports_mib']:.1f} |",
            f"| after loading the version | {probe['after_load_1_mib']:.1f} |",
            f"| after loading it again (a second, pinned version) | "
            f"{probe['after_load_2_mib']:.1f} |",
            "",
            f"One loaded version costs a worker **{first:.0f} MiB** (with the model "
            "libraries the first load imports); each further version a "
            f"running experiment pins costs **{second:.0f} MiB** more per worker (the item "
            f"matrix alone is {probe['item_matrix_mib']:.0f} MiB).",
            "",
        ]
    )
    write_report(out_dir, "version_memory", report, markdown)
    return report
