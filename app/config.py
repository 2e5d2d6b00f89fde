"""Service settings, read once from the environment (prefix ``FLOWCORE_``)."""

from __future__ import annotations

import os
import socket
from ipaddress import ip_address
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine import ExecutionConfig

#: the embedded quickstart's database: with it, on loopback, auth defaults to disabled
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./flowcore.db"

#: ExecutionConfig knobs that FLOWCORE_EXECUTION may not hold, and what the service uses
#: instead (``http_pool_size`` is not one: the shared HTTP client takes it from there)
SERVICE_SETS_ELSEWHERE = {
    "db_pool_size": "use FLOWCORE_DB_POOL_SIZE (and FLOWCORE_DB_MAX_OVERFLOW)",
    "redis_pool_size": "use FLOWCORE_REDIS_POOL_SIZE",
    "event_loop_policy": "`flowcore serve` always runs on uvloop; the knob applies to "
    "`flowcore run` and to library use only",
}

#: a list setting: a JSON array, or comma-separated (FLOWCORE_EGRESS_ALLOW=10.0.0.0/8,api.internal)
CommaList = Annotated[list[str], NoDecode]


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="FLOWCORE_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
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

    # who may do what (docs/security.md)
    auth: Literal["required", "disabled"] | None = Field(
        None,
        description="API keys: 'required' (the default), or 'disabled' (every request acts "
        "as an admin of namespace 'default'). Unset: 'disabled' only for the embedded "
        "quickstart (the default SQLite file, served on loopback).",
    )
    auth_allow_disabled_remote: bool = Field(
        False,
        description="Let auth be disabled on a non-loopback address (refused otherwise).",
    )
    bootstrap_admin_key: SecretStr | None = Field(
        None,
        description="An admin key of namespace 'default' that may manage every namespace's "
        "keys: how a fresh deployment gets its first key (from a secret). At least 32 "
        "characters; `flowcore keys generate` prints one.",
    )
    bootstrap_admin_key_file: str | None = Field(
        None,
        description="A file holding the bootstrap key (a Docker or Kubernetes secret "
        "mounted as a file), read when FLOWCORE_BOOTSTRAP_ADMIN_KEY is not set.",
    )
    auth_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a replica trusts a key it looked up; a revocation reaches "
        "the other replicas at once through Postgres NOTIFY or Redis, else within this.",
    )
    docs_enabled: bool = Field(True, description="Serve /docs, /redoc and /openapi.json.")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve /metrics on this port of its own (no key), for Prometheus inside "
        "the cluster; the API's /metrics then needs a metrics or admin key.",
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Origins that browsers may call the API from (CORS), e.g. "
        "https://ops.example.com; '*' for any.",
    )
    egress_allow: CommaList = Field(
        default_factory=list,
        description="Hosts and CIDRs that nodes may reach although they are not public "
        "(private, loopback, link-local): the operator's egress policy.",
    )
    egress_deny: CommaList = Field(
        default_factory=list,
        description="Hosts and CIDRs that nodes may never reach, public or not; a "
        "workflow's allow_hosts cannot widen this policy, only narrow it.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Fernet keys that encrypt secrets at rest, comma-separated: the first "
        "encrypts, every one decrypts (rotation: prepend a new key, then `flowcore secrets "
        "rotate`). Without it the secrets API answers 503.",
    )
    secret_key_file: str | None = Field(
        None, description="A file holding FLOWCORE_SECRET_KEY (a mounted secret)."
    )
    rate_limit_per_second: float = Field(
        0,
        ge=0,
        description="Requests per second one API key may make (token bucket; 0: no limit).",
    )
    rate_limit_burst: int = Field(
        0, ge=0, description="The bucket's size (0: twice the rate, at least 1)."
    )
    namespace_rate_limit_per_second: float = Field(
        0, ge=0, description="Requests per second one namespace may make (0: no limit)."
    )
    namespace_max_active_runs: int = Field(
        0,
        ge=0,
        description="Runs one namespace may have queued or running at once; a start past "
        "it is a 429 (0: no limit).",
    )

    #: execution defaults for every run (FLOWCORE_EXECUTION='{"max_parallel_nodes": 20}')
    execution: dict[str, Any] = Field(default_factory=dict)

    @field_validator("execution")
    @classmethod
    def _no_process_knob_the_service_sets_elsewhere(cls, value: dict[str, Any]) -> dict[str, Any]:
        """ExecutionConfig knobs the service cannot take from FLOWCORE_EXECUTION: its
        pools and its event loop are set up before any run, by their own settings."""
        refused = [
            f"{knob} ({why})" for knob, why in SERVICE_SETS_ELSEWHERE.items() if knob in value
        ]
        if refused:
            raise ValueError("FLOWCORE_EXECUTION cannot set " + "; ".join(refused))
        return value

    @field_validator("cors_origins", "egress_allow", "egress_deny", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("bootstrap_admin_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "FLOWCORE_BOOTSTRAP_ADMIN_KEY must be at least 32 characters "
                "(`flowcore keys generate` prints one)"
            )
        return value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        """``*_FILE`` settings: a secret mounted as a file (Docker, Kubernetes)."""
        from pathlib import Path

        if self.bootstrap_admin_key is None and self.bootstrap_admin_key_file:
            text = Path(self.bootstrap_admin_key_file).read_text(encoding="utf-8").strip()
            self.bootstrap_admin_key = self._long_enough(SecretStr(text))
        if self.secret_key is None and self.secret_key_file:
            text = Path(self.secret_key_file).read_text(encoding="utf-8").strip()
            self.secret_key = SecretStr(text)
        return self

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Settings:
        if not self.auth_required and not self.on_loopback and not self.auth_allow_disabled_remote:
            raise ValueError(
                f"FLOWCORE_AUTH=disabled on {self.host}, which is not a loopback address: "
                "anyone who reaches the port could do anything. Use API keys "
                "(FLOWCORE_AUTH=required), bind to 127.0.0.1, or set "
                "FLOWCORE_AUTH_ALLOW_DISABLED_REMOTE=true if a proxy in front authenticates"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def on_loopback(self) -> bool:
        host = self.host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def auth_required(self) -> bool:
        """Whether requests need an API key (see ``auth``)."""
        if self.auth is not None:
            return self.auth == "required"
        return not (self.database_url == DEFAULT_DATABASE_URL and self.on_loopback)

    def execution_config(self) -> ExecutionConfig:
        """Service execution defaults; checkpoints are always on in the service."""
        config = ExecutionConfig.model_validate(self.execution)
        config.enable_checkpoints = True
        return config
