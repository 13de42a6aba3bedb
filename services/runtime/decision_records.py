"""What one engine decision writes, encoded: its events, then the messages they imply, as Kafka records.

Every record of a decision is encoded before any is sent, so a decision that cannot be recorded whole (an output too
big for the log, a value nested too deep: ``InvalidRecord``) writes nothing, and the engine refuses its input
instead. A traced decision's records all name its span. Tasks of a pool this process's workers serve are also
offered in memory (eager dispatch, ``runtime/eager.py``), by their index among the decision's records.
"""

from __future__ import annotations

from tickflow.core.decider import Decision, Outbound, effects, recovery_effects
from tickflow.events.codec import encode
from tickflow.events.envelope import Envelope
from tickflow.events.topics import DEFAULT_POOL, TopicNames
from tickflow.runtime.decision_traces import DecisionTraces
from tickflow.runtime.eager import EagerDispatch

__all__ = ["DecisionRecords", "Local", "Record"]

#: An encoded record: (topic, value, key).
Record = tuple[str, bytes, bytes]
#: Tasks of a decision a local worker may take in memory, by their record's index: (pool, task envelope).
Local = dict[int, tuple[str, Envelope]]


class DecisionRecords:
    """Encodes the engine's decisions into records for its topics (see the module docstring)."""

    def __init__(self, topics: TopicNames, traces: DecisionTraces, eager: EagerDispatch | None) -> None:
        self.topics = topics
        self.traces = traces
        self.eager = eager

    @staticmethod
    def outbound(decision: Decision, now: int, recovering: bool) -> tuple[list[Outbound], int]:
        """The messages a run decision sends (tasks, commands); with ``recovering``, also those a recovery owes
        (``recovery_effects``: work in flight when the partition was rebuilt) that the decision does not send
        already. And how many of those a recovery sends again."""
        outs = effects(decision)
        if not recovering:
            return outs, 0
        sent = {(o.topic, o.envelope.id) for o in outs}  # recovery re-sends may repeat what the decision just sent
        again = [o for o in recovery_effects(decision.state, now) if (o.topic, o.envelope.id) not in sent]
        return outs + again, len(again)

    def of_run(self, decision: Decision, outs: list[Outbound]) -> tuple[list[Record], Local]:
        """A run decision's records: its events, then its messages ``outs`` (``outbound``); and, by record index,
        the tasks a worker of this process may take in memory instead (see ``Engine._publish``)."""
        messages = [(self._topic_of(out), out.envelope) for out in outs]
        records = self.encoded(decision.events, messages)
        local: Local = {}
        if self.eager is not None:
            first = len(decision.events)
            for i, out in enumerate(outs):
                if out.topic == "tasks" and self.eager.serves(pool := _pool_of(out)):
                    local[first + i] = (pool, self.traced(out.envelope))
        return records, local

    def encoded(self, events: list[Envelope], messages: list[tuple[str, Envelope]]) -> list[Record]:
        """Every record of a decision as (topic, value, key), or InvalidRecord if any of them cannot be written."""
        if self.traces.current is not None:  # a traced decision: each record names its span
            events = [self.traced(e) for e in events]
            messages = [(t, self.traced(m)) for t, m in messages]
        out = [(self.topics.events, encode(event), event.key.encode()) for event in events]
        out += [(topic, encode(message), message.key.encode()) for topic, message in messages]
        return out

    def traced(self, envelope: Envelope) -> Envelope:
        """``envelope`` in the span of the decision being made, if it is traced."""
        trace = self.traces.current
        return envelope if trace is None else envelope.model_copy(update={"trace_parent": trace})

    def _topic_of(self, out: Outbound) -> str:
        return self.topics.tasks(_pool_of(out)) if out.topic == "tasks" else self.topics.commands


def _pool_of(out: Outbound) -> str:
    return out.pool or DEFAULT_POOL
