"""Workflows the integration tests host in subprocesses (``--app tests.integration.flows:registry``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import BaseModel

from tickflow.workflow import Flow, Registry, Workflow, current_step

registry = Registry()


async def tick(value: Any) -> Any:
    await asyncio.sleep(0.05)  # long enough that a kill -9 lands with many runs in the middle
    ctx = current_step()
    return {"n": (value or {}).get("n", 0) + 1, "last": ctx.idempotency_key}


_slow = Workflow("slow10")
for _i in range(10):
    _slow.step(tick, name=f"t{_i}")
registry.add(_slow)


async def add_one(value: int) -> int:
    return value + 1


def double(value: int) -> int:  # sync on purpose: runs in a worker thread
    return value * 2


async def flaky(value: int) -> int:
    if current_step().attempt < 2:
        raise ConnectionError("transient failure, first attempt only")
    return value


async def broken(value: int) -> int:
    raise ValueError(f"cannot handle {value}")


registry.add(Workflow("math").step(add_one).step(double).step(flaky, max_attempts=3, backoff_s=0.05))
registry.add(Workflow("doomed").step(add_one).step(broken, max_attempts=2, backoff_s=0.05))


class Approval(BaseModel):
    approved: bool
    by: str


def is_approved(scope: Any) -> bool:
    return bool(scope["value"]["approved"])


async def ship(value: Any) -> str:
    return f"shipped after {value['by']} approved"


async def reject(value: Any) -> str:
    return "rejected"


async def square(value: int) -> int:
    return value * value


async def total(values: list[int]) -> int:
    return sum(values)


async def slow_forever(value: Any) -> Any:
    await asyncio.sleep(3600)
    return value


def say(value: Any) -> Any:
    print(f"saying {value}")  # captured into the step's logs
    logging.getLogger("flows").warning("said %s", value)
    return value


registry.add(
    Workflow("fan")
    .parallel(left=Flow().step(add_one, name="l1"), right=Flow().step(double, name="r1").sleep(0.3))
    .step(say)
)
registry.add(Workflow("napper").sleep(1.0).step(add_one, name="after_nap"))
registry.add(
    Workflow("approval")
    .step(add_one, name="prepare")
    .wait_for_event("approve", schema=Approval, timeout_s=600)
    .branch((is_approved, Flow().step(ship)), otherwise=Flow().step(reject))
)
registry.add(Workflow("square").step(square))
registry.add(Workflow("fanout").foreach(Flow().child("square"), concurrency=4).step(total))
registry.add(Workflow("stuck").step(slow_forever).step(add_one, name="never"))


async def dawdle(value: Any) -> Any:
    await asyncio.sleep(2.0)  # a window to stop the worker while the step runs
    return value


registry.add(Workflow("dawdle").step(dawdle).step(add_one, name="after"))
registry.add(Workflow("parent_of_stuck").child("stuck").step(add_one, name="never_either"))


async def bump(value: Any) -> Any:
    await asyncio.sleep(0.05)
    return {"n": (value or {}).get("n", 0) + 1}


def joined(scope: Any) -> Any:
    return {"n": scope["value"]["left"]["n"] + scope["value"]["right"]["n"]}


registry.add(
    Workflow("forknap")
    .parallel(left=Flow().step(bump, name="left"), right=Flow().step(bump, name="right"), name="fork")
    .sleep(1.5, name="nap")
    .step(tick, name="wake", input=joined)
)


async def big(size: int) -> dict[str, Any]:
    return {"blob": "x" * size}


async def measure(value: dict[str, Any]) -> int:
    return len(value["blob"])


registry.add(Workflow("bigdata").step(big).step(measure))
registry.add(Workflow("measure_input").step(measure, name="measure_it"))
# tests/integration/runtime/test_claimcheck.py: a big final output; a big resume payload checked against a schema; a
# claim-checked value before a fork point; a history of many mid-sized values (each inline, > 1 MB together).
registry.add(Workflow("bigout").step(big, name="make"))


async def measure_join(value: dict[str, Any]) -> dict[str, int]:
    return {name: len(branch["blob"]) for name, branch in value.items()}


# A parallel whose branches' outputs are claim-checked: the next step gets the joined value whole.
registry.add(
    Workflow("bigjoin")
    .parallel(large=Flow().step(big, name="large", input="input.large"),
              small=Flow().step(big, name="small", input="input.small"))
    .step(measure_join)
)
registry.add(
    Workflow("bigwait")
    .wait_for_event("upload", schema={"type": "object", "required": ["blob"],
                                      "properties": {"blob": {"type": "string", "pattern": "^y+$"}}})
    .step(measure, name="measured")
)
registry.add(Workflow("bignap").step(big, name="make").sleep(1.0, name="nap").step(measure, name="measured"))


async def pad(value: Any) -> dict[str, Any]:
    return {"n": (value["n"] if isinstance(value, dict) else 0) + 1, "pad": "p" * 45_000}


async def pads(value: dict[str, Any]) -> int:
    return int(value["n"])


_chunky = Workflow("chunky")
for _i in range(14):
    _chunky.step(pad, name=f"pad{_i}")
registry.add(_chunky.sleep(1.0, name="nap").step(pads))


async def hold(value: Any) -> Any:
    await asyncio.sleep(0.3)
    return value


registry.add(Workflow("per_customer", concurrency_key="input.customer", max_per_key=1).step(hold))


# --- commands taken once (tests/integration/runtime/test_seams.py) ----------------------------------------------------


async def both(value: Any) -> Any:
    return {"shipped": value}


def said_bye(scope: Any) -> bool:
    return bool(scope["value"] == "bye")


async def reply(message: Any) -> Any:
    return message


async def on_tick(value: Any) -> Any:
    return {"tick": value["tick"]}


# Two approvals of the same event, one after the other: a resume taken twice completes both.
registry.add(
    Workflow("two_approvals")
    .wait_for_event("approve", name="first")
    .wait_for_event("approve", name="second")
    .step(both)
)
# A chat: each message is answered once, until "bye".
registry.add(Workflow("chat").loop(Flow().wait_for_event("message").step(reply), until=said_bye, max_iterations=50))
registry.add(Workflow("stack_tick").step(on_tick))


# --- agents (tests/integration/agents/test_agents.py) -----------------------------------------------------------------

import os  # noqa: E402 - grouped with the agent flows they serve

from tickflow.agents import Agent, Memory  # noqa: E402


class Lookup(BaseModel):
    topic: str


#: Where ``lookup`` appends the idempotency key of every execution (set by the kill -9 test).
TOOL_LOG_ENV = "TICKFLOW_TEST_TOOL_LOG"


async def lookup(args: Lookup) -> str:
    """Look a topic up in the library."""
    path = os.environ.get(TOOL_LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write(current_step().idempotency_key + "\n")
    await asyncio.sleep(0.2)  # a window for the kill -9 between this tool call and the run's end
    return f"the library says {args.topic} is well documented"


class City(BaseModel):
    city: str


async def get_weather(args: City) -> str:
    """The weather in a city."""
    return f"sunny in {args.city}"


librarian = Agent(
    "librarian",
    instructions="Answer questions using the lookup tool.",
    tools=[lookup],
    memory=Memory(window=2, recall_k=3),
)
registry.add(Workflow("agent_lookup").agent(librarian))
# The secret-scan test points chain "http" at the local OpenAI-compatible test server.
forecaster = Agent("forecaster", chain="http", tools=[get_weather], memory=Memory(window=4, recall_k=2),
                   llm_max_attempts=1)
registry.add(Workflow("agent_http").agent(forecaster))

# --- token streaming (tests/integration/runtime/test_tokens.py) -------------------------------------------------------

# Chain "stream" points at the local test server's stream-slow model, which streams its answer over ~1.4 s.
narrator = Agent("narrator", chain="stream", memory=Memory(window=0, recall_k=0, remember=False), llm_max_attempts=1)
registry.add(Workflow("agent_stream").agent(narrator))

# --- paid once (tests/integration/agents/test_paid_once.py) -----------------------------------------------------------

# Chain "paid" is the test server's "ok" model; the memory's embedder ("stall-embed") holds the turn's second
# embedding request, which comes after the chat call: the worker is then stuck between a paid answer and its report.
accountant = Agent("accountant", chain="paid", memory=Memory(window=0, recall_k=0, embedder="stall-embed"),
                   llm_max_attempts=2, llm_timeout_s=120)
registry.add(Workflow("agent_paid").agent(accountant))

# --- secrets (tests/security/test_secrets.py) --------------------------------------------------------------------

#: The variable a planted secret is read from; its name says it holds a key, so every kept text redacts its value.
PLANTED_ENV = "ACME_API_KEY"


def leak(value: Any) -> Any:
    """A careless step: prints a secret it uses, then fails with it in the message."""
    secret = os.environ.get(PLANTED_ENV, "")
    print(f"calling the billing API with {secret}")
    logging.getLogger("acme").warning("retrying https://svc:%s@billing.example/v1", secret)
    raise RuntimeError(f"billing API refused key {secret}")


registry.add(Workflow("leaky").step(leak, max_attempts=1))
