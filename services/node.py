"""Run tickflow's roles — engine, step workers, projector, API — in one process or one role per process.

Each role is an independent consumer group, so the same code scales out by starting more processes:
partitions are the unit of parallelism.

A role whose loop fails (an error its own retries did not absorb: the broker gone for longer than the clients'
timeouts, a bug) is restarted by its node — stopped, built anew, started — after a backoff that doubles from
``RESTART_FIRST_S`` to ``RESTART_MAX_S`` while failures keep coming. A restarted role resumes from its committed
offsets, as after a crash. Restarts count in ``/stats`` and ``tickflow_role_restarts_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiokafka import AIOKafkaProducer

import tickflow.metrics as metrics
import tickflow.tracing as tracing
from tickflow.events.topics import TopicNames
from tickflow.runtime.blobstores import open_blob_store
from tickflow.runtime.eager import EagerDispatch
from tickflow.runtime.engine import Engine
from tickflow.runtime.kafka import ensure_topics, new_producer
from tickflow.runtime.triggers import TriggerRole
from tickflow.runtime.worker import StepWorker
from tickflow.settings import Settings
from tickflow.workflow import Registry

if TYPE_CHECKING:
    import uvicorn

    from tickflow.api.deps import ApiDeps
    from tickflow.projections.projector import Projector

__all__ = [
    "ALL_ROLES",
    "GC_THRESHOLDS",
    "RESTART_FIRST_S",
    "RESTART_MAX_S",
    "Node",
    "Role",
    "RoleFailures",
    "release_free_memory",
    "serve",
    "tune_gc",
    "with_app_llm_config",
]

log = logging.getLogger("tickflow")
ALL_ROLES = frozenset({"engine", "worker", "projector", "api", "trigger"})
#: Backoff before restarting a failed role: doubling from the first, capped; reset after a quiet minute.
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
RESTART_QUIET_S = 60.0


class Role(metrics.MetricsSource, Protocol):
    """What a node needs of each role it runs (``Engine``, ``StepWorker``, ``TriggerRole``, ``Projector``): it
    starts and stops each one, watches the task of its loop (None until started) to restart the role when that task
    ends, and reads its counters and levels for /metrics (``metric_values``)."""

    @property
    def task(self) -> asyncio.Task[None] | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


#: A role of a kind known to the caller (``Node._started`` returns the role it was given, started).
AnyRole = TypeVar("AnyRole", bound=Role)


@dataclass
class RoleFailures:
    """How often a role failed and was restarted, and why it last failed (shown in ``/stats``)."""

    restarts: int = 0
    in_a_row: int = 0
    last_error: str = ""
    last_failed_at_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"restarts": self.restarts, "last_error": self.last_error, "last_failed_at_ms": self.last_failed_at_ms}


#: CPython's collection thresholds in a role process (its defaults: 700, 10, 10); see ``tune_gc``.
GC_THRESHOLDS = (10_000, 10, 100)


def tune_gc() -> None:
    """Make CPython's cyclic collector cheap for a process that keeps a large, long-lived, acyclic heap.

    The engine keeps each run's state for minutes after its end (a tick run's for 600 s: ~600,000 states at 10,000
    stacks ticking every 10 s), and every full collection walks that whole heap looking for cycles it almost never
    holds. Measured in the stacks bench (``python -m tests.bench.stacks --stacks 10000 --engines 2``): full
    collections every ~1.6 s, each longer as the state grew, took 27 % of each process's time by minute 5 — the CPU
    per tick that grew with the state kept. So what exists once the roles have started (modules, schemas, settings:
    never garbage) is frozen out of collection (``gc.freeze``), the young generation is collected after 10,000 net
    allocations instead of 700 (fewer short-lived objects survive into the old generations), and a full collection
    waits for 100 middle ones instead of 10 (and still for CPython's rule that a quarter of the old heap be new).
    Cyclic garbage is still collected, later; reference counting frees everything else at once, as before.
    ``serve`` (``tickflow up``) calls it; ``TICKFLOW_GC_TUNING=false`` keeps CPython's defaults. Never in a process
    that runs other things (a test, an app embedding a ``Node``): the freeze would keep their garbage for good.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


#: glibc's ``malloc_trim``, when this process's C library has one (None elsewhere: musl, macOS).
_MALLOC_TRIM: Callable[[int], int] | None = None
with contextlib.suppress(OSError, AttributeError):
    _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim


def release_free_memory() -> bool:
    """Hand the free pages inside the C heap back to the system (glibc's ``malloc_trim(0)``); False where there is
    no glibc.

    glibc keeps what a peak freed (a snapshot round's records, a big fetch) inside its heap, and only the heap's top
    is ever returned by itself: a long-running role's RSS then climbs in steps that are not memory in use. Measured in
    the stacks bench (``python -m tests.bench.stacks --stacks 10000 --engines 2 --duration 2400`` with
    ``--memory-dump-kind allocator``): once the retention windows were full, Python's own blocks grew ~0.4 MiB a minute
    and levelled off, while glibc held 22 to 47 MiB free inside its heap, which was most of the RSS still gained.
    ``serve`` calls it every ``memory_trim_interval_s``. It walks the heap with the loop waiting: 7 ms for a 300 MiB
    heap with half of it freed in 1 KiB holes (measured here), less for an engine's ~60 MiB C heap.
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


async def _release_free_memory_every(interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        started = time.perf_counter()
        if not release_free_memory():
            return
        log.debug("released the C heap's free pages in %.1f ms", (time.perf_counter() - started) * 1000)


class Node:
    """The roles one process runs. ``wait`` returns (raising) as soon as any role fails."""

    def __init__(self, settings: Settings, registry: Registry, roles: frozenset[str] = ALL_ROLES) -> None:
        unknown = set(roles) - ALL_ROLES
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; choose from {sorted(ALL_ROLES)}")
        self.settings = with_app_llm_config(settings, registry)
        self.registry = registry
        self.roles = roles
        self.engine: Engine | None = None
        self.workers: list[StepWorker] = []
        #: The engine hands steps to this process's workers in memory (``runtime/eager.py``) when it runs both.
        self.eager = (
            EagerDispatch() if settings.eager_dispatch and {"engine", "worker"} <= roles else None
        )
        self.projector: Projector | None = None
        self.triggers: TriggerRole | None = None
        #: The projection store, opened by ``start`` when this node runs the projector or the API. It is a
        #: ``ClickHouseStore``, but ``open_store`` promises only the ``ProjectionStore`` protocol, and the retention
        #: loop, the demo and tests use its SQL too: so it stays untyped here.
        self.store: Any = None
        self._api_server: uvicorn.Server | None = None
        self._api_task: asyncio.Task[None] | None = None
        self._api_producer: AIOKafkaProducer | None = None
        self._api_deps: ApiDeps | None = None
        self.failures: dict[str, RoleFailures] = {}
        self._stopping = False
        self._retention_task: asyncio.Task[None] | None = None
        self._retention_stop = asyncio.Event()

    @property
    def topics(self) -> TopicNames:
        return self.settings.topics

    async def start(self) -> None:
        s = self.settings
        tracing.configure(f"tickflow-{'-'.join(sorted(self.roles))}")  # OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
        await ensure_topics(
            s.kafka, s.topics, s.pools, s.log_retention_ms, tokens_retention_ms=s.tokens_retention_ms,
            replication=s.replication_factor, min_insync=s.min_insync_replicas,
        )
        if "projector" in self.roles or "api" in self.roles:
            from tickflow.projections.store import open_store

            s.chdb_path.parent.mkdir(parents=True, exist_ok=True)
            self.store = await asyncio.to_thread(
                open_store,
                path=None if s.clickhouse_url else str(s.chdb_path),
                url=s.clickhouse_url,
                database=s.clickhouse_database,
            )
            if "projector" in self.roles and s.clickhouse_ttl_days is not None:
                self._retention_task = asyncio.create_task(
                    self._retention_loop(s.clickhouse_ttl_days, s.retention_interval_s), name="tickflow-retention"
                )
        if "engine" in self.roles:
            self.engine = await self._started(self._new_engine())
        if "worker" in self.roles:
            for pool in s.pools:
                self.workers.append(await self._started(self._new_worker(pool)))
        if "trigger" in self.roles and self.registry.triggers:
            self.triggers = await self._started(self._new_triggers())
        if "projector" in self.roles:
            self.projector = await self._started(self._new_projector())
        started: list[Role | None] = [self.engine, *self.workers, self.triggers, self.projector]
        for role in started:
            if role is not None:
                metrics.track(role)
        if "api" in self.roles:
            await self._start_api()  # serves /metrics itself
        elif s.metrics_port is not None:
            metrics.serve_metrics(s.api_host, s.metrics_port)

    def _build(self, name: str) -> Role:
        """A new, unstarted role by its name: ``engine``, ``worker:<pool>``, ``trigger`` or ``projector``."""
        if name == "engine":
            return self._new_engine()
        if name.startswith("worker:"):
            return self._new_worker(name.removeprefix("worker:"))
        if name == "trigger":
            return self._new_triggers()
        return self._new_projector()

    def _new_engine(self) -> Engine:
        return Engine(self.settings, self.registry, eager=self.eager)

    def _new_worker(self, pool: str) -> StepWorker:
        return StepWorker(self.settings, self.registry, pool)

    def _new_triggers(self) -> TriggerRole:
        return TriggerRole(self.settings, self.registry)

    def _new_projector(self) -> Projector:
        from tickflow.projections.projector import Projector

        s = self.settings
        return Projector(
            self.store,
            kafka=s.kafka,
            events_topic=s.topics.events,
            group_id=s.topics.projector_group,
            dead_letter_topic=s.topics.dead_letter,
            batch_ms=s.projector_batch_ms,
        )

    async def _started(self, role: AnyRole) -> AnyRole:
        await role.start()
        self._attach(role)
        return role

    def _attach(self, role: Role) -> None:
        if self.eager is not None and isinstance(role, StepWorker):
            self.eager.attach(role)  # replaces a worker of the same pool that it restarts

    def _running(self) -> dict[str, Role]:
        """The roles this node runs now, by name."""
        named: dict[str, Role | None] = {"engine": self.engine, "trigger": self.triggers, "projector": self.projector}
        named.update({f"worker:{w.pool}": w for w in self.workers})
        return {name: role for name, role in named.items() if role is not None}

    def _replace(self, name: str, role: Role) -> None:
        """Put the restarted ``role`` where the role ``name`` was (the projector's class is loaded only by a node
        that runs one, so it is looked up last)."""
        if isinstance(role, Engine):
            self.engine = role
        elif isinstance(role, TriggerRole):
            self.triggers = role
        elif isinstance(role, StepWorker):
            self.workers = [role if f"worker:{w.pool}" == name else w for w in self.workers]
        else:
            from tickflow.projections.projector import Projector

            assert isinstance(role, Projector), f"role {name} is of no kind a node runs: {role!r}"
            self.projector = role
        if self._api_deps is not None:  # the API reads the engine (verify) and the projector (rebuild swaps)
            self._api_deps.engine, self._api_deps.projector = self.engine, self.projector
            self._api_deps.metrics = self.projector.metrics if self.projector is not None else None

    async def _restart(self, name: str, failed: asyncio.Task[None]) -> None:
        """Stop the failed role, wait out the backoff, start a new one in its place (retrying until it starts)."""
        record = self.failures.setdefault(name, RoleFailures())
        old = self._running()[name]
        metrics.untrack(old)
        with contextlib.suppress(Exception):
            await old.stop()
        error: BaseException | None = None if failed.cancelled() else failed.exception()
        while True:
            now = time.time()
            if now - record.last_failed_at_ms / 1000 > RESTART_QUIET_S:
                record.in_a_row = 0
            record.in_a_row += 1
            record.last_error = f"{type(error).__name__}: {error}"[:1_000] if error else "its loop ended"
            record.last_failed_at_ms = int(now * 1000)
            delay = min(RESTART_FIRST_S * 2 ** (record.in_a_row - 1), RESTART_MAX_S)
            log.error("role %s failed (%s); restarting it in %.1f s", name, record.last_error, delay,
                      exc_info=error)
            await asyncio.sleep(delay)
            role = self._build(name)
            try:
                await role.start()
            except asyncio.CancelledError:  # the node is stopping: leave nothing half started behind
                with contextlib.suppress(Exception):
                    await role.stop()
                raise
            except Exception as exc:
                error = exc
                with contextlib.suppress(Exception):
                    await role.stop()
                continue
            record.restarts += 1
            self._attach(role)
            metrics.ROLE_RESTARTS.labels(name).inc()
            self._replace(name, role)
            metrics.track(role)
            return

    async def _start_api(self) -> None:
        import uvicorn

        from tickflow.api.app import create_api
        from tickflow.api.guards import allowed_hosts, check_bind

        s = self.settings
        check_bind(s.api_host, s.api_token)
        self._api_producer = new_producer(s.kafka, linger_ms=0)
        await self._api_producer.start()
        app = create_api(
            store=self.store,
            producer=self._api_producer,
            topics=s.topics,
            workflows=set(self.registry.specs) if "engine" in self.roles else None,
            agent_workflows=self.registry.agent_workflows(),
            token=s.api_token,
            metrics=self.projector.metrics if self.projector else None,
            blobs=open_blob_store(s),
            offload_bytes=s.offload_bytes,
            max_body_bytes=s.api_max_body_bytes,
            kafka=s.kafka,
            engine=self.engine,
            projector=self.projector,  # a rebuild pauses it to swap its database in
            hosts=allowed_hosts(s.api_host, s.api_allowed_hosts),
            trusted_origins=s.api_trusted_origins,
            max_json_values=s.api_max_json_values,
            body_timeout_s=s.api_body_timeout_s,
            session_ttl_s=s.api_session_ttl_s,
            sql_concurrency=s.api_sql_concurrency,
            sql_url=s.clickhouse_sql_url,
            streams_per_client=s.api_streams_per_client,
        )
        self._api_deps = app.state.deps
        self._api_deps.role_failures = lambda: {name: f.as_dict() for name, f in self.failures.items()}
        # limit_concurrency answers 503 beyond it (connections + requests); timeout_keep_alive closes idle
        # connections; h11 refuses headers bigger than its 16 KiB default; the gate bounds each body's read time.
        config = uvicorn.Config(
            app, host=s.api_host, port=s.api_port, log_level="warning", lifespan="off",
            limit_concurrency=s.api_max_concurrency, timeout_keep_alive=5, timeout_graceful_shutdown=5,
        )
        server = self._api_server = uvicorn.Server(config)
        self._api_task = asyncio.create_task(server.serve(), name="tickflow-api")
        for _ in range(100):
            if server.started:
                return
            if self._api_task.done():
                self._api_task.result()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the API did not start on {s.api_host}:{s.api_port}")

    async def wait(self) -> None:
        """Supervise the roles until the API server ends (its error, if any, propagates): a role whose loop ends
        is restarted (see the module docstring). Without an API, run until cancelled."""
        while True:
            watched = {role.task: name for name, role in self._running().items() if role.task is not None}
            if self._api_task is not None:
                watched[self._api_task] = "api"
            if not watched:
                await asyncio.Event().wait()
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if watched[task] == "api":
                    task.result()
                    return
                if task.cancelled() or self._stopping:  # stopped on purpose: nothing to restart
                    return
                await self._restart(watched[task], task)

    async def _retention_loop(self, ttl_days: int, every_s: float) -> None:
        """Expire the runs that finished ``ttl_days`` ago from every ClickHouse table, now and every ``every_s``
        (``projections.retention``). Stopped between two passes, never mid-delete: ``stop`` awaits it before the
        store is closed."""
        from tickflow.projections.retention import expire

        while not self._retention_stop.is_set():
            try:
                removed = await asyncio.to_thread(expire, self.store, ttl_days, int(time.time() * 1000))
                if removed:
                    log.info("retention: %d runs finished over %d days ago left ClickHouse", removed, ttl_days)
            except Exception:
                log.exception("retention pass failed; the next one (in %.0f s) tries again", every_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retention_stop.wait(), every_s)

    async def stop(self) -> None:
        self._stopping = True  # a role's loop that ends from here on ends on purpose
        if self._retention_task is not None:
            self._retention_stop.set()
            await self._retention_task
        if self._api_server is not None:
            self._api_server.should_exit = True
            if self._api_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._api_task, 5)
        stopping: list[Role | None] = [self.triggers, self.projector, *self.workers, self.engine]
        for role in stopping:
            if role is not None:
                metrics.untrack(role)
                try:
                    await role.stop()
                except Exception:
                    log.exception("error while stopping %s", type(role).__name__)
        if self._api_producer is not None:
            await self._api_producer.stop()
        if self.store is not None:
            self.store.close()


def with_app_llm_config(settings: Settings, registry: Registry) -> Settings:
    """``settings`` using the app's own LLM configuration (``Registry.llm_config``) when none is configured:
    written to the state directory, where this process's workers load it."""
    if settings.llm_config is not None or registry.llm_config is None:
        return settings
    path = settings.state_dir / "llm" / f"{settings.prefix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(registry.llm_config, indent=2))
    return settings.with_(llm_config=path)


async def serve(settings: Settings, registry: Registry, roles: frozenset[str] = ALL_ROLES) -> None:
    """Run roles until SIGINT/SIGTERM (a failed role is restarted meanwhile) or until the API server fails."""
    node = Node(settings, registry, roles)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    if settings.gc_tuning:  # the process is ours alone: not in Node.start, which a test or an app may run in-process
        tune_gc()
    trimmer = (asyncio.create_task(_release_free_memory_every(settings.memory_trim_interval_s))
               if settings.memory_trim_interval_s > 0 else None)
    log.info("tickflow up: roles=%s prefix=%s kafka=%s", sorted(roles), settings.prefix, settings.kafka)
    waiter = asyncio.create_task(node.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if trimmer is not None:
            trimmer.cancel()
        if not waiter.done():  # stop supervising first, or the roles being stopped would be restarted
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        await node.stop()
    if waiter.done() and not waiter.cancelled():
        waiter.result()
