"""Workflow versions side by side: new runs take the newest, pinned runs keep theirs, functions go by stable name."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.core.test_divergence import Recorder
from tickflow.core.decider import RunState, Start, run
from tickflow.core.divergence import diff_run, still_needed
from tickflow.events import Envelope, StartRun
from tickflow.workflow import Registry, StepContext, Workflow, named


@named("billing.charge")
def charge(x: Any) -> Any:
    return {"charged": x}


@named("billing.charge")
def charge_card(x: Any) -> Any:  # the same function, renamed in Python: its stable name stays
    return {"charged": x}


def refund(x: Any) -> Any:  # no stable name: it is known as tests.unit.core.test_versions.refund
    return x


def refund_payment(x: Any) -> Any:  # ... so renaming it renames it in every spec too
    return x


def v1(step: Any = charge, then: Any = refund) -> Workflow:
    return Workflow("pay").step(step, name="charge").sleep(60, name="wait").step(then, name="refund")


def v2(step: Any = charge) -> Workflow:
    return Workflow("pay", version=2).step(step, name="charge")


def test_versions_live_side_by_side_and_new_runs_take_the_newest() -> None:
    reg = Registry()
    one, two = reg.add(v1()), reg.add(v2())
    assert (one.version, two.version) == (1, 2)
    assert reg.specs["pay"] is two and reg.spec("pay") is two
    assert reg.spec("pay", 1) is one and reg.spec("pay", 2) is two and reg.spec("pay", 3) is None
    assert set(reg.versions["pay"]) == {1, 2}
    # Registration order does not matter: the newest is the highest version.
    other = Registry()
    other.add(v2())
    other.add(v1())
    assert other.spec("pay") == two


def test_version_1_keeps_the_hash_a_spec_had_before_versions() -> None:
    spec = v1().compile()
    assert "version" not in spec.model_dump(mode="json")
    assert spec.content_hash() == Workflow("pay", version=1).step(charge, name="charge").sleep(60, name="wait").step(
        refund, name="refund").compile().content_hash()
    assert v2().compile().content_hash() != Workflow("pay").step(charge, name="charge").compile().content_hash()


def test_a_start_naming_a_version_pins_it_and_an_unknown_version_is_rejected() -> None:
    reg = Registry()
    reg.add(v1())
    reg.add(v2())
    for version, nodes in ((1, 3), (None, 1)):
        cmd = Envelope.wrap(StartRun(workflow="pay", version=version), id="s", key="r", occurred_at_ms=1)
        spec = reg.spec("pay", cmd.payload.version)  # type: ignore[attr-defined]
        assert spec is not None
        d = run(RunState("r"), Start(cmd, spec), 1, reg)
        assert d.state.spec is not None and len(d.state.spec.root.nodes) == nodes  # type: ignore[attr-defined]
    cmd = Envelope.wrap(StartRun(workflow="pay", version=7), id="s", key="r", occurred_at_ms=1)
    d = run(RunState("r"), Start(cmd, reg.spec("pay", 7)), 1, reg)
    assert d.state.status == "rejected"
    assert "unknown version 7 of workflow 'pay'" in d.events[0].payload.reason  # type: ignore[attr-defined]


def test_one_stable_name_cannot_mean_two_functions_across_versions() -> None:
    def other(x: Any) -> Any:
        return x

    reg = Registry()
    reg.add(v1())
    with pytest.raises(ValueError, match=r"'billing\.charge'"):
        reg.add(v2(named("billing.charge")(other)))


def test_a_pinned_run_keeps_its_version_when_a_new_one_is_deployed() -> None:
    old = Registry()
    old.add(v1())
    waiting = Recorder(old, "p1").start({"n": 1}, workflow="pay")
    waiting.result()  # charged; sleeping before refund
    assert waiting.state.nodes["wait"].status == "active"
    new = Registry()
    new.add(v1())
    new.add(v2())
    report = diff_run("p1", waiting.log, waiting.inputs, new)
    assert report.identical, report.verdict()  # v2 is the newest now, but the run goes on with v1's spec
    waiting.code = new
    waiting.timer()
    assert waiting.state.nodes["refund"].status == "active"  # the engine schedules v1's refund step for it


def test_renaming_a_python_function_keeps_a_pinned_run_when_it_has_a_stable_name() -> None:
    old = Registry()
    old.add(v1())
    waiting = Recorder(old, "p2").start({"n": 1}, workflow="pay")
    renamed_stable = Registry()
    renamed_stable.add(v1(step=charge_card))  # charge renamed charge_card: @named keeps "billing.charge"
    assert diff_run("p2", waiting.log, waiting.inputs, renamed_stable).identical
    renamed = Registry()
    renamed.add(v1(then=refund_payment))  # refund renamed without a stable name: its spec name changed
    missing = still_needed(waiting.state, renamed)
    assert [(m.kind, m.name) for m in missing] == [("step function", f"{__name__}.refund")]
    # A worker of the renamed code runs the pinned run's step by its stable name.
    ctx = StepContext(run_id="p2", workflow="pay", step="charge", attempt=1, idempotency_key="p2/charge")
    assert asyncio.run(renamed_stable.call("billing.charge", 3, ctx)) == {"charged": 3}


def test_an_inline_condition_or_mapper_takes_a_stable_name_too() -> None:
    from tickflow.workflow import Flow

    reg = Registry()
    spec = reg.add(
        Workflow("inline")
        .branch((named("inline.big", lambda scope: scope["value"] > 10), Flow().step(refund)))
        .step(charge_card, name="again", input=named("inline.double", lambda scope: scope["input"] * 2))
    )
    branch, again = spec.root.nodes  # type: ignore[attr-defined]
    assert branch.cases[0].when == "inline.big" and again.input == "fn:inline.double"
    assert reg.condition("inline.big") is not None and reg.mapper("inline.double") is not None
