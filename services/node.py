"""Run tickflow's roles — engine, step workers, projector, API — in one process or one role per process.

Each role is an independent consumer group, so the same code scales out by starting more processes:
partitions are the unit of parallelism.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import tickflow.metrics as metrics
import tickflow.tracing as tracing
from tickflow.events.topics import TopicNames
from tickflow.runtime.claimcheck import FileBlobStore
from tickflow.runtime.engine import Engine
from tickflow.runtime.kafka import ensure_topics, new_producer
from tickflow.runtime.triggers import TriggerRole
from tickflow.runtime.worker import StepWorker
from tickflow.settings import Settings
from tickflow.workflow import Registry

__all__ = ["ALL_ROLES", "Node", "serve"]

log = logging.getLogger("tickflow")
ALL_ROLES = frozenset({"engine", "worker", "projector", "api", "trigger"})


class Node:
    """The roles one process runs. ``wait`` returns (raising) as soon as any role fails."""

    def __init__(self, settings: Settings, registry: Registry, roles: frozenset[str] = ALL_ROLES) -> None:
        unknown = set(roles) - ALL_ROLES
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; choose from {sorted(ALL_ROLES)}")
        self.settings = settings
        self.registry = registry
        self.roles = roles
        self.engine: Engine | None = None
        self.workers: list[StepWorker] = []
        self.projector: Any = None
        self.triggers: TriggerRole | None = None
        self.store: Any = None
        self._api_server: Any = None
        self._api_task: asyncio.Task[None] | None = None
        self._api_producer: Any = None

    @property
    def topics(self) -> TopicNames:
        return self.settings.topics

    async def start(self) -> None:
        s = self.settings
        tracing.configure(f"tickflow-{'-'.join(sorted(self.roles))}")  # OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
        await ensure_topics(
            s.bootstrap, s.topics, s.pools, s.log_retention_ms, tokens_retention_ms=s.tokens_retention_ms,
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
                await asyncio.to_thread(self.store.set_ttl, s.clickhouse_ttl_days)
        if "engine" in self.roles:
            self.engine = Engine(s, self.registry)
            await self.engine.start()
        if "worker" in self.roles:
            for pool in s.pools:
                worker = StepWorker(s, self.registry, pool)
                await worker.start()
                self.workers.append(worker)
        if "trigger" in self.roles and self.registry.triggers:
            self.triggers = TriggerRole(s, self.registry)
            await self.triggers.start()
        if "projector" in self.roles:
            from tickflow.projections.projector import Projector

            self.projector = Projector(
                self.store,
                bootstrap=s.bootstrap,
                events_topic=s.topics.events,
                group_id=s.topics.projector_group,
                dead_letter_topic=s.topics.dead_letter,
                batch_ms=s.projector_batch_ms,
            )
            await self.projector.start()
        for role in (self.engine, *self.workers, self.triggers, self.projector):
            if role is not None:
                metrics.track(role)
        if "api" in self.roles:
            await self._start_api()  # serves /metrics itself
        elif s.metrics_port is not None:
            metrics.serve_metrics(s.api_host, s.metrics_port)

    async def _start_api(self) -> None:
        import uvicorn

        from tickflow.api.app import create_api
        from tickflow.api.guards import allowed_hosts, check_bind

        s = self.settings
        check_bind(s.api_host, s.api_token)
        self._api_producer = new_producer(s.bootstrap, linger_ms=0)
        await self._api_producer.start()
        app = create_api(
            store=self.store,
            producer=self._api_producer,
            topics=s.topics,
            workflows=set(self.registry.specs) if "engine" in self.roles else None,
            token=s.api_token,
            metrics=self.projector.metrics if self.projector else None,
            blobs=FileBlobStore(s.blob_dir),
            offload_bytes=s.offload_bytes,
            max_body_bytes=s.api_max_body_bytes,
            bootstrap=s.bootstrap,
            engine=self.engine,
            projector=self.projector,  # a rebuild pauses it to swap its database in
            hosts=allowed_hosts(s.api_host, s.api_allowed_hosts),
        )
        config = uvicorn.Config(app, host=s.api_host, port=s.api_port, log_level="warning", lifespan="off")
        self._api_server = uvicorn.Server(config)
        self._api_server.install_signal_handlers = lambda: None  # the Node owns signals
        self._api_task = asyncio.create_task(self._api_server.serve(), name="tickflow-api")
        for _ in range(100):
            if self._api_server.started:
                return
            if self._api_task.done():
                self._api_task.result()
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the API did not start on {s.api_host}:{s.api_port}")

    def _tasks(self) -> list[asyncio.Task[Any]]:
        roles = [self.engine, *self.workers, self.projector, self.triggers]
        tasks = [r.task for r in roles if r is not None and r.task]
        if self._api_task is not None:
            tasks.append(self._api_task)
        return tasks

    async def wait(self) -> None:
        """Return when a role's loop ends; its exception (if any) propagates."""
        done, _ = await asyncio.wait(self._tasks(), return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def stop(self) -> None:
        if self._api_server is not None:
            self._api_server.should_exit = True
            if self._api_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._api_task, 5)
        for role in [self.triggers, self.projector, *self.workers, self.engine]:
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


async def serve(settings: Settings, registry: Registry, roles: frozenset[str] = ALL_ROLES) -> None:
    """Run roles until SIGINT/SIGTERM or until one of them fails."""
    node = Node(settings, registry, roles)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    log.info("tickflow up: roles=%s prefix=%s kafka=%s", sorted(roles), settings.prefix, settings.bootstrap)
    waiter = asyncio.create_task(node.wait())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        await node.stop()
    if waiter.done():
        waiter.result()
    else:
        waiter.cancel()
