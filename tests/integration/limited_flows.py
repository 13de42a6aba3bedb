"""Agents for tests/integration/runtime/test_llm_limits_cluster.py: one LLM call a run, no tools, no memory, so the test
server's count of requests is the count of LLM calls the pool made."""

from __future__ import annotations

from tickflow.agents import Agent, Memory
from tickflow.workflow import Registry, Workflow

__all__ = ["registry"]

_QUIET = Memory(window=0, recall_k=0, remember=False)

registry = Registry()
#: Chain "capped": a provider limited in requests per minute (the test writes the configuration).
registry.add(Workflow("agent_capped").agent(Agent("capped", chain="capped", memory=_QUIET, llm_max_attempts=1)))
#: Chain "crowded": a provider limited in concurrent requests, whose model answers in 0.2 s.
registry.add(Workflow("agent_crowded").agent(Agent("crowded", chain="crowded", memory=_QUIET, llm_max_attempts=1)))
