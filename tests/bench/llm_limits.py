"""Measurement: requests per minute the local OpenAI-compatible test server sees from a pool's workers.

    python -m tests.bench.llm_limits [--workers 1 3] [--window-s 60] [--runs 250] [--no-wait-for-shares]

For each worker count: that many worker processes of one pool (``tickflow up --roles worker``), an engine in this
process, and ``--runs`` agent runs whose one LLM call goes to a provider limited to 60 requests/min (2 s burst
window, see ``tests/integration/runtime/test_llm_limits_cluster.py``). Prints the most requests the server saw in any
``--window-s`` seconds (60: requests per minute). ``--no-wait-for-shares`` measures code from before the limits
were shared (it logs no share: the workers are given 20 s to settle instead). Needs the broker on 127.0.0.1:9092.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.conftest import _delete_topics
from tests.integration.runtime.test_llm_limits_cluster import BURST_WINDOW_S, RPM, measure
from tests.llm_server import running_llm_server


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=250)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--no-wait-for-shares", action="store_true")
    args = parser.parse_args()
    figures = []
    for workers in args.workers:
        monkeypatch = pytest.MonkeyPatch()
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        try:
            with tempfile.TemporaryDirectory() as tmp, running_llm_server() as server:
                seen, _ = await measure(server, args.bootstrap, prefix, Path(tmp), workers, monkeypatch,
                                        runs=args.runs, wait_for_shares=not args.no_wait_for_shares,
                                        window_s=args.window_s)
        finally:
            monkeypatch.undo()
            await _delete_topics(args.bootstrap, (f"{prefix}.",))
        figures.append({"workers": workers, "limit_rpm": RPM, "burst_window_s": BURST_WINDOW_S,
                        "window_s": args.window_s, "most_requests_in_window": seen.most_in_window,
                        "shares": [sorted(s) for s in seen.shares]})
    print(json.dumps(figures, indent=2))
    for f in figures:
        print(f"{f['workers']} worker(s), limit {RPM:.0f}/min: {f['most_requests_in_window']} requests in the busiest "
              f"{args.window_s:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
