"""The Faust side of tests/bench/faust_vs_aiokafka.py: one agent counting the records of ``BENCH_TOPIC``.

It writes ``{"records", "seconds"}`` to ``BENCH_OUT`` when it has seen ``BENCH_RECORDS`` records, timed from its
first record (the worker's start and the group's join are not measured). ``BENCH_CODEC=1`` decodes each value with
tickflow's codec (what a processor over the log pays); otherwise values stay raw bytes (Faust's own cost).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tickflow.faust import App
from tickflow.settings import Settings

settings = Settings()
TOPIC = os.environ["BENCH_TOPIC"]
LIMIT = int(os.environ["BENCH_RECORDS"])
OUT = Path(os.environ["BENCH_OUT"])

app = App(f"{TOPIC}-faust-{os.getpid()}", settings=settings)
topic = app.topic(TOPIC, key_serializer="raw", value_serializer="tickflow" if os.environ.get("BENCH_CODEC") == "1"
                  else "raw")


@app.agent(topic)
async def count(stream: Any) -> None:
    seen, first = 0, 0.0
    async for _value in stream:
        if seen == 0:
            first = time.perf_counter()
        seen += 1
        if seen == LIMIT:
            OUT.write_text(json.dumps({"records": seen - 1, "seconds": time.perf_counter() - first}))
