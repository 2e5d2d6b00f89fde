"""Service settings, read once from the environment (prefix ``FLOWCORE_``)."""

from __future__ import annotations

import os
import socket
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.engine import ExecutionConfig


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="FLOWCORE_", extra="ignore")

    database_url: str = Field(
        "sqlite+aiosqlite:///./flowcore.db",
        description="postgresql+asyncpg://... or sqlite+aiosqlite:///path (the embedded default)",
    )
    redis_url: SecretStr | None = Field(
        None,
        description="redis://host:6379/0: shared cache, breakers, live events and wake-ups "
        "across replicas; without it the in-process implementations serve",
    )
    redis_pool_size: int = Field(50, ge=2, description="Connections in the Redis pool.")
    redis_timeout_seconds: float = Field(
        0.5, gt=0, description="Every Redis call's timeout; past it Redis counts as down."
    )
    redis_retry_seconds: float = Field(
        1.0, gt=0, description="While Redis is down, how often it is probed."
    )
    redis_prefix: str = Field("flowcore", min_length=1, description="Key and channel prefix.")
    redis_wakeups: bool | None = Field(
        None,
        description="Wake idle dispatchers over Redis too. Unset: only where the database "
        "has no LISTEN/NOTIFY (SQLite); true: also on Postgres (e.g. behind a "
        "transaction-pooling proxy, where LISTEN does not work).",
    )
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(10, ge=0)

    host: str = "127.0.0.1"
    port: int = 8000
    replica_id: str = Field(default_factory=_default_replica_id)
    worker_processes: int = Field(
        1,
        ge=1,
        description="Set by `flowcore serve --workers N`: each worker then leases runs as "
        "'<replica_id>-<pid>', so workers of one replica never share a lease owner.",
    )

    # the dispatcher
    dispatcher_enabled: bool = True
    max_concurrent_runs: int = Field(50, ge=1, description="Runs one replica executes at once.")
    lease_seconds: float = Field(15.0, gt=0, description="A claimed run's lease.")
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often leases are extended.")
    poll_seconds: float = Field(
        2.0, gt=0, description="Idle dispatcher poll (wake-ups normally come by NOTIFY)."
    )
    event_flush_seconds: float = Field(
        0.1, gt=0, description="Events not yet committed with a checkpoint are flushed this often."
    )
    park_after_seconds: float = Field(
        1.0,
        gt=0,
        description="A run that has waited this long on nothing but top-level delays and "
        "signals (and is not due sooner) is checkpointed and leaves the replica, freeing "
        "its slot; it is claimed again when due or when a signal comes.",
    )
    commit_window_seconds: float = Field(
        0.02,
        ge=0,
        description="Group commit: a running run's checkpoints wait this long for the next "
        "ones to commit together (more runs per second, later live events; 0: at once).",
    )

    # requests
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Request body limit (413).")
    max_wait_seconds: float = Field(60.0, gt=0, description="Upper bound of ?wait=N.")
    sse_heartbeat_seconds: float = Field(15.0, gt=0)

    # metrics
    metrics_workflow_labels: int = Field(
        50,
        ge=0,
        description="Bound of the workflow_id label of the run metrics: the first N distinct "
        "workflow ids a process sees get their own label value, every other id is counted "
        "under 'other'; 0: no per-workflow labels, every run is counted under '_all'.",
    )
    metrics_breaker_labels: int = Field(
        50,
        ge=0,
        description="Bound of the `breaker` metric label: the first N breaker keys (a "
        "node's key, or an http node's target origin) get their own value, the rest "
        "`other`; 0: none (`_all`).",
    )

    #: execution defaults for every run (FLOWCORE_EXECUTION='{"max_parallel_nodes": 20}')
    execution: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def execution_config(self) -> ExecutionConfig:
        """Service execution defaults; checkpoints are always on in the service."""
        config = ExecutionConfig.model_validate(self.execution)
        config.enable_checkpoints = True
        return config
