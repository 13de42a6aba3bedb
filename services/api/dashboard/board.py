"""The live stacks board: one reader of the events topic folds every stack's board row and fans changes out.

Why not poll ClickHouse: the projector lands an event about half a second after it is written, and a poll adds its
own period on top, so a pause pressed in the browser would show up a second or more later. The ADR promises
visitors under a second. So the board reads the log itself, like the live streams (``runtime/live.py``): one
consumer, no group, all partitions of the events topic, started where the projection stands (its per-partition
watermark), so nothing between the projected rows and "now" is missed. Rows fold with the projection's own pure
rule (``projections.facts.stack_row``, idempotent by seq), so the board and the ``stacks`` table agree.

A stack's running cost (``cost_used_usd``) counts an unknown price as 0, so the feed also keeps, per stack, how
many of its LLM attempts had no price or an illustrative one (``projections.analytics.stack_costs``, read from the
rollup at most every ``COST_NOTES_EVERY_S`` seconds), and the row reads "≥ $x + n calls at unknown price".

One feed per API process, whatever the number of open pages: each page subscribes to a bounded queue; a page that
falls behind by more than ``QUEUE_LIMIT`` changes is dropped (the browser's EventSource reconnects and gets a fresh
board). The feed stops reading when the last page leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import TopicPartition

from tickflow.events.agents import STACK_PREFIX
from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.connection import KafkaTarget
from tickflow.projections.analytics import AnalyticsUnavailable, stack_costs
from tickflow.projections.facts import StackRow, stack_row
from tickflow.projections.store import ProjectionStore
from tickflow.runtime.kafka import new_consumer

__all__ = ["COST_NOTES_EVERY_S", "QUEUE_LIMIT", "BoardFeed"]

log = logging.getLogger("tickflow.api.dashboard")

#: Changes a page may fall behind by before it is dropped (it reconnects and starts from a fresh board).
QUEUE_LIMIT = 10_000
#: Rows a board shows (the stacks with the most recent activity first when there are more).
BOARD_LIMIT = 5_000
#: How often the per-stack counts of attempts at unknown / illustrative prices are re-read from the rollup.
COST_NOTES_EVERY_S = 5.0


class BoardFeed:
    """Every stack's board row, kept current from the log, and a stream of the rows that change."""

    def __init__(self, store: ProjectionStore, kafka: KafkaTarget | None, events_topic: str, partitions: int) -> None:
        self.store, self.kafka, self.events_topic, self.partitions = store, kafka, events_topic, partitions
        self.rows: dict[str, StackRow] = {}
        self._pages: set[asyncio.Queue[StackRow | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.events_read = 0
        self._notes: dict[str, dict[str, Any]] = {}
        self._notes_read_at = float("-inf")

    async def cost_notes(self) -> dict[str, dict[str, Any]]:
        """Per stack, its LLM attempts at unknown and at illustrative prices (stacks with neither are absent);
        re-read at most every ``COST_NOTES_EVERY_S`` seconds, empty on a store without rollups."""
        if time.monotonic() - self._notes_read_at >= COST_NOTES_EVERY_S:
            self._notes_read_at = time.monotonic()
            try:
                self._notes = await asyncio.to_thread(stack_costs, self.store)
            except AnalyticsUnavailable:
                self._notes = {}
            except Exception as exc:  # the board must render without them; the cells then show the plain sum
                log.warning("cannot read the stacks' cost notes: %r", exc)
        return self._notes

    async def subscribe(self) -> AsyncIterator[StackRow]:
        """The rows that change from now on, for one page (after ``snapshot``); ends when the page is dropped."""
        queue: asyncio.Queue[StackRow | None] = asyncio.Queue(QUEUE_LIMIT)
        self._pages.add(queue)
        try:
            await self._ensure_started()
            while (row := await queue.get()) is not None:
                yield row
        finally:
            self._pages.discard(queue)
            if not self._pages and self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
                self._ready.clear()

    async def snapshot(self) -> list[StackRow]:
        """The board now: from the live fold when it runs, else from the projection."""
        if self._task is not None and self._ready.is_set():
            rows = list(self.rows.values())
        else:
            rows = await asyncio.to_thread(self.store.list_stacks, limit=BOARD_LIMIT)
        return sorted((r for r in rows if r.status != "deleted"), key=lambda r: r.stack_id)

    async def _ensure_started(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="tickflow-board")
        await self._ready.wait()

    async def _follow(self) -> None:
        rows = await asyncio.to_thread(self.store.list_stacks, limit=BOARD_LIMIT)
        marks = (await asyncio.to_thread(self.store.watermarks)).get("events", {})
        self.rows = {r.stack_id: r for r in rows}
        if self.kafka is None:  # an API without Kafka: the board is the projection's, refreshed by reloading
            self._ready.set()
            return
        consumer = new_consumer(self.kafka, group_id=None, fetch_max_wait_ms=500, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(self.events_topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            for tp in tps:  # from where the projection stands: rows fold idempotently by seq
                if tp.partition in marks:
                    consumer.seek(tp, marks[tp.partition] + 1)
                else:
                    await consumer.seek_to_beginning(tp)
            self._ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=1_000, max_records=5_000)
                for records in batch.values():
                    for record in records:
                        if record.key is None or not record.key.startswith(STACK_PREFIX.encode()):
                            continue
                        self._apply(record.value)
        finally:
            await consumer.stop()

    def _apply(self, value: bytes | None) -> None:
        try:
            event = decode(value, expect="event")
        except InvalidRecord:
            return  # the projector dead-letters it
        self.events_read += 1
        stack_id = event.key[len(STACK_PREFIX) :]
        prev = self.rows.get(stack_id)
        row = stack_row(prev, event)
        if row is None or row is prev:
            return
        self.rows[stack_id] = row
        for queue in list(self._pages):
            try:
                queue.put_nowait(row)
            except asyncio.QueueFull:  # too slow: drop it; its EventSource reconnects to a fresh board
                self._pages.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)
