"""The demo's stack agent written with Pydantic AI: the communicator of ``stack_tick_pai``
(``tickflow.demo.workflows``), the seed ADR's tick with that one agent written with Pydantic AI
(``tickflow.integrations.pydantic_ai``), run durably beside the native planner, builder and reviewer. The demo
gives that workflow to one stack in ``PAI_EVERY``.

Its model is an offline stand-in, labelled so (``OFFLINE_MODEL``, not a real LLM): a Pydantic AI ``FunctionModel``
that streams the status update from the builder's report over a simulated 20-250 ms, its usage counted by the
framework. Its calls reach the ledger as any framework agent's do: journaled, logged once as ``LlmCallAttempted``,
priced by the demo's LLM configuration (an illustrative price, as for the native offline models).

Pydantic AI is an optional extra (``tickflow[pydantic-ai]``; ``make demo`` installs it): without it, ``AVAILABLE``
is False, ``communicator`` is None and the demo runs only native stacks.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["AVAILABLE", "OFFLINE_MODEL", "PAI_EVERY", "communicator"]

#: The model name the stand-in answers under; the demo's LLM configuration prices it (illustratively).
OFFLINE_MODEL = "offline/pydantic-ai"
#: One demo stack in PAI_EVERY (from index 1) runs ``stack_tick_pai``.
PAI_EVERY = 4
#: The Pydantic AI communicator as a tickflow agent whose step runs in the given pool; None without the extra.
communicator: Callable[[str], Any] | None = None

try:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from tickflow.integrations.pydantic_ai import TickflowAgent, TickflowDurability
except ImportError:  # the extra is not installed: the demo runs native stacks only
    AVAILABLE = False
else:
    AVAILABLE = True

    async def _write_update(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        """Offline stand-in (not a real LLM): a one-paragraph status update from the report in the prompt,
        streamed word by word (a worker streams every request, so the run page shows it arriving)."""
        prompt = next((str(p.content) for m in messages if isinstance(m, ModelRequest) for p in m.parts
                       if isinstance(p, UserPromptPart)), "")
        words = f"[offline stand-in] Status update: {prompt.split(': ', 1)[-1][:200]}".split(" ")
        pause = (0.02 + (zlib.crc32(prompt.encode()) % 230) / 1000) / len(words)
        for i, word in enumerate(words):
            await asyncio.sleep(pause)
            yield word if i == 0 else f" {word}"

    communicator_pai = Agent(
        FunctionModel(stream_function=_write_update, model_name=OFFLINE_MODEL),
        name="communicator_pai",
        instructions="You write the team's one-paragraph status update from the builder's report.",
        capabilities=[TickflowDurability()],
    )

    def _communicator(pool: str) -> TickflowAgent:
        return TickflowAgent(communicator_pai, pool=pool)

    communicator = _communicator
