"""The demo's pure mappers cope with every input a stack can have (one created from the dashboard has none)."""

from __future__ import annotations

from tickflow.demo.workflows import brief_builder, has_work


def test_a_stack_without_input_still_briefs_its_builder() -> None:
    for stack_input in (None, {}, {"goal": "ship it"}):
        scope = {"input": {"stack_id": "s", "tick": 3, "input": stack_input}, "value": {"answer": {"work": "fix"}}}
        message = brief_builder(scope)["message"]
        assert message.startswith("Tick 3. Goal: ") and '"work": "fix"' in message
        assert has_work(scope)
    with_goal = {"input": {"tick": 1, "input": {"goal": "ship it"}}, "value": None}
    assert "Goal: ship it." in brief_builder(with_goal)["message"]
