"""Agents: durable LLM ↔ tool loops built from ordinary steps, and the memory they read.

``Agent`` compiles into steps (one per LLM call, one per tool call), so a crash resumes without repeating a
finished call; ``Memory`` chooses what of an agent's thread the model sees. Providers live in ``tickflow.llm``.
"""

from tickflow.agents.agent import (
    MAX_TOOL_CONTENT,
    Agent,
    AgentMaxTurns,
    LlmCallFailed,
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

__all__ = [
    "MAX_TOOL_CONTENT",
    "Agent",
    "AgentMaxTurns",
    "LlmCallFailed",
    "Memory",
    "Tool",
    "ToolError",
    "attempt_fields",
    "finished",
    "has_tool_calls",
    "memory_prompt",
    "stack_id_of",
    "start_message",
    "turn_input",
]
