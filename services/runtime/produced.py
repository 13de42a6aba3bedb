"""What a worker pool already produced: results by attempt (its idempotency key), so a finished step never runs again.

A step body finishes, its result is sent, and only later is the task's offset committed. Two things can hand the
same attempt to a worker again after that: a crash before the commit (the task is redelivered), and an engine
that recovers before it has read the result (it re-sends every task still in flight). Both would run the body a
second time — a tool call repeated. So a worker remembers the results it sent, and when it takes over task
partitions it first reads the recent results of those partitions (results and tasks are keyed by run id on topics
with the same partition count, so partition p of one matches partition p of the other). A task whose result
exists is answered by re-sending that result; the engine applies it once, as it does any duplicate.

Bounded: the last ``MEMORY_S`` seconds and at most ``MAX_PER_PARTITION`` results per partition are read at
takeover, and at most ``capacity`` results (``max_bytes`` of memory in all, counted as Python holds them: the key,
the bytes object and the table's entry) are kept. Each result is kept as an exact-size copy: the bytes orjson
returns keep its whole output buffer — 4 KiB for a 400-byte result (measured with orjson 3.13) — which made a
64 MiB cache hold 650 MiB. A step whose result is older than
that (an engine down for longer than ``MEMORY_S``) can still run twice; step bodies also get an idempotency key
for that reason.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from tickflow.events.connection import KafkaTarget, kafka_connection
from tickflow.events.schemas import idempotency_key
from tickflow.runtime.journal import PaidCalls, is_checkpoint

__all__ = ["MAX_PER_PARTITION", "MEMORY_S", "ProducedResults"]

MEMORY_S = 15 * 60
MAX_PER_PARTITION = 100_000


#: Bytes per entry beyond its key and value: the ordered table's slot, hash and link node (CPython 3.11, measured).
ENTRY_OVERHEAD = 104


def _cost(key: str, raw: bytes) -> int:
    return sys.getsizeof(key) + sys.getsizeof(raw) + ENTRY_OVERHEAD


class ProducedResults:
    """An LRU of encoded results by the idempotency key of their attempt."""

    def __init__(self, capacity: int = 200_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._results: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self.learned = 0
        #: The paid LLM calls' checkpoints found on the same topic (``tickflow.runtime.journal``).
        self.calls = PaidCalls()

    def __len__(self) -> int:
        return len(self._results)

    def add(self, key: str, raw: bytes) -> None:
        """Remember a result; the oldest go first when there are ``capacity`` of them or ``max_bytes`` in all."""
        kept = bytes(memoryview(raw))  # an exact-size copy (see the module docstring)
        old = self._results.pop(key, None)
        if old is not None:
            self._bytes -= _cost(key, old)
        self._results[key] = kept
        self._bytes += _cost(key, kept)
        while self._results and (len(self._results) > self.capacity or self._bytes > self.max_bytes):
            self._bytes -= _cost(*self._results.popitem(last=False))

    @property
    def memory_bytes(self) -> int:
        """What the kept results cost in memory, as ``max_bytes`` counts it."""
        return self._bytes

    def get(self, key: str) -> bytes | None:
        return self._results.get(key)

    def add_raw(self, raw: bytes) -> None:
        """Remember a record of the results topic (read without full validation: only its coordinates)."""
        try:
            data = orjson.loads(raw)
            if is_checkpoint(data):
                self.calls.add_record(data, raw)
                return
            payload = data["payload"]
            self.add(idempotency_key(str(data["key"]), str(payload["path"]), int(payload["attempt"])), raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not a step result we could re-send; the engine dead-letters such records anyway

    async def learn(self, kafka: KafkaTarget, topic: str, partitions: set[int], now_ms: int | None = None) -> int:
        """Read the recent results of ``partitions`` (see the module docstring); returns how many were read."""
        if not partitions:
            return 0
        since = (now_ms if now_ms is not None else int(time.time() * 1000)) - MEMORY_S * 1000
        consumer = AIOKafkaConsumer(
            **kafka_connection(kafka).client_options(),
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            isolation_level="read_committed",
        )
        await consumer.start()
        read = 0
        try:
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            by_time = await consumer.offsets_for_times({tp: since for tp in tps})
            todo = set()
            for tp in tps:
                found = by_time.get(tp)
                start = found.offset if found is not None else ends[tp]
                start = max(start, ends[tp] - MAX_PER_PARTITION, begins[tp])
                if start < ends[tp]:
                    consumer.seek(tp, start)
                    todo.add(tp)
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=1_000, max_records=20_000)
                if not batch:
                    todo = {tp for tp in todo if await consumer.position(tp) < ends[tp]}
                    continue
                for tp, records in batch.items():
                    for record in records:
                        if record.offset < ends[tp] and record.value is not None:
                            self.add_raw(record.value)
                            read += 1
                    if records[-1].offset + 1 >= ends[tp]:
                        todo.discard(tp)
        finally:
            await consumer.stop()
        self.learned += read
        return read
