"""Sample workflows for the demo and the benchmark. Import ``registry`` to host them.

``order`` is a five-step pipeline whose ``charge`` step fails transiently for some orders (retried) and
permanently for a few (the run fails with the reason), so the demo shows retries and failures too.
``noop10`` is ten no-op steps: the benchmark's unit of durable work.
"""

from __future__ import annotations

import zlib
from typing import Any

from services.errors import NonRetryableError
from services.workflow import Registry, Workflow, current_step

__all__ = ["registry"]


def _bucket(order_id: str) -> int:
    return zlib.crc32(order_id.encode()) % 100


async def validate(order: dict[str, Any]) -> dict[str, Any]:
    if not order.get("items"):
        raise NonRetryableError("order has no items")
    return order


async def price(order: dict[str, Any]) -> dict[str, Any]:
    total = sum(int(i["qty"]) * float(i["price"]) for i in order["items"])
    return {**order, "total": round(total, 2)}


async def reserve(order: dict[str, Any]) -> dict[str, Any]:
    return {**order, "reserved": True}


async def charge(order: dict[str, Any]) -> dict[str, Any]:
    bucket = _bucket(order["id"])
    if bucket < 2:
        raise NonRetryableError(f"card declined for order {order['id']}")
    if bucket < 10 and current_step().attempt == 1:
        raise ConnectionError("payment gateway timed out (transient; will retry)")
    return {**order, "charged": order["total"]}


async def notify(order: dict[str, Any]) -> dict[str, Any]:
    return {"order": order["id"], "charged": order["charged"], "status": "confirmed"}


async def noop(value: Any) -> Any:
    return value


registry = Registry()
registry.add(
    Workflow("order").step(validate).step(price).step(reserve).step(charge, max_attempts=3, backoff_s=0.2).step(notify)
)
_noop10 = Workflow("noop10")
for _i in range(10):
    _noop10.step(noop, name=f"noop{_i}")
registry.add(_noop10)
