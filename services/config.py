"""Settings, read once from the environment (``TICKFLOW_*``) with defaults that run on one laptop."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from events.topics import DEFAULT_PARTITIONS, DEFAULT_POOL, TopicNames

__all__ = ["Settings"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TICKFLOW_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Everything a tickflow process needs to know; see README "Configuration"."""

    bootstrap: str = "127.0.0.1:9092"
    prefix: str = "tickflow"
    partitions: int = DEFAULT_PARTITIONS
    pools: tuple[str, ...] = (DEFAULT_POOL,)
    state_dir: Path = field(default_factory=lambda: REPO_ROOT / ".tickflow")
    clickhouse_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8700
    api_token: str | None = None
    worker_concurrency: int = 16
    projector_batch_ms: int = 100
    commit_interval_ms: int = 200
    #: How often the engine snapshots changed state to the compacted state topic (0: never).
    snapshot_interval_s: float = 60.0
    #: How long the engine keeps a finished run's state (and so deduplicates a repeated start of its id).
    state_retention_s: float = 7 * 86_400
    #: … and of a stack's tick run, which only its stack ever starts (bounded by state_retention_s).
    tick_run_retention_s: float = 600.0
    #: retention.ms of the events topic when tickflow creates it; -1 keeps the log forever.
    log_retention_ms: int = -1
    #: ClickHouse drops events and finished runs this many days after they happened (None: keep forever).
    clickhouse_ttl_days: int | None = None
    #: Step inputs/outputs above this many bytes are stored out of band (claim-check) …
    offload_bytes: int = 256_000
    #: … and above this one they are refused with a clear error.
    max_payload_bytes: int = 64_000_000
    #: The LLM configuration file (``.toml``/``.json``, see ``services.llm``) agent steps use; None: the
    #: offline scripted models only (every answer labelled as not coming from a real LLM).
    llm_config: Path | None = None

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            bootstrap=_env("KAFKA_BOOTSTRAP", f"127.0.0.1:{_env('KAFKA_PORT', '9092')}"),
            prefix=_env("PREFIX", "tickflow"),
            partitions=int(_env("PARTITIONS", str(DEFAULT_PARTITIONS))),
            pools=tuple(p for p in _env("POOLS", DEFAULT_POOL).split(",") if p),
            state_dir=Path(_env("STATE_DIR", str(REPO_ROOT / ".tickflow"))),
            clickhouse_url=os.environ.get("TICKFLOW_CLICKHOUSE_URL") or None,
            api_host=_env("API_HOST", "127.0.0.1"),
            api_port=int(_env("API_PORT", "8700")),
            api_token=os.environ.get("TICKFLOW_API_TOKEN") or None,
            worker_concurrency=int(_env("WORKER_CONCURRENCY", "16")),
            projector_batch_ms=int(_env("PROJECTOR_BATCH_MS", "100")),
            commit_interval_ms=int(_env("COMMIT_INTERVAL_MS", "200")),
            state_retention_s=float(_env("STATE_RETENTION_S", str(7 * 86_400))),
            tick_run_retention_s=float(_env("TICK_RUN_RETENTION_S", "600")),
            snapshot_interval_s=float(_env("SNAPSHOT_INTERVAL_S", "60")),
            log_retention_ms=int(_env("LOG_RETENTION_MS", "-1")),
            clickhouse_ttl_days=int(os.environ["TICKFLOW_CLICKHOUSE_TTL_DAYS"])
            if os.environ.get("TICKFLOW_CLICKHOUSE_TTL_DAYS")
            else None,
            offload_bytes=int(_env("OFFLOAD_BYTES", "256000")),
            max_payload_bytes=int(_env("MAX_PAYLOAD_BYTES", "64000000")),
            llm_config=Path(os.environ["TICKFLOW_LLM_CONFIG"]) if os.environ.get("TICKFLOW_LLM_CONFIG") else None,
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def topics(self) -> TopicNames:
        return TopicNames(prefix=self.prefix, partitions=self.partitions)

    @property
    def chdb_path(self) -> Path:
        return self.state_dir / "clickhouse" / self.prefix

    @property
    def blob_dir(self) -> Path:
        """Where claim-checked payloads live (content-addressed files); must be shared by all processes."""
        return Path(os.environ.get("TICKFLOW_BLOB_DIR") or self.state_dir / "blobs" / self.prefix)

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"
