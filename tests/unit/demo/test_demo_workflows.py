"""The demo's pure mappers cope with every input a stack can have (one created from the dashboard has none)."""

from __future__ import annotations

from pathlib import Path

from tickflow.demo.workflows import brief_builder, has_work


def test_a_stack_without_input_still_briefs_its_builder() -> None:
    for stack_input in (None, {}, {"goal": "ship it"}):
        scope = {"input": {"stack_id": "s", "tick": 3, "input": stack_input}, "value": {"answer": {"work": "fix"}}}
        message = brief_builder(scope)["message"]
        assert message.startswith("Tick 3. Goal: ") and '"work": "fix"' in message
        assert has_work(scope)
    with_goal = {"input": {"tick": 1, "input": {"goal": "ship it"}}, "value": None}
    assert "Goal: ship it." in brief_builder(with_goal)["message"]


def test_the_default_app_brings_the_llm_configuration_its_agents_need(tmp_path: Path) -> None:
    """`tickflow up` serves tickflow.demo:registry: a stack created on the board must find every agent's chain
    (it failed every tick with "no chain named 'planner'" when the app's configuration stayed behind)."""
    from tickflow.agents import Agent
    from tickflow.demo import registry
    from tickflow.llm import LlmConfig
    from tickflow.node import Node
    from tickflow.settings import Settings

    node = Node(Settings(state_dir=tmp_path, prefix="appcfg"), registry)
    assert node.settings.llm_config is not None and node.settings.llm_config.is_relative_to(tmp_path)
    config = LlmConfig.load(node.settings.llm_config)
    for agent in registry.agents.values():
        if not isinstance(agent, Agent):  # a framework's agent (stack_tick_pai's communicator) brings its model
            continue
        chain = agent.chain
        assert isinstance(chain, str) and chain in config.chains, chain
    own = tmp_path / "mine.json"
    assert Node(Settings(state_dir=tmp_path, llm_config=own), registry).settings.llm_config == own  # yours wins
