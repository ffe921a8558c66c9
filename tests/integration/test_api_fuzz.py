"""The OpenAPI schema fuzzed with schemathesis against a running ``feedforge serve``: no
request, however malformed, gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from feedforge.workdir import Workdir

from .conftest import ServerProcess

pytestmark = pytest.mark.integration

EXAMPLES = 60
"""Generated requests per operation (seeded: the same ones every run)."""


@pytest.fixture(scope="module")
def server(published_workdir: Workdir, small_config: Path) -> Iterator[ServerProcess]:
    # The shared published work directory: the fuzzer may post events, but only for the
    # random users it makes up, which no other test reads.
    process = ServerProcess(published_workdir, small_config).start()
    yield process
    process.stop()


def operations(server: ServerProcess) -> Iterator[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    for result in schema.get_all_operations():
        yield result.ok()


def fuzz(operation: schemathesis.APIOperation, base: str) -> int:
    """Send :data:`EXAMPLES` generated requests to one operation; returns how many went."""
    sent = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=base, timeout=30)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} {case.query} -> "
            f"{response.status_code}: {response.text[:500]}"
        )

    check()
    return sent


def test_no_input_gets_a_server_error(server: ServerProcess) -> None:
    calls = {f"{op.method.upper()} {op.path}": fuzz(op, server.base) for op in operations(server)}
    assert {"GET /recommend", "POST /events", "GET /metrics"} <= set(calls)
    assert calls["GET /recommend"] >= EXAMPLES // 2 and calls["POST /events"] >= EXAMPLES // 2
