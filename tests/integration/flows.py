"""Workflows the integration tests host in subprocesses (``--app tests.integration.flows:registry``)."""

from __future__ import annotations

import asyncio
from typing import Any

from services.workflow import Registry, Workflow, current_step

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


registry.add(Workflow("math").step(add_one).step(double).step(flaky, max_attempts=3))
registry.add(Workflow("doomed").step(add_one).step(broken, max_attempts=2))
