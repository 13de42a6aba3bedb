"""The engine's input offsets per owned partition, and the one rule they keep: an offset becomes committable only
once the transaction of its partition's turn committed (or when the turn wrote nothing for that partition).

An input offset moves through three stages:

* **handled**: the loop decided the record in the current turn; its effects are in the partition's open
  transaction, whose outcome is not known yet. Never committed: a stop, a give-up or a revocation drops it, and the
  record is read again.
* **applied**: the turn's transaction committed. Its last record was the partition's ``__applied__`` note (the
  input offsets it applies, on the state topic, see ``runtime.snapshots.APPLIED_KEY``), so the note and the effects
  became visible together; recovery reads the note and resumes reading after it (``resume_at``).
* **committable**: the same offsets, handed to the consumer group's commit (for lag, and for inputs that wrote
  nothing, which carry no note).

Offsets are per input topic role (``commands``, ``results``): the note names roles, not topic names, so it stays
valid whatever the prefix.
"""

from __future__ import annotations

from aiokafka import TopicPartition

from tickflow.runtime.snapshots import APPLIED_KEY, encode_applied

__all__ = ["InputOffsets", "NoteRecord"]

#: (topic, value, key, partition) of an applied-offsets note, as ``PartitionWriter.commit`` takes it.
NoteRecord = tuple[str, bytes, bytes, int]


class InputOffsets:
    """Handled, applied and committable input offsets of the partitions one engine owns."""

    def __init__(self, commands_topic: str, results_topic: str, state_topic: str) -> None:
        self.commands_topic, self.results_topic, self.state_topic = commands_topic, results_topic, state_topic
        self._handled: dict[TopicPartition, int] = {}
        #: Offsets whose effects are committed: the only offsets ever committed to the consumer group.
        self.committable: dict[TopicPartition, int] = {}
        #: Per partition, per role: the offset up to which its committed transactions applied their inputs.
        self.applied: dict[int, dict[str, int]] = {}

    def inputs(self, partition: int) -> list[TopicPartition]:
        return [TopicPartition(self.commands_topic, partition), TopicPartition(self.results_topic, partition)]

    def role(self, tp: TopicPartition) -> str:
        return "commands" if tp.topic == self.commands_topic else "results"

    def handled(self, tp: TopicPartition, next_offset: int) -> None:
        """The turn decided ``tp``'s records up to ``next_offset`` (exclusive); nothing of it is durable yet."""
        self._handled[tp] = next_offset

    def partitions_handled(self) -> set[int]:
        return {tp.partition for tp in self._handled}

    def note(self, partition: int) -> NoteRecord | None:
        """The record that ends the partition's transaction, if the turn handled inputs of it."""
        handled = {self.role(tp): o for tp, o in self._handled.items() if tp.partition == partition}
        if not handled:
            return None
        offsets = {**self.applied.get(partition, {}), **handled}
        return self.state_topic, encode_applied(offsets), APPLIED_KEY, partition

    def committed(self, partition: int) -> None:
        """The partition's transaction committed (or the turn wrote nothing for it): its handled offsets are durable."""
        for tp in self.inputs(partition):
            offset = self._handled.pop(tp, None)
            if offset is not None:
                self.committable[tp] = offset
                self.applied.setdefault(partition, {})[self.role(tp)] = offset

    def recovered(self, partition: int, applied: dict[str, int]) -> None:
        """A rebuilt partition's applied offsets, as its last note on the state topic says."""
        self.applied[partition] = dict(applied)

    def resume_at(self, tp: TopicPartition, group_committed: int | None) -> int:
        """Where a rebuilt partition's input resumes: after every input a committed transaction applied, even where
        the group's offset lags (a crash between a transaction and the offset commit), or after the group's offset
        where it is ahead (inputs that changed nothing carry no note). 0: from the beginning."""
        return max(group_committed or 0, self.applied.get(tp.partition, {}).get(self.role(tp), 0))

    def drop(self, partition: int) -> None:
        """Forget a partition (given up, revoked): what it handled is never committed; it is read again."""
        for tp in self.inputs(partition):
            self._handled.pop(tp, None)
            self.committable.pop(tp, None)
        self.applied.pop(partition, None)
