"""A worker's C allocator gives freed large blocks back (``feedforge.serving.allocator``).

Each case runs in a fresh interpreter: the mmap threshold is process-wide and cannot be
unset. The pattern is a worker's: one large block freed (a version load), then mid-sized
blocks allocated with small long-lived objects between them (request data next to history
and index entries), then the mid-sized ones freed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from feedforge.config import Settings

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)"
)

_PATTERN = textwrap.dedent(
    """
    import sys
    import numpy as np
    from feedforge.serving.allocator import fix_mmap_threshold

    def rss_mib():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 2**20

    threshold = None if sys.argv[1] == "none" else int(sys.argv[1])
    print("fixed", fix_mmap_threshold(threshold))
    big = np.ones(2 * 2**20)  # 16 MiB, mapped, then freed: glibc raises its threshold
    del big
    before = rss_mib()
    blocks, survivors = [], []
    for _ in range(24):
        blocks.append(np.ones(2**18))  # 2 MiB, touched
        survivors.append(bytearray(4096))  # a small object that outlives the block
    del blocks
    print("retained", rss_mib() - before)
    """
)


def _retained_mib(threshold: str) -> tuple[bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PATTERN, threshold],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split("\n")
    fixed = out[0].split()[1] == "True"
    return fixed, float(out[1].split()[1])


def test_a_fixed_threshold_gives_freed_blocks_back() -> None:
    default = Settings().serving.malloc_mmap_threshold_bytes
    assert default == 128 * 1024
    fixed, retained = _retained_mib(str(default))
    assert fixed
    assert retained < 8, f"{retained:.1f} MiB of 48 MiB freed stayed resident"


def test_glibcs_dynamic_threshold_keeps_them() -> None:
    """What the fix is for: without it, the freed 48 MiB stay resident (glibc's heap holes
    between the survivors). If this ever fails, glibc changed and the fix may be moot."""
    fixed, retained = _retained_mib("none")
    assert not fixed
    assert retained > 32, f"only {retained:.1f} MiB stayed resident"
