"""Runs pin their spec, and specs name functions: a code move must not change what recorded runs refer to."""

from __future__ import annotations

import pytest

from tickflow.demo import registry
from tickflow.workflow import Registry, Workflow, named

#: The demo's spec hashes as recorded before the code moved from one demo module to the package ``tickflow.demo``.
#: Changed on purpose since: ``stack_tick``, whose agents' model steps now carry ``llm_reserve_tokens`` (budgets
#: before the call); the others stay as they were, since an unset ``llm_reserve_tokens`` is left out of a spec's
#: JSON. Added since: ``refund`` (the docs' console-producer walk-through) and ``stack_tick_pai`` (the tick whose
#: communicator is a Pydantic AI agent), pinned from their first versions.
DEMO_SPEC_HASHES = {
    "noop10": "12cffe81759d48196f61028e2d41c947",
    "order": "ae4defbffb60c0f067713f08adf0507c",
    "refund": "0ffe752933092ed7a4fb414f7fcd5edb",
    "stack_tick": "93ed7e3b30470086a413848b833454bb",
    "stack_tick_pai": "03eb3d1f99e4ee3a436239bcedb722b9",
}


def test_the_demo_specs_are_unchanged_by_the_move() -> None:
    assert {name: spec.content_hash() for name, spec in registry.specs.items()} == DEMO_SPEC_HASHES


def test_named_pins_a_function_name_wherever_the_code_lives() -> None:
    @named("billing.charge")
    def charge(x: int) -> int:
        return x

    reg = Registry()
    reg.add(Workflow("w").step(charge))
    assert reg.specs["w"].root.nodes[0].fn == "billing.charge"  # type: ignore[attr-defined]
    assert "billing.charge" in reg.functions
    with pytest.raises(ValueError, match="1-200"):
        named("")
