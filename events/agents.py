"""Events of agents and agent stacks: LLM call attempts, memory messages, stacks and their ticks.

They live on the same topics as runs. LLM attempts and messages belong to the run whose agent step produced them
(keyed by the run id); a stack is an entity keyed ``stack:<stack_id>``, so its configuration, play/pause state and
ticks are folded by one engine partition like a run. The engine is their only writer. Importing this module
registers the types in ``PAYLOAD_TYPES`` (the codec imports it).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tickflow.events.schemas import (
    PAYLOAD_TYPES,
    Command,
    EpochMs,
    Event,
    Int64,
    Kind,
    LlmAttemptFields,
    LlmOutcome,
    LongText,
    MessageFields,
    Payload,
    Result,
    ShortText,
)
from tickflow.events.spec import Name

__all__ = [
    "AGENT_EVENT_TYPES",
    "STACK_COMMAND_TYPES",
    "STACK_PREFIX",
    "AgentHandoff",
    "CreateStack",
    "DeleteStack",
    "HandoffFields",
    "LlmCallAttempted",
    "LlmCallCheckpoint",
    "LlmOutcome",
    "LlmTokens",
    "MessageAppended",
    "PauseStack",
    "PlayStack",
    "StackCreated",
    "StackDeleted",
    "StackPaused",
    "StackPlayed",
    "StackUpdated",
    "TickFinished",
    "TickFired",
    "TickQueued",
    "TickSkipped",
    "UpdateStack",
    "stack_key",
]

#: Keys of agent-stack entities on the run topics (``stack:<stack_id>``); they are not runs.
STACK_PREFIX = "stack:"

StackId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]
OverlapPolicy = Literal["skip", "queue"]


def stack_key(stack_id: str) -> str:
    """The entity key (and Kafka key) of a stack."""
    return f"{STACK_PREFIX}{stack_id}"


class LlmCallAttempted(Event, LlmAttemptFields):
    """One attempt of one LLM call made by an agent step (the run's ``path``), as the LLM worker reported it.

    Every attempt is recorded, failed ones included, so retries and fallbacks are visible and costed. Provider
    keys never appear here: only the provider's name.
    """

    TYPE: ClassVar[str] = "LlmCallAttempted"
    path: ShortText


class HandoffFields(BaseModel):
    """One agent of a step handing the conversation to another (an OpenAI Agents SDK handoff)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_agent: ShortText
    to_agent: ShortText


class AgentHandoff(Event, HandoffFields):
    """An agent inside the step at ``path`` handed the conversation to another, logged once, the moment the step's
    worker journaled it (a re-run of the step hands off the same way from its journal, and logs nothing again)."""

    TYPE: ClassVar[str] = "AgentHandoff"
    path: ShortText


class LlmCallCheckpoint(Result):
    """(Worker → engine, on the results topic) A provider answered call ``call`` of a step: the answer, kept before
    anything else can fail, and the attempts that paid for it.

    Why a record of its own: an agent turn is one step, and a step reports only when its body returns. A worker
    killed between the provider's answer and that report would make the next run of the step pay for the same
    call again. Workers read these records back (``tickflow.runtime.journal``) and hand the answer to the step's
    next run instead of calling the provider; the engine logs ``attempts`` as ``LlmCallAttempted`` events the
    moment the checkpoint arrives, so the ledger counts the call once, whichever run of the step used it.
    Keyed by run id like every result; ``(run, path, call)`` names the call, or ``(run, path, name)`` when named
    (the path is the step's idempotency key within its run). A call that cost nothing (a framework's tool call) has
    no attempts: it is journaled so that a re-run of the step does not make it again.
    """

    TYPE: ClassVar[str] = "LlmCallCheckpoint"
    path: ShortText
    step: ShortText
    #: The step attempt that paid for the call (a later attempt may reuse its answer).
    attempt: Int64 = Field(ge=1)
    #: Which call of the step this is, counted from 0 in the order the step body makes its calls.
    call: Int64 = Field(ge=0)
    #: The call's name, when the step names its calls instead of counting them (``call`` is then 0): a framework's
    #: tool calls may run side by side in any order, so each is named by what stays the same on a re-run (the
    #: model's tool-call id, itself from a journaled answer).
    name: ShortText = Field(default="", exclude_if=lambda v: not v)
    answer: Any
    attempts: list[LlmAttemptFields] = Field(default_factory=list, max_length=1_000)
    #: The call was a handoff between agents: the engine logs it as ``AgentHandoff`` when the checkpoint arrives.
    handoff: HandoffFields | None = Field(default=None, exclude_if=lambda v: v is None)


class MessageAppended(Event, MessageFields):
    """A message added to an agent's memory thread, with its embedding (so recall never re-embeds on replay)."""

    TYPE: ClassVar[str] = "MessageAppended"


class _StackSettings(BaseModel):
    """What a stack is: the workflow it runs each tick, how often, and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ShortText = ""
    workflow: Name
    input: Any = None
    interval_s: float = Field(default=10.0, ge=1.0, le=86_400.0)
    priority: Int64 = Field(default=0, ge=-1000, le=1000)
    overlap: OverlapPolicy = "skip"
    idle_backoff_max_s: float = Field(default=0.0, ge=0.0, le=86_400.0)
    budget_tokens: Int64 | None = Field(default=None, ge=0)
    budget_cost_usd: float | None = Field(default=None, ge=0)


class _StackChanges(BaseModel):
    """Settings to change; fields left out keep their value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ShortText | None = None
    workflow: Name | None = None
    input: Any = None
    interval_s: float | None = Field(default=None, ge=1.0, le=86_400.0)
    priority: Int64 | None = Field(default=None, ge=-1000, le=1000)
    overlap: OverlapPolicy | None = None
    idle_backoff_max_s: float | None = Field(default=None, ge=0.0, le=86_400.0)
    budget_tokens: Int64 | None = Field(default=None, ge=0)
    budget_cost_usd: float | None = Field(default=None, ge=0)


# --- stack commands (keyed stack:<stack_id>) ---------------------------------------------------------------


class CreateStack(Command, _StackSettings):
    """Create the stack (a no-op if it exists); it starts playing unless ``playing`` is false."""

    TYPE: ClassVar[str] = "CreateStack"
    playing: bool = True


class UpdateStack(Command, _StackChanges):
    TYPE: ClassVar[str] = "UpdateStack"


class PauseStack(Command):
    TYPE: ClassVar[str] = "PauseStack"
    reason: ShortText = ""


class PlayStack(Command):
    TYPE: ClassVar[str] = "PlayStack"


class DeleteStack(Command):
    TYPE: ClassVar[str] = "DeleteStack"
    reason: ShortText = ""


# --- stack events ------------------------------------------------------------------------------------------


class StackCreated(Event, _StackSettings):
    """(Stack entity) A stack exists: it runs ``workflow`` every ``interval_s`` while playing."""

    TYPE: ClassVar[str] = "StackCreated"
    stack_id: StackId
    playing: bool = True


class StackUpdated(Event, _StackChanges):
    """(Stack entity) Some settings changed; fields left out keep their value."""

    TYPE: ClassVar[str] = "StackUpdated"


class StackPaused(Event):
    """(Stack entity) The stack stops ticking; ``by`` says who paused it and ``reason`` why (e.g. budget)."""

    TYPE: ClassVar[str] = "StackPaused"
    by: Literal["user", "budget", "system"] = "user"
    reason: ShortText = ""


class StackPlayed(Event):
    """(Stack entity) The stack ticks again."""

    TYPE: ClassVar[str] = "StackPlayed"


class StackDeleted(Event):
    """(Stack entity) The stack is gone; its history stays in the log."""

    TYPE: ClassVar[str] = "StackDeleted"
    reason: ShortText = ""


class TickFired(Event):
    """(Stack entity) Tick ``tick`` started run ``run_id``; ``due_at_ms`` is when it was due (lag = fired - due)."""

    TYPE: ClassVar[str] = "TickFired"
    tick: Int64 = Field(ge=1)
    run_id: ShortText
    due_at_ms: EpochMs
    queued: bool = False


class TickQueued(Event):
    """(Stack entity) Tick ``tick`` was due while the previous tick's run was going; it fires when that ends."""

    TYPE: ClassVar[str] = "TickQueued"
    tick: Int64 = Field(ge=1)
    due_at_ms: EpochMs


class TickSkipped(Event):
    """(Stack entity) Tick ``tick`` was due but not fired (e.g. the previous tick's run is still going)."""

    TYPE: ClassVar[str] = "TickSkipped"
    tick: Int64 = Field(ge=1)
    due_at_ms: EpochMs
    reason: ShortText


class TickFinished(Event):
    """(Stack entity) The run of tick ``tick`` ended; its usage counts against the stack's budget."""

    TYPE: ClassVar[str] = "TickFinished"
    tick: Int64 = Field(ge=1)
    run_id: ShortText
    status: Literal["completed", "failed", "cancelled", "rejected"]
    tokens: Int64 = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    idle: bool = False


STACK_COMMAND_TYPES: tuple[type[Command], ...] = (CreateStack, UpdateStack, PauseStack, PlayStack, DeleteStack)
AGENT_EVENT_TYPES: tuple[type[Event], ...] = (
    AgentHandoff,
    LlmCallAttempted,
    MessageAppended,
    StackCreated,
    StackUpdated,
    StackPaused,
    StackPlayed,
    StackDeleted,
    TickFired,
    TickQueued,
    TickSkipped,
    TickFinished,
)
class LlmTokens(Payload):
    """Deltas of one streamed LLM reply, as a step's worker receives them: the text (or a tool call's arguments)
    that arrived since the previous chunk of the same stream.

    Written to the tokens topic (keyed by run id, short retention) for people watching a run, never to the log:
    the reply is recorded once, whole, when the step reports. ``stream`` numbers the LLM requests of one step
    attempt (a retried or fallback request is a new stream); ``index`` orders the chunks of a stream from 0; the
    last chunk has ``done`` and the request's ``outcome``. A crashed worker's stream simply stops; the attempt
    that runs again streams anew.
    """

    KIND: ClassVar[Kind] = "token"
    TYPE: ClassVar[str] = "LlmTokens"
    path: ShortText
    step: ShortText
    step_attempt: Int64 = Field(ge=1)
    #: One execution of the step attempt: a task redelivered after a crash runs again under a new one, and its
    #: streams start over at ``index`` 0 (a watcher shows the newest execution's).
    execution: ShortText
    stream: Int64 = Field(ge=1)
    provider: ShortText
    model: ShortText
    index: Int64 = Field(ge=0)
    text: LongText = ""
    #: The tool whose call arguments ``text`` continues; None for the reply's content.
    tool: ShortText | None = None
    done: bool = False
    outcome: LlmOutcome | None = None
    finish_reason: ShortText | None = None


_REGISTERED: tuple[type[Payload], ...] = (*AGENT_EVENT_TYPES, *STACK_COMMAND_TYPES, LlmTokens, LlmCallCheckpoint)
PAYLOAD_TYPES.update({(cls.KIND, cls.TYPE): cls for cls in _REGISTERED})
