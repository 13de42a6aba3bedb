"""The workflows of the Faust example: ``checkout`` (fails when the card is declined) and its compensation, ``refund``.

Host them with ``tickflow up --app examples.faust_failures.workflows:registry``; the Faust app of ``app.py`` starts
``refund`` runs when ``checkout`` runs fail.
"""

from __future__ import annotations

from typing import Any

from tickflow.events.errors import NonRetryableError
from tickflow.workflow import Registry, Workflow, named

__all__ = ["CHECKOUT", "REFUND", "registry"]

CHECKOUT = "checkout"
REFUND = "refund"


@named("examples.faust_failures.reserve")
async def reserve(order: dict[str, Any]) -> dict[str, Any]:
    return {**order, "reserved": True}


@named("examples.faust_failures.charge")
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    if order.get("card") == "declined":
        raise NonRetryableError(f"card declined for order {order['id']}")
    return {**order, "charged": order["total"]}


@named("examples.faust_failures.release")
async def release(request: dict[str, Any]) -> dict[str, Any]:
    """Give back what the failed checkout reserved (here: say so)."""
    return {"released": request["order"], "because": request["reason"]}


registry = Registry()
registry.add(Workflow(CHECKOUT).step(reserve).step(charge))
registry.add(Workflow(REFUND).step(release))
