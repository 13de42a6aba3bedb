"""What every framework integration shares: one agent run's journaled calls inside one tickflow step.

A framework agent runs inside a step; each of its model requests and tool calls goes through the step's journal
(``tickflow.runtime.journal``): ``StepCalls.once`` hands back what a previous run of the step journaled for the
call, or makes the call and journals its result before the agent goes on. A model request is checked first against
what the run's budget leaves the step, and what it cost travels in its checkpoint (``LlmAttemptFields``), which the
engine logs once as ``LlmCallAttempted``; a request that failed is reported with the step's result instead.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# What a step reserves, and what a request is assumed to produce without ``max_tokens``: as for native agents; its
# input is estimated as the engine's own reservation does.
from tickflow.agents.agent import DEFAULT_RESERVE_TOKENS
from tickflow.core.interpreter import CHARS_PER_TOKEN
from tickflow.events.agents import HandoffFields
from tickflow.events.errors import ErrorCode, NonRetryableError
from tickflow.events.schemas import ErrorInfo, LlmAttemptFields, LlmOutcome
from tickflow.llm import scrub
from tickflow.llm.config import LlmConfig, LlmConfigError, ModelPrice
from tickflow.settings import Settings
from tickflow.workflow import StepContext, current_step

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_RESERVE_TOKENS",
    "BudgetExceeded",
    "JournalError",
    "StepCalls",
    "StepCallsByStep",
    "outcome_of",
    "priced",
    "running_step",
]



class BudgetExceeded(NonRetryableError):
    """The next model request could pass the run's LLM budget: it was not sent (a stack pauses on it)."""

    code = ErrorCode.BUDGET_EXCEEDED


class JournalError(NonRetryableError):
    """A result cannot be journaled (not JSON-serializable): every re-run would fail the same way."""


def running_step() -> StepContext | None:
    """The step running now, if it has a journal (inside a worker); None elsewhere (a test, a notebook)."""
    try:
        ctx = current_step()
    except LookupError:
        return None
    return ctx if ctx.journal is not None else None


@dataclass
class StepCalls:
    """One run of one step's calls so far: positions by name, and what its own model requests cost."""

    ctx: StepContext
    agent: str
    positions: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0

    def position(self, name: str) -> str:
        """``name@n``: the n-th call of that name in this run of the step (calls of one name are sequential)."""
        n = self.positions[name]
        self.positions[name] += 1
        return f"{name}@{n}"

    async def once(self, call: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """The JSON result a previous run of the step journaled for ``call``, or ``make()``'s, journaled now."""
        journal = self.ctx.journal
        assert journal is not None
        if (saved := journal.recall(call)) is not None:
            return saved
        result = await make()
        await journal.record(call, result, ())
        return result

    async def model_request(self, call: str, make: Callable[[], Awaitable[Any]], *, input_chars: int,
                            max_tokens: int | None, attempt: Callable[[Any], LlmAttemptFields], model: str) -> Any:
        """A model request, once: the journaled answer, or the request checked against the budget, made, costed
        (``attempt`` turns the JSON answer into its provider, model and usage; ``priced`` adds the cost) and
        journaled with its cost."""
        journal = self.ctx.journal
        assert journal is not None
        if (saved := journal.recall(call)) is not None:
            return saved
        self.check_budget(input_chars, max_tokens)
        self.requests += 1
        started_ms, started = int(time.time() * 1000), time.perf_counter()
        try:
            answer = await make()
        except Exception as exc:
            self.ctx.report.add_llm_attempt(LlmAttemptFields(
                call=self.requests, agent=self.agent, provider="unknown", model=model[:1_000],
                latency_ms=(time.perf_counter() - started) * 1000, outcome=outcome_of(exc), started_at_ms=started_ms,
                # A provider's error may echo the key it was given: kept scrubbed, as the router's are.
                error=ErrorInfo(type=type(exc).__name__, message=scrub(str(exc), ("OPENAI_API_KEY",))
                                or type(exc).__name__),
            ))
            raise
        cost = priced(attempt(answer), self.ctx.settings).model_copy(update={
            "call": self.requests, "agent": self.agent, "started_at_ms": started_ms,
            "latency_ms": (time.perf_counter() - started) * 1000})
        self.tokens += cost.tokens_in + cost.tokens_out
        self.cost_usd += cost.cost_usd
        if not await journal.record(call, answer, [cost]):
            self.ctx.report.add_llm_attempt(cost)  # not journaled: the step's result logs it
        return answer

    async def handoff(self, call: str, from_agent: str, to_agent: str) -> None:
        """A handoff between the step's agents, once: journaled (a re-run replays it) and logged by the engine as
        ``AgentHandoff`` when its record arrives. A handoff that could not be journaled (the broker away) is not
        logged: it still happens, and the step's output says which agent answered."""
        journal = self.ctx.journal
        assert journal is not None
        if journal.recall(call) is not None:
            return
        await journal.record(call, {"from": from_agent, "to": to_agent}, (),
                             handoff=HandoffFields(from_agent=from_agent[:1_000], to_agent=to_agent[:1_000]))

    def check_budget(self, input_chars: int, max_tokens: int | None) -> None:
        """Refuse a request that could pass what the run's budget leaves this step."""
        ctx = self.ctx
        if ctx.budget_cost_usd is not None and self.cost_usd >= ctx.budget_cost_usd:
            raise BudgetExceeded(
                f"agent {self.agent!r}: the run's cost budget is spent (${self.cost_usd:.6f} of the "
                f"${ctx.budget_cost_usd:.6f} left to this step): model request {self.requests + 1} was not sent")
        if ctx.budget_tokens is None:
            return
        could_take = (max_tokens or DEFAULT_RESERVE_TOKENS) + input_chars // CHARS_PER_TOKEN
        if self.tokens + could_take > ctx.budget_tokens:
            raise BudgetExceeded(
                f"agent {self.agent!r}: model request {self.requests + 1} was not sent: it could take up to "
                f"{could_take} tokens, and {self.tokens} used by this step + {could_take} > the "
                f"{ctx.budget_tokens} tokens the run's budget leaves it")


class StepCallsByStep:
    """The ``StepCalls`` of each step run an integration serves, made on first use (a retry starts afresh)."""

    #: Far more than a worker runs at once.
    KEPT = 4_096

    def __init__(self) -> None:
        self._runs: OrderedDict[int, StepCalls] = OrderedDict()

    def current(self, agent: str) -> StepCalls | None:
        ctx = running_step()
        if ctx is None:
            return None
        calls = self._runs.get(id(ctx))  # the entry holds ctx, so its id is not reused while it is kept
        if calls is None:
            calls = self._runs[id(ctx)] = StepCalls(ctx=ctx, agent=agent)
            while len(self._runs) > self.KEPT:
                self._runs.popitem(last=False)
        return calls


def priced(attempt: LlmAttemptFields, settings: Settings | None) -> LlmAttemptFields:
    """``attempt`` with its cost: by the price the LLM configuration gives its model (``[prices."<id>"]`` of the
    model with that id or provider-side name, as native agents' calls are priced), else by ``genai-prices`` when it
    knows the model (the provider's name, when the framework reports one, narrows the match), else unknown
    (``price_known`` false: unknown, not free)."""
    price = _configured_prices(str(settings.llm_config) if settings and settings.llm_config else "").get(attempt.model)
    if price is not None:
        return attempt.model_copy(update={
            "cost_usd": price.cost(attempt.tokens_in, attempt.tokens_out), "price_known": True,
            "price_illustrative": price.illustrative})
    from genai_prices import Usage, calc_price  # the frameworks' own dependency (the extras name it)

    provider = attempt.provider if attempt.provider not in ("unknown", "openai-agents") else None
    try:
        cost = calc_price(Usage(input_tokens=attempt.tokens_in, output_tokens=attempt.tokens_out),
                          model_ref=attempt.model, provider_id=provider)
    except (LookupError, ValueError):
        return attempt.model_copy(update={"cost_usd": 0.0, "price_known": False})
    return attempt.model_copy(update={"cost_usd": max(float(cost.total_price), 0.0), "price_known": True})


@functools.lru_cache(maxsize=8)
def _configured_prices(path: str) -> dict[str, ModelPrice]:
    """Prices by model id, and by the name the provider knows a model by (what a framework's answer reports)."""
    if not path:
        return {}
    try:
        config = LlmConfig.load(path)
    except LlmConfigError:  # the native agents report it; a framework's call is then priced as if unconfigured
        return {}
    by_remote = {m.remote_name: config.prices[m.id] for m in config.models if m.id in config.prices}
    return by_remote | config.prices


def outcome_of(exc: BaseException) -> LlmOutcome:
    """A failed request's outcome, from the HTTP status its client error carries (if any)."""
    status = getattr(exc, "status_code", None)
    if status == 429:
        return "rate_limited"
    if isinstance(status, int) and status >= 500:
        return "server_error"
    if isinstance(status, int) and status >= 400:
        return "client_error"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "connection_error"
