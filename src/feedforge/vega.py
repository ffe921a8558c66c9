"""The Vega-Lite runtime the report and the dashboard inline: Vega, Vega-Lite and Vega-Embed
in one script, from ``vl-convert-python`` (so no page loads anything from a CDN).

Bundling takes a few seconds, so the script is cached: in the process, and on disk under
``$XDG_CACHE_HOME/feedforge`` (default ``~/.cache/feedforge``), one file per vl-convert
version. An unwritable cache directory only costs the time.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

GLOBALS_SNIPPET = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"
"""What the bundle runs: it exposes ``vegaEmbed``, ``vega`` and ``vegaLite`` to the page's
other scripts."""


def cache_dir() -> Path:
    """Where the bundled script is cached on disk."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "feedforge"


@functools.cache
def javascript_bundle() -> str:
    """The bundled Vega-Embed + Vega-Lite + Vega script (about 0.9 MB of JavaScript)."""
    from importlib.metadata import version

    import vl_convert

    path = cache_dir() / f"vega-embed-{version('vl-convert-python')}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    script = vl_convert.javascript_bundle(GLOBALS_SNIPPET)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(script, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # no cache: the next process bundles again
    return script
