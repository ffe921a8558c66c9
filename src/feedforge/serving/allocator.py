"""The C allocator of a service worker: a fixed mmap threshold, so freed memory goes back.

glibc's ``malloc`` starts with blocks of 128 KiB and more served by ``mmap`` (returned to the
system on ``free``), but it raises that threshold to the size of every such block freed, up
to 32 MiB, and the threshold above which a heap's free top is given back with it (twice the
mmap threshold). A worker frees large blocks early (loading a version: the item matrix, the
index, the ranker) and again at every publish, so soon every block below 32 MiB comes from a
heap that keeps up to 64 MiB free before trimming, and busy threads get heaps of their own
(up to 8 per core; the thread pool computes feeds and ingests events). Under steady traffic
a worker's resident memory then only grows: +10 MiB a minute per worker in the first
30-minute soak (``docs/benchmarks/README.md``, issue 14 soak), with Python's own allocations
flat (``tracemalloc``). The fixed threshold costs CPU where requests allocate large blocks: about
1 ms per feed at 1M items (a 1 MB faiss visited table per HNSW search; same file, issue 5).

Setting the threshold with ``mallopt`` fixes it (glibc then adjusts neither it nor the trim
threshold): blocks above it are mapped and unmapped, smaller ones come from heaps trimmed at
glibc's default 128 KiB. ``serving.malloc_mmap_threshold_bytes`` sets it; ``null`` leaves
glibc's dynamic default. It is the ``MALLOC_MMAP_THRESHOLD_`` environment variable glibc
reads at start-up, applied from the app's start-up instead, so it holds for ``feedforge
serve`` with one worker (which runs in the process that parsed the command line) and with
several, and for any ASGI server that runs :func:`~feedforge.serving.app.create_app`.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger("feedforge.serving")

M_MMAP_THRESHOLD = -3
"""``mallopt``'s parameter number for the mmap threshold (glibc's ``malloc.h``)."""


def fix_mmap_threshold(threshold_bytes: int | None) -> bool:
    """Fix glibc's mmap threshold of this process at ``threshold_bytes``.

    Args:
        threshold_bytes: The threshold; None changes nothing.

    Returns:
        True when set; False when ``threshold_bytes`` is None or the C library is not glibc
        (musl, macOS: nothing to set, and nothing is changed).
    """
    if threshold_bytes is None or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library the interpreter is linked against
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)) == 1
    if not ok:  # glibc refuses values above its HEAP_MAX (32 MiB on 64-bit systems)
        logger.warning("glibc refused an mmap threshold of %d bytes", threshold_bytes)
    return ok
