"""Sample workflows for the demo and the benchmark. Import ``registry`` to host them.

``stack_tick`` is one tick of an agent stack as the seed ADR (003) describes it: four agents — planner, builder,
communicator, reviewer — that every stack runs in sequence on each tick. The planner answers with a structured
plan; when its plan says ``idle`` the tick ends there with ``{"idle": true}`` (so the stack backs off), otherwise
the builder (which has a tool, so the LLM ↔ tool loop shows), the communicator and the reviewer follow. The agents
run on the *offline scripted model* (``OFFLINE_LABEL``): deterministic stand-ins, not a real LLM.

``order`` is a five-step pipeline whose ``charge`` step fails transiently for some orders (retried) and
permanently for a few (the run fails with the reason), so the orders demo shows retries and failures too.
``noop10`` is ten no-op steps: the benchmark's unit of durable work. ``refund`` waits for a person's approval (a
``ResumeRun``): docs/open-log.md starts and resumes it with Kafka's own console producer.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tickflow.agents import Agent, Memory
from tickflow.demo.pydantic_stack import OFFLINE_MODEL as PAI_OFFLINE_MODEL
from tickflow.demo.pydantic_stack import communicator as pai_communicator
from tickflow.events.errors import NonRetryableError
from tickflow.llm import OFFLINE_LABEL
from tickflow.workflow import AgentDefinition, Flow, Registry, ScopeFn, Workflow, current_step, named

__all__ = [
    "AGENTS",
    "DEMO_ILLUSTRATIVE_PRICE",
    "GOALS",
    "OFFLINE_LABEL",
    "Plan",
    "RefundApproval",
    "RefundRequest",
    "Review",
    "TestRun",
    "demo_llm_config",
    "registry",
    "stack_tick_pai",
    "write_demo_llm_config",
]



def _pinned(fn: Any) -> Any:
    """Keep the name this function had before the code moved to ``tickflow.demo`` (``services.demo.<name>``): runs
    pin their spec, and the specs recorded by demos before the move name the functions that way."""
    return named(f"services.demo.{fn.__name__}")(fn)


# --- the agent stack tick (seed ADR 003) --------------------------------------------------------------------

#: What each demo stack works towards (its ``input``); stacks take them round-robin.
GOALS = (
    "ship the release notes for v2.4",
    "fix the flaky checkout test",
    "onboard the new payments team",
    "cut API p99 latency below 200 ms",
    "prepare the hackathon kickoff",
)


class Plan(BaseModel):
    """The planner's structured answer; ``work = "idle"`` means nothing to do this tick."""

    work: Literal["build", "fix", "document", "idle"]
    focus: Literal["release notes", "flaky test", "onboarding docs", "api latency", "kickoff agenda"]
    steps: int = Field(ge=1, le=5)


class Review(BaseModel):
    """The reviewer's structured verdict on what the builder and the communicator produced."""

    verdict: Literal["approve", "revise"]
    score: int = Field(ge=1, le=10)


class TestRun(BaseModel):
    """Arguments of the builder's ``run_tests`` tool (the offline model fills them from this schema)."""

    suite: Literal["unit", "integration", "lint"]
    target: str = Field(max_length=80)


def run_tests(args: TestRun) -> dict[str, Any]:
    """Run a test suite against a target and report how many tests passed and failed.

    Deterministic (a hash of the arguments), so a replayed or retried tool call reports the same numbers.
    """
    h = zlib.crc32(f"{args.suite}:{args.target}".encode())
    total = 20 + h % 180
    failed = 0 if h % 7 else 1 + h % 3
    return {"suite": args.suite, "target": args.target, "passed": total - failed, "failed": failed}


#: The builder, communicator and reviewer work from the plan alone. Why: every memory read is a ClickHouse query
#: in the worker, and 100 stacks x 4 agents every 10 s made those reads the demo's bottleneck on a 2-core box.
_STATELESS = Memory(window=0, recall_k=0, remember=False)

planner = Agent(
    "planner",
    chain="planner",
    instructions="You plan the team's next step towards its goal. Answer with a Plan; say work=idle if there is "
    "nothing worth doing this tick.",
    output=Plan,
    memory=Memory(window=4, recall_k=2),  # the stack's long-term memory lives with the planner
    max_turns=2,
)
builder = Agent(
    "builder",
    chain="builder",
    instructions="You build what the plan asks for. Call run_tests before you report, then summarise the result.",
    tools=[run_tests],
    memory=_STATELESS,
    max_turns=3,
)
communicator = Agent(
    "communicator",
    chain="communicator",
    instructions="You write the team's one-paragraph status update from the builder's report.",
    memory=_STATELESS,
    max_turns=1,
)
reviewer = Agent(
    "reviewer",
    chain="reviewer",
    instructions="You review the build and the status update; answer with a Review.",
    output=Review,
    memory=_STATELESS,
    max_turns=2,
)
#: The four agents of a stack, in the order a tick runs them.
AGENTS = (planner, builder, communicator, reviewer)


def _answer(scope: Mapping[str, Any]) -> Any:
    value = scope["value"]
    return value.get("answer") if isinstance(value, Mapping) else value


def _tick(scope: Mapping[str, Any]) -> int:
    run_input = scope["input"]
    return int(run_input.get("tick", 0)) if isinstance(run_input, Mapping) else 0


@_pinned
def has_work(scope: Mapping[str, Any]) -> bool:
    """The planner's plan has work in it (anything but ``idle``): the other three agents run."""
    plan = _answer(scope)
    return isinstance(plan, Mapping) and plan.get("work") != "idle"


@_pinned
def brief_builder(scope: Mapping[str, Any]) -> dict[str, str]:
    """The builder's message: the plan and the stack's goal (a pure mapper, recorded in the log)."""
    run_input = scope["input"]
    stack_input = run_input.get("input") if isinstance(run_input, Mapping) else None  # None: a stack without input
    goal = stack_input.get("goal", "") if isinstance(stack_input, Mapping) else ""
    plan = json.dumps(_answer(scope), sort_keys=True)
    return {"message": f"Tick {_tick(scope)}. Goal: {goal}. Plan: {plan}. Call run_tests, then report."}


@_pinned
def brief_communicator(scope: Mapping[str, Any]) -> dict[str, str]:
    """The communicator's message: the builder's report, cut so the prompt stays small."""
    return {"message": f"Write the status update for tick {_tick(scope)}: {str(_answer(scope))[:300]}"}


@_pinned
def brief_reviewer(scope: Mapping[str, Any]) -> dict[str, str]:
    """The reviewer's message: the status update to review."""
    return {"message": f"Review tick {_tick(scope)}: {str(_answer(scope))[:300]}"}


@_pinned
async def rest(value: Any) -> dict[str, Any]:
    """The tick's output when the planner found nothing to do: ``idle`` doubles the stack's next interval."""
    return {"idle": True, "reason": "the planner found nothing to do this tick"}


@_pinned
async def wrap_up(value: Any) -> dict[str, Any]:
    """The tick's output after a full cycle: the reviewer's verdict (not idle, so the stack keeps its pace)."""
    review = value.get("answer") if isinstance(value, Mapping) else None
    return {"idle": False, "review": review, "label": value.get("label") if isinstance(value, Mapping) else None}


def _stack_tick(name: str, talk: AgentDefinition, brief: ScopeFn, review: ScopeFn) -> Workflow:
    """A tick: the planner; when its plan has work, the builder, the communicator ``talk`` (given ``brief``) and the
    reviewer (given ``review``), then ``wrap_up``; else ``rest``."""
    work = Flow().agent(builder, input=brief_builder).agent(talk, input=brief).agent(reviewer, input=review)
    return Workflow(name, timeout_s=300).agent(planner).branch(
        (has_work, work.step(wrap_up)), otherwise=Flow().step(rest), name="work_or_rest"
    )


stack_tick = _stack_tick("stack_tick", communicator, brief_communicator, brief_reviewer)


@named("tickflow.demo.brief_pai_communicator")
def brief_pai_communicator(scope: Mapping[str, Any]) -> dict[str, str]:
    """The Pydantic AI communicator's prompt: the builder's report, cut so the prompt stays small."""
    return {"prompt": brief_communicator(scope)["message"]}


@named("tickflow.demo.brief_reviewer_after_pai")
def brief_reviewer_after_pai(scope: Mapping[str, Any]) -> dict[str, str]:
    """The reviewer's message: the status update the Pydantic AI communicator wrote (its ``output``)."""
    value = scope["value"]
    update = value.get("output") if isinstance(value, Mapping) else value
    return {"message": f"Review tick {_tick(scope)}: {str(update)[:300]}"}


#: The same tick with its communicator written with Pydantic AI (``tickflow.demo.pydantic_stack``); None without
#: the ``pydantic-ai`` extra.
stack_tick_pai = None if pai_communicator is None else _stack_tick(
    "stack_tick_pai", pai_communicator(communicator.llm_pool), brief_pai_communicator, brief_reviewer_after_pai)


#: USD per million tokens the demo's offline models are priced at, marked illustrative (nobody is charged).
DEMO_ILLUSTRATIVE_PRICE: dict[str, Any] = {"input_per_m": 0.5, "output_per_m": 1.5, "illustrative": True}


def demo_llm_config(*, seed: int = 7) -> dict[str, Any]:
    """The demo's LLM configuration: only the offline scripted models, with a simulated latency (20-250 ms) and a
    3 % rate of simulated 503s, so the report shows realistic timings and retried attempts.

    Offline models bill nothing. So the cost views have figures to show, each gets an *illustrative* price
    (``DEMO_ILLUSTRATIVE_PRICE``, in the range of a small hosted model): every cost it yields is flagged
    ``price_illustrative`` and labelled "illustrative" wherever it is shown — a sample, not money spent."""
    return {
        "providers": [
            {
                "name": "offline",
                "kind": "offline",
                "offline": {"latency_ms": [20, 250], "failure_rate": 0.03, "seed": seed},
                "retry": {"max_attempts": 3, "base_delay_s": 0.05, "max_delay_s": 0.5},
            }
        ],
        "models": [
            {"id": "offline/echo", "provider": "offline"},
            {"id": "offline/tool-then-answer", "provider": "offline"},
        ],
        # The Pydantic AI communicator's offline stand-in is priced the same way.
        "prices": {model: dict(DEMO_ILLUSTRATIVE_PRICE)
                   for model in ("offline/echo", "offline/tool-then-answer", PAI_OFFLINE_MODEL)},
        "chains": {
            "planner": ["offline/tool-then-answer"],
            "builder": ["offline/tool-then-answer"],
            "communicator": ["offline/echo", "offline/tool-then-answer"],
            "reviewer": ["offline/tool-then-answer"],
        },
    }


def write_demo_llm_config(path: Path, *, seed: int = 7) -> Path:
    """Write the demo's LLM configuration (``demo_llm_config``) to ``path`` and return it (workers load the
    configuration from ``Settings.llm_config``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(demo_llm_config(seed=seed), indent=2))
    return path


# --- orders and the benchmark's no-op workflow ----------------------------------------------------------------


def _bucket(order_id: str) -> int:
    return zlib.crc32(order_id.encode()) % 100


@_pinned
async def validate(order: dict[str, Any]) -> dict[str, Any]:
    if not order.get("items"):
        raise NonRetryableError("order has no items")
    return order


@_pinned
async def price(order: dict[str, Any]) -> dict[str, Any]:
    total = sum(int(i["qty"]) * float(i["price"]) for i in order["items"])
    return {**order, "total": round(total, 2)}


@_pinned
async def reserve(order: dict[str, Any]) -> dict[str, Any]:
    return {**order, "reserved": True}


@_pinned
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    bucket = _bucket(order["id"])
    if bucket < 2:
        raise NonRetryableError(f"card declined for order {order['id']}")
    if bucket < 10 and current_step().attempt == 1:
        raise ConnectionError("payment gateway timed out (transient; will retry)")
    return {**order, "charged": order["total"]}


@_pinned
async def notify(order: dict[str, Any]) -> dict[str, Any]:
    return {"order": order["id"], "charged": order["charged"], "status": "confirmed"}


@_pinned
async def noop(value: Any) -> Any:
    return value


class RefundRequest(BaseModel):
    """The input of a ``refund`` run."""

    order: str = Field(min_length=1, max_length=80)
    amount: float = Field(gt=0, le=100_000)


class RefundApproval(BaseModel):
    """What a person answers to a refund that waits for approval: the payload of its ``approval`` resume."""

    approved: bool
    by: str = Field(min_length=1, max_length=80)


async def check_refund(request: RefundRequest) -> dict[str, Any]:
    """A refund request, checked before it waits for a person (the input's schema is the check)."""
    return {"order": request.order, "amount": request.amount, "status": "awaiting approval"}


async def pay_refund(approval: RefundApproval) -> dict[str, Any]:
    """Pay the refund once a person approved it, or record who declined it."""
    return {"status": "refunded" if approval.approved else "declined", "by": approval.by}


registry = Registry()
registry.llm_config = demo_llm_config()  # `tickflow up` (the default app) runs the demo's agents as `make demo` does
registry.add(stack_tick)
if stack_tick_pai is not None:
    registry.add(stack_tick_pai)
registry.add(
    Workflow("order").step(validate).step(price).step(reserve).step(charge, max_attempts=3, backoff_s=0.2).step(notify)
)
# Waits for a person: docs/open-log.md starts it and resumes it from Kafka's own console producer.
registry.add(
    Workflow("refund").step(check_refund).wait_for_event("approval", schema=RefundApproval, timeout_s=7 * 86_400)
    .step(pay_refund)
)
_noop10 = Workflow("noop10")
for _i in range(10):
    _noop10.step(noop, name=f"noop{_i}")
registry.add(_noop10)
