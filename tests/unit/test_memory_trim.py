"""The C heap's free pages go back to the system (``tickflow.node.release_free_memory``)."""

from __future__ import annotations

import psutil
import pytest

from tickflow.node import release_free_memory


def test_memory_freed_inside_the_heap_is_handed_back() -> None:
    """Free memory under a live block at the heap's top stays in the process until trimmed: a role's RSS would
    climb in steps that are not memory in use."""
    rss = psutil.Process().memory_info
    chunks = [bytes(4096) for _ in range(40_000)]  # ~160 MiB of blocks glibc serves from its heap (under mmap's size)
    pin = bytes(4096)  # allocated last, it keeps the heap's top from shrinking by itself
    before = rss().rss
    del chunks
    assert before - rss().rss < 50 * 2**20  # freed, yet still held by the process
    if not release_free_memory():
        pytest.skip("no glibc malloc_trim in this process's C library")
    after = rss().rss
    assert before - after > 100 * 2**20, (before, after)
    assert pin
