"""A failed send is never forgotten: no offset is committed over an event or task the broker did not take."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from tickflow.runtime.engine import Engine
from tickflow.runtime.kafka import PendingSends, SendFailed
from tickflow.settings import Settings
from tickflow.workflow import Registry


def _future(error: BaseException | None = None) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
    return fut


async def test_a_failed_send_fails_every_later_drain() -> None:
    pending = PendingSends()
    pending.add(_future())
    pending.add(_future(KafkaTimeoutError()))
    pending.add(_future())
    with pytest.raises(SendFailed, match="KafkaTimeoutError"):
        await pending.drain()
    pending.add(_future())
    with pytest.raises(SendFailed):  # sticky: the lost record is still lost
        await pending.drain()


class RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)


async def test_the_engine_commits_nothing_after_a_lost_send(tmp_path: Path) -> None:
    engine = Engine(Settings(state_dir=tmp_path), Registry())
    consumer = RecordingConsumer()
    engine.consumer = consumer  # type: ignore[assignment]
    tp = TopicPartition("t.commands", 0)
    engine.positions[tp] = 10
    engine.pending.add(_future(KafkaTimeoutError()))
    with pytest.raises(SendFailed):
        await engine._commit()
    engine.positions[tp] = 11
    with pytest.raises(SendFailed):
        await engine._commit(only={tp})  # as a revocation would
    assert consumer.commits == []
