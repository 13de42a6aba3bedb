"""An engine process that kills itself (SIGKILL), or freezes itself (SIGSTOP), at a named crash point of ``Engine``.

``python -m tests.integration.crashing_engine`` reads the usual ``TICKFLOW_*`` settings, and from its own
variables: ``TEST_CRASH_AT`` (one of ``tickflow.runtime.engine.CRASH_POINTS``), ``TEST_CRASH_AFTER`` (how many
times that point is passed first, default 0), ``TEST_CRASH_KEY`` (only keys starting with it count; default
all) and ``TEST_CRASH_SIGNAL`` (``KILL``, the default, or ``STOP``: the process freezes there once, and goes on
where it stopped when the test sends SIGCONT: a zombie). The crash is injected through ``Engine(crash=...)``;
nothing in the production paths reads these variables.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from tests.integration.flows import registry
from tickflow.runtime.engine import CRASH_POINTS, CrashHook, Engine
from tickflow.settings import Settings

log = logging.getLogger("tickflow.test.crash")


def crash_hook() -> CrashHook:
    point, prefix = os.environ["TEST_CRASH_AT"], os.environ.get("TEST_CRASH_KEY", "")
    left = int(os.environ.get("TEST_CRASH_AFTER", "0"))
    name = os.environ.get("TEST_CRASH_SIGNAL", "KILL")
    assert point in CRASH_POINTS, f"unknown crash point {point!r}; choose from {CRASH_POINTS}"
    assert name in ("KILL", "STOP"), f"TEST_CRASH_SIGNAL must be KILL or STOP, not {name!r}"

    def hook(at: str, key: str) -> None:
        nonlocal left
        if at != point or not key.startswith(prefix) or left < 0:
            return
        if left > 0:
            left -= 1
            return
        left = -1  # once: a frozen process resumes past this point
        log.warning("fault injection: SIG%s at crash point %s (key %s)", name, at, key)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

    return hook


async def main() -> None:
    engine = Engine(Settings(), registry, crash=crash_hook())
    await engine.start()
    assert engine.task is not None
    await engine.task


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
