"""Settings in layers: defaults written here once, then the environment (``TICKFLOW_*``), then constructor arguments.

pydantic-settings gives that order and errors that name the field (``TICKFLOW_API_PORT: Input should be a valid
integer``). Nothing here depends on where the code is installed: local state (the broker's data, embedded ClickHouse,
claim-check blobs) defaults to ``.tickflow`` in the current directory, so an installed wheel behaves like a checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tickflow.events.connection import KafkaConnection, SaslMechanism, SecurityProtocol
from tickflow.events.topics import DEFAULT_PARTITIONS, DEFAULT_POOL, TopicNames

__all__ = ["Settings"]


def _env(name: str, field: str) -> AliasChoices:
    """Accept the field's own name as a constructor argument and ``TICKFLOW_<name>`` from the environment."""
    return AliasChoices(field, f"TICKFLOW_{name}")


class Settings(BaseSettings):
    """Everything a tickflow process needs to know.

    ``docs/reference/configuration.md`` lists each variable, generated from the ``#:`` comment above its field.
    """

    #: hide_input_in_errors: a validation error must not print the input it failed on, which holds the secrets.
    model_config = SettingsConfigDict(env_prefix="TICKFLOW_", frozen=True, extra="forbid", populate_by_name=True,
                                      hide_input_in_errors=True)

    #: Kafka bootstrap servers; default: the local broker on ``kafka_port``.
    bootstrap: str = Field(default="", validation_alias=_env("KAFKA_BOOTSTRAP", "bootstrap"))
    #: How clients reach Kafka: PLAINTEXT (the local broker), SSL, SASL_SSL, or SASL_PLAINTEXT on a trusted network.
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    #: SASL (with a SASL_* protocol): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    kafka_sasl_mechanism: SaslMechanism | None = None
    #: The SASL user.
    kafka_sasl_username: str | None = None
    #: The SASL user's password: a secret, in no log line, repr, error or record.
    kafka_sasl_password: SecretStr | None = Field(default=None, repr=False)
    #: TLS (with SSL or SASL_SSL): the CA bundle (PEM) that signed the brokers' certificates (unset: the system's).
    kafka_ssl_cafile: Path | None = None
    #: Mutual TLS: the client certificate (PEM).
    kafka_ssl_certfile: Path | None = None
    #: Mutual TLS: the client certificate's key (PEM).
    kafka_ssl_keyfile: Path | None = None
    #: Mutual TLS: the key's password (a secret, like the SASL password).
    kafka_ssl_key_password: SecretStr | None = Field(default=None, repr=False)
    #: Whether the brokers' certificates must name the host they are reached at (leave on).
    kafka_ssl_check_hostname: bool = True
    #: Port of the local broker ``tickflow broker start`` runs (its controller listens on port + 1).
    kafka_port: int = Field(default=9092, ge=1, le=65_535)
    #: Prefix of every topic and consumer group (``<prefix>.events``, ...) and of the ClickHouse database.
    prefix: str = Field(default="tickflow", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    #: Partitions of the keyed topics (commands, events, results, tasks, state); fixed once the topics exist.
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=10_000)
    #: The worker pools this process serves (comma-separated in the environment).
    pools: Annotated[tuple[str, ...], NoDecode] = (DEFAULT_POOL,)
    #: Local state: the local broker's data, embedded ClickHouse's data, claim-check blobs (default: ``.tickflow``
    #: in the current directory).
    state_dir: Path = Field(default_factory=lambda: Path.cwd() / ".tickflow")
    #: A ClickHouse server, e.g. ``http://user:pw@host:8123``; unset: embedded chDB under ``state_dir``.
    clickhouse_url: str | None = None
    #: On a ClickHouse server: the URL (with user and password) /sql connects as — a read-only user that
    #: ``tickflow sql create-reader`` creates. Unset on a server: /sql answers 501. Unused with embedded chDB.
    clickhouse_sql_url: str | None = Field(default=None, repr=False)
    #: Where the API listens; beyond loopback it refuses to start without ``api_token``.
    api_host: str = "127.0.0.1"
    #: The API's port (0: any free one).
    api_port: int = Field(default=8700, ge=0, le=65_535)
    #: When set, every route but /healthz requires ``Authorization: Bearer <token>`` (the dashboard: a session
    #: cookie signed with it). A secret: in no log line, repr or record.
    api_token: str | None = Field(default=None, repr=False)
    #: Host header values the API answers (comma-separated; unset: the loopback names for a loopback bind, any
    #: otherwise — see ``tickflow.api.guards``).
    api_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    #: The biggest request body the API reads (declared or chunked); a run input above ``offload_bytes`` travels
    #: on through the claim-check, so this bounds memory per request, not what a run may carry.
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1_024)
    #: JSON values a request body may hold (counted at C speed before parsing, which costs ~0.35 µs a value on
    #: the loop the engine shares): bounds what one request costs the node.
    api_max_json_values: int = Field(default=100_000, ge=100)
    #: Seconds a client has to send a request's whole body (a slow upload pins a socket and its buffer).
    api_body_timeout_s: float = Field(default=30.0, gt=0)
    #: Origins besides the API's own whose browser pages may send it state-changing requests (comma-separated,
    #: e.g. ``https://ops.example.com``); unset: none.
    api_trusted_origins: Annotated[tuple[str, ...], NoDecode] = ()
    #: Connections and requests the API serves at once; beyond it uvicorn answers 503 at once.
    api_max_concurrency: int = Field(default=256, ge=8)
    #: How long a dashboard session lasts after signing in.
    api_session_ttl_s: float = Field(default=12 * 3_600, ge=60)
    #: Analysts' /sql queries that run at once (each on a thread of the SQL pool); more wait their turn.
    api_sql_concurrency: int = Field(default=2, ge=1, le=64)
    #: Live streams (server-sent events) one client address may hold open at once.
    api_streams_per_client: int = Field(default=32, ge=1)
    #: Where a process without the API serves Prometheus' /metrics (unset: nowhere; the API process serves it on
    #: its own port). Give each process on a host its own.
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)
    #: Steps a worker runs at once, per pool (``tickflow pool-limit`` changes it at runtime).
    worker_concurrency: int = Field(default=16, ge=1)
    #: Hand a step to this process's worker of its pool in memory, when it has a free slot, instead of through the
    #: tasks and results topics (the events still go to the log first; see ``tickflow.runtime.eager``).
    eager_dispatch: bool = True
    #: How long an engine turn waits for a step handed over in memory to come back before it commits (a step that
    #: takes longer is decided in a later turn).
    eager_linger_ms: float = Field(default=2.0, ge=0, le=1_000)
    #: The longest an engine turn goes on deciding steps handed back in memory before it commits: what a client
    #: sees of those runs waits for that commit.
    eager_turn_ms: float = Field(default=50.0, ge=1, le=5_000)
    #: Tune CPython's cyclic collector for a role process's large, long-lived heap (``tickflow.node.tune_gc``).
    gc_tuning: bool = True
    #: Every this many seconds, a role process (``tickflow up``) hands the C heap's free pages back to the system
    #: (``tickflow.node.release_free_memory``); 0 turns it off.
    memory_trim_interval_s: float = Field(default=60.0, ge=0)
    #: How long the projector gathers events before one ClickHouse insert.
    projector_batch_ms: int = Field(default=100, ge=0)
    #: How often the engine and the workers commit their input offsets.
    commit_interval_ms: int = Field(default=200, ge=1)
    #: How long the broker waits for the engine's heartbeats before it gives the engine's partitions to another.
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    #: How long the transaction coordinator lets one of the engine's transactions stay open before aborting it (a
    #: turn lasts milliseconds; this bounds how long a dead engine's open transaction holds back readers).
    transaction_timeout_ms: int = Field(default=30_000, ge=1_000, le=900_000)
    #: How often the engine snapshots changed state to the compacted state topic (0: never).
    snapshot_interval_s: float = Field(default=60.0, ge=0)
    #: How long a finished run keeps its full state in the engine's memory before it shrinks to id, seq, status and
    #: times (a few hundred bytes; ``tickflow.core.state.shrink``), which answer late inputs the same way.
    finished_state_s: float = Field(default=60.0, ge=0)
    #: How long the engine keeps a finished run's state (and so deduplicates a repeated start of its id).
    state_retention_s: float = Field(default=7 * 86_400, ge=0)
    #: How long the engine keeps a finished stack tick run, which only its stack ever starts (bounded by
    #: state_retention_s).
    tick_run_retention_s: float = Field(default=600.0, ge=0)
    #: How long a finished run's id stays taken after its state expired (a marker of a few bytes per run).
    run_id_retention_s: float = Field(default=365 * 86_400, ge=0)
    #: retention.ms of the events topic when tickflow creates it; -1 keeps the log forever.
    log_retention_ms: int = Field(default=-1, ge=-1)
    #: Replication factor of the topics tickflow creates (None: 3 on a cluster of three brokers or more, else 1).
    replication_factor: int | None = Field(default=None, ge=1, le=10)
    #: min.insync.replicas of the topics tickflow creates (None: one less than the replication factor, at least 1).
    min_insync_replicas: int | None = Field(default=None, ge=1, le=10)
    #: retention.ms of the tokens topic (streamed LLM deltas, for watching a run live; the log keeps each reply).
    tokens_retention_ms: int = Field(default=6 * 3_600_000, ge=60_000)  # = runtime.kafka.TOKENS_RETENTION_MS
    #: A finished run leaves every ClickHouse table this many days after it finished (None: keep forever); a run
    #: still in flight never does. The projector role applies it every ``retention_interval_s``
    #: (``tickflow.projections.retention``).
    clickhouse_ttl_days: int | None = Field(default=None, ge=1)
    #: How often the projector applies ``clickhouse_ttl_days``.
    retention_interval_s: float = Field(default=3_600.0, gt=0)
    #: Step inputs/outputs above this many bytes are stored out of band (claim-check).
    offload_bytes: int = Field(default=256_000, ge=1)
    #: Step inputs/outputs above this many bytes are refused (the step fails with ``PayloadTooLarge``).
    max_payload_bytes: int = Field(default=64_000_000, ge=1)
    #: Where claim-checked payloads live; every process must see the same directory (None: under ``state_dir``).
    blob_root: Path | None = Field(default=None, validation_alias=_env("BLOB_DIR", "blob_root"))
    #: The blob store for roles on several machines: ``s3://bucket/prefix`` (an S3-compatible object store; needs
    #: ``tickflow[s3]``; credentials from the standard AWS environment only) or ``file:///path``. None: ``blob_dir``.
    blob_url: str | None = None
    #: The S3 API's address when it is not AWS's (MinIO, Ceph, R2, …), e.g. ``http://minio:9000``.
    blob_s3_endpoint: str | None = None
    #: The S3 region of the blob store.
    blob_s3_region: str | None = None
    #: The blob sweep never deletes a blob put less than this long ago: a blob is written before the record that
    #: references it commits (a worker's result, a snapshot round, an API start), and must outlive that gap.
    blob_grace_s: float = Field(default=3_600.0, ge=0)
    #: The LLM configuration file (``.toml``/``.json``, see ``tickflow.llm``) agent steps use; None: the
    #: offline scripted models only (every answer labelled as not coming from a real LLM).
    llm_config: Path | None = None

    @field_validator("pools", "api_allowed_hosts", "api_trusted_origins", mode="before")
    @classmethod
    def _split_pools(cls, value: Any) -> Any:  # also TICKFLOW_API_ALLOWED_HOSTS=api.example.com,127.0.0.1
        if isinstance(value, str):  # TICKFLOW_POOLS=default,llm
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("clickhouse_url", "clickhouse_sql_url", "api_token", "llm_config", "clickhouse_ttl_days",
                     "blob_root", "blob_url", "blob_s3_endpoint", "blob_s3_region",
                     "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password",
                     "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _default_bootstrap(self) -> Settings:
        if not self.bootstrap:  # frozen: set once, while the model is being built
            object.__setattr__(self, "bootstrap", f"127.0.0.1:{self.kafka_port}")
        try:
            self.kafka  # noqa: B018 - validate the Kafka security settings together, at start
        except ValueError as exc:
            raise ValueError(f"Kafka security settings (TICKFLOW_KAFKA_SECURITY_PROTOCOL, TICKFLOW_KAFKA_SASL_*, "
                             f"TICKFLOW_KAFKA_SSL_*): {exc}") from None
        return self

    @property
    def kafka(self) -> KafkaConnection:
        """How every Kafka client of this process connects (address and security)."""
        def secret(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        def path(value: Path | None) -> str | None:
            return str(value) if value is not None else None

        return KafkaConnection(
            self.bootstrap,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=secret(self.kafka_sasl_password),
            ssl_cafile=path(self.kafka_ssl_cafile),
            ssl_certfile=path(self.kafka_ssl_certfile),
            ssl_keyfile=path(self.kafka_ssl_keyfile),
            ssl_key_password=secret(self.kafka_ssl_key_password),
            ssl_check_hostname=self.kafka_ssl_check_hostname,
        )

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated (the environment is not read again)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @property
    def topics(self) -> TopicNames:
        return TopicNames(prefix=self.prefix, partitions=self.partitions)

    @property
    def clickhouse_database(self) -> str:
        """tickflow's own ClickHouse database: the prefix, spelled as an identifier."""
        return self.prefix.replace("-", "_").replace(".", "_")

    @property
    def chdb_path(self) -> Path:
        return self.state_dir / "clickhouse" / self.prefix

    @property
    def blob_dir(self) -> Path:
        """Where claim-checked payloads live (content-addressed files); must be shared by all processes."""
        return self.blob_root or self.state_dir / "blobs" / self.prefix

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"
