"""How a worker turns a model's deltas into token chunks: gathered per stream for FLUSH_S, one kind of text per
chunk, bounded in size, numbered, closed with the outcome; a full queue drops and counts instead of waiting.

The publisher's queue is read directly; nothing is sent (its sender task is not started)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tickflow.events.codec import decode
from tickflow.events.envelope import MAX_ID_CHARS, Envelope
from tickflow.events.schemas import RunStep
from tickflow.runtime.tokens import MAX_CHUNK_CHARS, TokenPublisher


def task(run_id: str = "run-1", task_id: str = "run-1/7") -> Envelope:
    step = RunStep(workflow="wf", step="llm", fn="wf.llm", path="agent#1/agent.llm", attempt=2, idempotency_key="k",
                   input=None)
    return Envelope.wrap(step, id=task_id, key=run_id, occurred_at_ms=1)


def publisher(**kw: Any) -> TokenPublisher:
    return TokenPublisher(cast(Any, None), "t.tokens", flush_s=0.05, **kw)


def drain(p: TokenPublisher) -> list[dict[str, Any]]:
    out = []
    while not p._queue.empty():
        key, value = p._queue.get_nowait()
        env = decode(value, expect="token")
        assert key == env.key.encode()
        out.append({**env.payload.model_dump(), "id": env.id})
    return out


async def test_deltas_within_the_flush_window_become_one_chunk() -> None:
    p = publisher()
    env = task()
    stream = p.listener(env, env.payload).open(provider="local", model="m")  # type: ignore[arg-type]
    for word in ("Once", " upon", " a", " time"):
        stream.text(word)
    assert drain(p) == []  # nothing before the window ends
    await asyncio.sleep(0.08)
    (chunk,) = drain(p)
    assert (chunk["text"], chunk["index"], chunk["done"], chunk["stream"]) == ("Once upon a time", 0, False, 1)
    assert (chunk["path"], chunk["step_attempt"], chunk["model"]) == ("agent#1/agent.llm", 2, "m")
    stream.text(" there")
    stream.close("ok", "stop")
    (last,) = drain(p)
    assert (last["text"], last["index"], last["done"], last["outcome"], last["finish_reason"]) == \
        (" there", 1, True, "ok", "stop")
    stream.text("late")  # after close: ignored
    await asyncio.sleep(0.08)
    assert drain(p) == []


async def test_a_chunk_holds_one_kind_of_text_and_streams_are_numbered() -> None:
    p = publisher()
    env = task()
    listener = p.listener(env, env.payload)  # type: ignore[arg-type]
    first = listener.open(provider="local", model="m")
    first.text("thinking")
    first.tool("search", '{"q":')
    first.tool("search", ' "kafka"}')
    first.close("ok", "tool_calls")
    chunks = drain(p)
    # The last chunk carries what was still gathered when the stream closed.
    assert [(c["tool"], c["text"], c["done"]) for c in chunks] == [
        (None, "thinking", False), ("search", '{"q": "kafka"}', True)]
    second = listener.open(provider="local", model="backup")
    second.close("server_error", None)
    (failed,) = drain(p)
    assert (failed["stream"], failed["index"], failed["outcome"], failed["text"]) == (2, 0, "server_error", "")
    # Every chunk of one execution shares its id prefix; ids are unique.
    ids = [c["id"] for c in chunks] + [failed["id"]]
    assert len(set(ids)) == len(ids) and len({c["execution"] for c in chunks}) == 1


async def test_a_big_delta_is_split_at_the_chunk_limit() -> None:
    p = publisher()
    env = task()
    stream = p.listener(env, env.payload).open(provider="local", model="m")  # type: ignore[arg-type]
    stream.text("x" * (2 * MAX_CHUNK_CHARS + 10))
    stream.close("ok", "length")
    sizes = [len(c["text"]) for c in drain(p)]
    assert sizes == [MAX_CHUNK_CHARS, MAX_CHUNK_CHARS, 10]


async def test_a_full_queue_drops_and_counts_and_a_long_task_id_still_fits() -> None:
    p = publisher(max_queued=2)
    env = task(task_id="r" * MAX_ID_CHARS)
    listener = p.listener(env, env.payload)  # type: ignore[arg-type]
    for _ in range(4):
        listener.open(provider="local", model="m").close("ok", None)
    assert p.dropped == 2 and len(chunks := drain(p)) == 2
    assert all(len(c["id"]) <= MAX_ID_CHARS for c in chunks)


class AnsweringLater:
    """A producer whose deliveries the test settles: ok, refused, or not yet."""

    def __init__(self) -> None:
        self.deliveries: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.deliveries.append(asyncio.get_running_loop().create_future())
        return self.deliveries[-1]


async def test_the_sender_counts_deliveries_as_the_broker_answers() -> None:
    producer = AnsweringLater()
    p = TokenPublisher(cast(Any, producer), "t.tokens")
    p.start()
    for i in range(3):
        p.put(b"run-1", b"chunk %d" % i)
    await asyncio.wait_for(p._queue.join(), 1)
    first, second, third = producer.deliveries
    first.set_result(None)
    second.set_exception(RuntimeError("refused"))

    def counts() -> dict[str, float]:
        return {name: value for _, name, _, _, value in p.metric_values()}

    assert counts() == {"tickflow_tokens_records_sent": 1, "tickflow_tokens_records_dropped": 0,
                        "tickflow_tokens_records_failed": 1}
    third.set_result(None)
    await p.stop()
    assert (p.sent, p.failed) == (2, 1)
