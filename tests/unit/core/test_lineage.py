"""Derived run ids are reserved for the start their parent sends (``tickflow.core.lineage``).

Before, anyone could start ``ops.t42`` or ``r1:approve`` first: the stack's (or parent's) own start was then an
idempotent no-op, and the run it waited for was someone else's, for good."""

from __future__ import annotations

from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from tickflow.api.app import create_api
from tickflow.core.interpreter import child_run_id
from tickflow.core.lineage import lineage_problem
from tickflow.core.stacks import tick_run_id
from tickflow.events import Envelope, ForkRun, StartRun
from tickflow.events.topics import TopicNames
from tickflow.projections.store import MemoryStore
from tickflow.runtime.refusals import unusable_id

_ids = st.from_regex(r"[A-Za-z0-9_\-]{1,20}", fullmatch=True)
_paths = st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}|\[[0-9]\]){0,3}", fullmatch=True)


@given(_ids, st.integers(1, 10**6))
def test_a_tick_id_is_taken_only_by_its_stacks_start(stack_id: str, tick: int) -> None:
    run_id = tick_run_id(stack_id, tick)
    assert lineage_problem(run_id, f"stack:{stack_id}", f"tick/{tick}") is None
    assert lineage_problem(run_id, None, None) is not None  # a top-level start may not take it
    assert lineage_problem(run_id, f"stack:{stack_id}", f"tick/{tick + 1}") is not None


@given(_ids, _paths)
def test_a_child_id_is_taken_only_by_its_parents_start(parent: str, path: str) -> None:
    run_id = child_run_id(parent, path)
    assert lineage_problem(run_id, parent, path) is None
    assert lineage_problem(run_id, None, None) is not None
    assert lineage_problem(f"{parent}-other", parent, path) is not None
    assert lineage_problem(run_id, parent, None) is not None


def test_plain_ids_stay_free() -> None:
    for run_id in ("order-17", "a.b.c", "report.t", "t42", "nightly.tx1"):
        assert lineage_problem(run_id, None, None) is None, run_id


class _Producer:
    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        return None


def test_the_api_refuses_a_reserved_id_with_what_to_do() -> None:
    app = create_api(store=MemoryStore(), producer=_Producer(), topics=TopicNames("t"), workflows={"w"})
    with TestClient(app) as http:
        answer = http.post("/runs", json={"workflow": "w", "run_id": "ops.t42"})
        assert answer.status_code == 422 and "reserved" in answer.text and "stack ticks" in answer.text
        assert http.post("/runs", json={"workflow": "w", "run_id": "r1:approve"}).status_code == 422
        assert http.post("/runs", json={"workflow": "w", "run_id": "r1-approve"}).status_code == 202


def test_the_engine_refuses_a_reserved_id_produced_straight_to_kafka() -> None:
    """The same rule where a run is created, whoever sent the start: the engine refuses its record to the dead-letter
    topic with this reason (``Engine._handle``)."""

    def start(run_id: str, parent: str | None = None, path: str | None = None) -> str | None:
        payload = StartRun(workflow="w", parent_run_id=parent, parent_path=path)
        return unusable_id(Envelope.wrap(payload, id=f"start/{run_id}", key=run_id, occurred_at_ms=1), gone={})

    assert "reserved" in (start("ops.t42") or "")
    assert start("ops.t42", "stack:ops", "tick/42") is None
    assert "is 'r1:a'" in (start("r1:b", "r1", "a") or "")
    payload = ForkRun.model_construct(source_run_id="r1", at_seq=1, history=[])
    fork = Envelope.wrap(payload, id="f", key="x:y", occurred_at_ms=1)
    assert "reserved" in (unusable_id(fork, gone={}) or "")
