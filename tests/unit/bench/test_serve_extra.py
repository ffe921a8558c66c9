"""``feedforge bench serve`` needs the ``bench`` extra, and says so in one line without it."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from feedforge.bench.serve_load import require_client_libraries
from feedforge.cli import app
from feedforge.errors import FeedforgeError


@pytest.mark.parametrize("missing", ["aiohttp", "httpx"])
def test_a_missing_client_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail
    with pytest.raises(FeedforgeError, match=rf"need {missing}: pip install 'feedforge\[bench\]'"):
        require_client_libraries()


def test_bench_serve_without_aiohttp_fails_in_one_line_before_any_setup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    result = CliRunner().invoke(app, ["bench", "serve", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: the load benchmarks need aiohttp: pip install 'feedforge[bench]'"]
