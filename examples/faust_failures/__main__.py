"""``python -m examples.faust_failures [--orders N] [faust worker arguments]``: wait for tickflow's topics, start N
checkout runs (default 20) once the worker is up, and run the Faust worker of ``app.py`` until Ctrl-C.
``--orders 0`` starts none."""

from __future__ import annotations

import asyncio
import sys
import time

from examples.faust_failures.app import app, place_orders, settings
from tickflow.runtime.kafka import new_admin

ORDERS = 20


async def wait_for_tickflow(timeout_s: float = 180.0) -> None:
    """Wait until the broker answers and tickflow's topics exist: ``tickflow up`` (started just before, in the
    background) creates them once its broker is up, and the local broker does not create topics on first use."""
    wanted = {settings.topics.events, settings.topics.commands}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = new_admin(settings.kafka)
            await admin.start()
            try:
                if wanted <= set(await admin.list_topics()):
                    return
            finally:
                await admin.close()
        except Exception:  # the broker is still starting
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no tickflow topics {sorted(wanted)} on {settings.kafka} after {timeout_s:.0f} s: "
                             "start tickflow first (tickflow up --app examples.faust_failures.workflows:registry)")
        await asyncio.sleep(1.0)


def main(argv: list[str]) -> None:
    orders = ORDERS
    if argv[:1] == ["--orders"]:
        orders, argv = int(argv[1]), argv[2:]
    # One loop, left current for the Faust worker (asyncio.run would close it and leave none).
    asyncio.set_event_loop(loop := asyncio.new_event_loop())
    loop.run_until_complete(wait_for_tickflow())
    if orders:

        @app.task
        async def start_orders() -> None:
            await place_orders(orders)

    sys.argv = [sys.argv[0], *(argv or ["worker", "--loglevel", "info"])]
    app.main()


if __name__ == "__main__":
    main(sys.argv[1:])
