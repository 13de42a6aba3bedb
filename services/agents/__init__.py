"""Agents: durable LLM ↔ tool loops built from ordinary steps, and the memory they read.

``Agent`` compiles into steps (one per LLM call, one per tool call), so a crash resumes without repeating a
finished call, and ``paid_once`` keeps a paid LLM answer across a crash of the step that asked for it; ``Memory``
chooses what of an agent's thread the model sees. Providers live in ``tickflow.llm``.
"""

from tickflow.agents.agent import (
    MAX_TOOL_CONTENT,
    Agent,
    AgentMaxTurns,
    LlmCallFailed,
    LlmCallRefused,
    Memory,
    Tool,
    ToolError,
    attempt_fields,
    finished,
    has_tool_calls,
    memory_prompt,
    stack_id_of,
    start_message,
    turn_input,
)
from tickflow.agents.memory import MemoryReadFailed
from tickflow.agents.paid import paid_once

__all__ = [
    "MAX_TOOL_CONTENT",
    "Agent",
    "AgentMaxTurns",
    "LlmCallFailed",
    "LlmCallRefused",
    "Memory",
    "MemoryReadFailed",
    "Tool",
    "ToolError",
    "attempt_fields",
    "finished",
    "has_tool_calls",
    "memory_prompt",
    "paid_once",
    "stack_id_of",
    "start_message",
    "turn_input",
]
