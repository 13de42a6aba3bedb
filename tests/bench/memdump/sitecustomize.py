"""Bench-only memory dumps (``tests/bench/stacks.py --memory-dumps DIR``): on SIGUSR1 the process writes what holds
its memory to ``DIR/<pid>-<n>.json`` — the allocators' own figures (glibc's ``mallinfo2``: bytes in use and free in
its arenas; pymalloc's arenas and blocks), and, unless ``TICKFLOW_BENCH_MEMDUMP_KIND=allocator`` (cheap: no pause),
object counts by type, the largest containers (with what owns them), and, under ``PYTHONTRACEMALLOC``, the source
lines that allocated the most, and the growth since the previous dump.

Loaded through ``PYTHONPATH`` by the bench's role processes only (Python imports ``sitecustomize`` at start-up);
nothing of it is in the package. Tells a leak (a container or a type that keeps growing) from the allocator's
fragmentation (RSS grows, the live objects do not).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

_DIR = os.environ.get("TICKFLOW_BENCH_MEMDUMP_DIR")
_state: dict[str, Any] = {"n": 0, "previous": None}


def _owner(container: object) -> str:
    """What holds a container: the attribute name and type of the object whose __dict__ has it, if any."""
    for ref in gc.get_referrers(container):
        if isinstance(ref, dict):
            for holder in gc.get_referrers(ref):
                if getattr(holder, "__dict__", None) is ref:
                    name = next((k for k, v in ref.items() if v is container), "?")
                    return f"{type(holder).__module__}.{type(holder).__qualname__}.{name}"
        elif hasattr(ref, "__slots__"):
            for slot in getattr(type(ref), "__slots__", ()):
                if getattr(ref, slot, None) is container:
                    return f"{type(ref).__module__}.{type(ref).__qualname__}.{slot}"
    return "?"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _allocators() -> dict[str, Any]:
    """glibc's figures over all its arenas, and pymalloc's (``sys._debugmallocstats``, which prints to stderr)."""
    out: dict[str, Any] = {}
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo2.restype = _MallInfo2
        info = mallinfo2()
        out["glibc_mib"] = {name: round(getattr(info, name) / 2**20, 2) for name, _ in _MallInfo2._fields_
                            if name not in ("ordblks", "smblks", "hblks")}
    except (OSError, AttributeError):
        pass
    with tempfile.TemporaryFile("w+") as captured:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read()
    wanted = ("arenas allocated total", "arenas reclaimed", "arenas highwater mark", "arenas allocated current",
              "bytes in allocated blocks", "bytes in available blocks", "unused pools", "bytes lost to")
    for line in text.splitlines():
        match = re.match(r"#?\s*([a-z ]+?)\s*=\s*([\d,]+)", line.strip())
        if match and any(match.group(1).startswith(w) for w in wanted):
            out.setdefault("pymalloc", {})[match.group(1)] = int(match.group(2).replace(",", ""))
    return out


def _dump() -> None:
    started = time.monotonic()
    out: dict[str, Any] = {"pid": os.getpid(), "at": time.time(), **_allocators()}
    if os.environ.get("TICKFLOW_BENCH_MEMDUMP_KIND") != "allocator":
        _census(out)
    if tracemalloc.is_tracing():
        _traced(out)
    out["dump_s"] = round(time.monotonic() - started, 2)
    _state["n"] += 1
    assert _DIR is not None
    Path(_DIR, f"{os.getpid()}-{_state['n']}.json").write_text(json.dumps(out, indent=1))


def _census(out: dict[str, Any]) -> None:
    objects = gc.get_objects()
    counts = Counter(type(o).__qualname__ for o in objects)
    sized = [o for o in objects if isinstance(o, dict | list | set | frozenset) and len(o) > 5_000]  # type: ignore[arg-type]
    sized.sort(key=len, reverse=True)  # type: ignore[arg-type]
    largest = [{"type": type(o).__name__, "len": len(o), "owner": _owner(o)} for o in sized[:25]]  # type: ignore[arg-type]
    out.update(objects=len(objects), top_types=counts.most_common(40), largest_containers=largest)
    del objects, sized


def _traced(out: dict[str, Any]) -> None:
    """The lines that allocated what is live now, and their growth since the previous dump."""
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    out["traced_mib"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
    out["top_lines"] = [[str(s.traceback), round(s.size / 2**20, 2), s.count] for s in snap.statistics("lineno")[:30]]
    if _state["previous"] is not None:
        out["growth_since_previous"] = [[str(d.traceback), round(d.size_diff / 2**20, 2), d.count_diff]
                                        for d in snap.compare_to(_state["previous"], "lineno")[:30]]
    _state["previous"] = snap


def _on_signal(signum: int, frame: FrameType | None) -> None:
    threading.Thread(target=_dump, name="memdump").start()  # not in the handler: it may interrupt anything


if _DIR:
    Path(_DIR).mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGUSR1, _on_signal)
