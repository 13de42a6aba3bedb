"""The demo: the seed ADR's agent stacks (``workflows``) and the command that runs them with a report (``runner``).

``tickflow up`` hosts ``tickflow.demo:registry`` when no ``--app`` is given.
"""

from tickflow.demo.workflows import AGENTS, GOALS, OFFLINE_LABEL, Plan, Review, TestRun, registry, write_demo_llm_config

__all__ = ["AGENTS", "GOALS", "OFFLINE_LABEL", "Plan", "Review", "TestRun", "registry", "write_demo_llm_config"]
