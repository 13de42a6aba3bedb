"""Topic names, partition counts, consumer groups and partition keys — defined once.

Every record that touches one run (its commands, its events, its tasks and its workers' results) is keyed by
the run id, and all of those topics share one partition count, so one engine partition owns a run end to end.
Never change a topic's partition count in place: the key → partition mapping would move runs between owners.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PARTITIONS",
    "DEFAULT_POOL",
    "RUN_ID_PATTERN",
    "SLOT_PREFIX",
    "TopicNames",
    "is_run_id",
    "partition_key",
]

DEFAULT_PARTITIONS = 8
DEFAULT_POOL = "default"


#: Keys of per-key concurrency entities on the run topics (``slot:<workflow>:<key>``); they are not runs.
SLOT_PREFIX = "slot:"


#: What a run id may hold: it appears in URLs, in derived ids (``<run>/<seq>``, ``<parent>:<path>``) and in
#: idempotency keys built with ``/``, so ``/`` and anything a URL would escape are out. Users' own ids (API, SDK)
#: get at most 200 characters, leaving room for the ids of their child runs; the envelope holds 256.
RUN_ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
_RUN_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,256}")


def is_run_id(key: str) -> bool:
    """Whether ``key`` can name a run (checked where a run is created, whoever sent the command)."""
    return _RUN_ID.fullmatch(key) is not None


def partition_key(run_id: str) -> bytes:
    """The Kafka key of every record about a run: its id, UTF-8 encoded (murmur2-partitioned by producers)."""
    return run_id.encode()


@dataclass(frozen=True, slots=True)
class TopicNames:
    """All topic and consumer-group names for one deployment, derived from a prefix.

    Tests give every case its own prefix so that they never share a topic or a consumer group.
    """

    prefix: str = "tickflow"
    partitions: int = DEFAULT_PARTITIONS

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def events(self) -> str:
        """The log: retained forever by default, written only by the engine, one writer per key."""
        return f"{self.prefix}.events"

    @property
    def results(self) -> str:
        return f"{self.prefix}.results"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def state(self) -> str:
        """Snapshots of the engine's state (compacted; a cache of the events topic's fold)."""
        return f"{self.prefix}.state"

    @property
    def control(self) -> str:
        """Runtime settings broadcast to every worker (pool limits); compacted, keyed by pool."""
        return f"{self.prefix}.control"

    @property
    def tokens(self) -> str:
        """Deltas of streamed LLM replies, keyed by run id, kept for hours only: for watching, never the truth."""
        return f"{self.prefix}.tokens"

    def tasks(self, pool: str = DEFAULT_POOL) -> str:
        return f"{self.prefix}.tasks.{pool}"

    @property
    def engine_group(self) -> str:
        return f"{self.prefix}.engine"

    def worker_group(self, pool: str = DEFAULT_POOL) -> str:
        return f"{self.prefix}.worker.{pool}"

    @property
    def projector_group(self) -> str:
        return f"{self.prefix}.projector"

    def keyed_topics(self, pools: tuple[str, ...] = (DEFAULT_POOL,)) -> list[str]:
        """Topics that must be co-partitioned (same partition count, keyed by run id)."""
        return [self.commands, self.events, self.results, *(self.tasks(p) for p in pools)]

    def all_topics(self, pools: tuple[str, ...] = (DEFAULT_POOL,)) -> list[str]:
        return [*self.keyed_topics(pools), self.state, self.dead_letter, self.control, self.tokens]
