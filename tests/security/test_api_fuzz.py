"""OpenAPI fuzzing with schemathesis: every operation the running API publishes, no 5xx.

The whole stack runs as ``tickflow up --roles engine,worker,projector,api`` in a subprocess on the real broker
and embedded ClickHouse, so commands the fuzzer sends really go through Kafka and reads really hit chDB. The
operations come from the live ``/openapi.json``, so routers added later are fuzzed without editing this
file. Streaming operations (paths ending in ``/live``: Server-Sent Events that wait for a run to exist) are
left out: a generated id would hold the connection open until the client times out.

``TICKFLOW_FUZZ_EXAMPLES`` sets the examples per operation (default 25, schema-valid and schema-violating
requests mixed; the whole test stays well under a
minute with the default).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.generation.modes import GenerationMode

from tests.conftest import free_port
from tests.integration.harness import settings_for, spawn_roles

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("TICKFLOW_FUZZ_EXAMPLES", "25"))
STREAMING = re.compile(r"/(live|tokens)$")


@pytest.fixture
def api_url(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> Iterator[str]:
    s = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    log = tmp_path / "node.log"
    proc = spawn_roles(s, "engine,worker,projector,api", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{s.api_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the API did not come up (exit {proc.poll()}); its log:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        with httpx.Client(base_url=s.api_url, timeout=30) as h:  # one real run, so reads have rows to find
            assert h.post("/runs", json={"workflow": "math", "input": 1, "run_id": "fuzz-seed"}).status_code == 202
        yield s.api_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_no_operation_answers_a_server_error(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail(f"the API publishes an OpenAPI document schemathesis cannot read: {result.err()}")
        operations.append(result.ok())
    fuzzed = [op for op in operations if not STREAMING.search(op.path)]
    assert len(fuzzed) >= 10, [op.label for op in operations]  # the core routes alone are 12
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = {op.label: Counter() for op in fuzzed}
    with httpx.Client(timeout=5) as plain:
        for op in fuzzed:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)))
            def fuzz(case: schemathesis.Case[Any]) -> None:
                response = case.call(base_url=api_url, timeout=30)
                statuses[case.operation.label][response.status_code] += 1
                case.validate_response(response, checks=[not_a_server_error])

            try:
                fuzz()
            except Exception as exc:  # collect every operation's failure, then report them together
                failures.append(f"{op.label}: {exc}")
        assert plain.get(f"{api_url}/healthz").status_code == 200  # the fuzzing did not take the API down
    print({label: dict(seen) for label, seen in statuses.items()})  # shown with -s: what each route answered
    assert not failures, "\n\n".join(failures)
    silent = [label for label, seen in statuses.items() if not seen]
    assert not silent, f"operations that were never called: {silent}"
    # Most generated requests are refused (4xx); some must get through, or the fuzzer only tests validation.
    assert sum(n for seen in statuses.values() for code, n in seen.items() if code < 300) > len(fuzzed), statuses
