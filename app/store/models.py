"""Tables. One schema for Postgres and SQLite: JSON becomes JSONB on Postgres, times are
epoch seconds (floats) taken from the database clock where it matters (leases)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.store.records import DEFAULT_NAMESPACE

JSONType = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONType, Any: JSONType}


class WorkflowVersion(Base):
    """An immutable version of a workflow definition."""

    __tablename__ = "workflow_versions"

    namespace: Mapped[str] = mapped_column(
        String(64), primary_key=True, server_default=DEFAULT_NAMESPACE
    )
    workflow_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(400))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[float] = mapped_column(Float)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)


class Run(Base):
    """A run: its request, its state, and its lease while a replica executes it."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64), server_default=DEFAULT_NAMESPACE)
    workflow_id: Mapped[str] = mapped_column(String(200))
    workflow_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[Any] = mapped_column(JSONType, nullable=True)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # the lease: which replica runs it, until when (database clock), and a fencing epoch
    owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[float | None] = mapped_column(Float)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    claims: Mapped[int] = mapped_column(Integer, default=0)
    # progress
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_seq: Mapped[int] = mapped_column(Integer, default=0)
    current_nodes: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    # what the next claim must do
    resume_from: Mapped[str | None] = mapped_column(String(100))
    fork_of: Mapped[str | None] = mapped_column(String(100))
    vars_patch: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # a parked run (status 'waiting', no owner) is claimed again at ``wake_at`` (epoch
    # seconds) or, with no ``wake_at``, when a signal comes
    parked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    wake_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("namespace", "idempotency_key", name="uq_runs_namespace_key"),
        Index("ix_runs_claim", "status", "created_at"),
        Index("ix_runs_workflow", "namespace", "workflow_id", "created_at"),
        Index("ix_runs_namespace", "namespace", "created_at"),
        # fair claims: the oldest queued runs of each namespace
        Index("ix_runs_queue", "status", "namespace", "created_at"),
        Index("ix_runs_owner", "owner"),
        Index(
            "ix_runs_wake",
            "wake_at",
            postgresql_where=text("parked"),
            sqlite_where=text("parked"),
        ),
    )


class NodeResultRow(Base):
    """A node's result in a run: written once, keyed by run, node and iteration."""

    __tablename__ = "node_results"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[Any] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    committed_at: Mapped[float] = mapped_column(Float)


class CheckpointRow(Base):
    """One incremental checkpoint record of a run."""

    __tablename__ = "checkpoints"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    event_seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    record: Mapped[dict[str, Any]] = mapped_column(JSONType)


class EventRow(Base):
    """A run's durable event log, keyed by run and sequence number."""

    __tablename__ = "events"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    #: a top-level node's id, or a body node's path (``map[3]/leaf``), any length
    node_id: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[float] = mapped_column(Float)


class SignalRow(Base):
    """A signal for a run, kept until the replica running it delivers it."""

    __tablename__ = "signals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    payload: Mapped[Any] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiKey(Base):
    """An API key: only its hash is kept; ``id`` is the public part that names it in
    logs and in the audit log (``fc_live_<id>_...``)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    namespace: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_api_keys_namespace", "namespace", "created_at"),)


class SecretRow(Base):
    """A namespace's secret, encrypted (Fernet): the service never returns the value."""

    __tablename__ = "secrets"

    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class AuditRow(Base):
    """Who did what, when and from where: one row per security-relevant change."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    namespace: Mapped[str] = mapped_column(String(64))
    #: the key's public id, or ``anonymous`` (auth disabled), or ``cli``
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(300))
    source: Mapped[str | None] = mapped_column(String(100))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    __table_args__ = (Index("ix_audit_log_namespace", "namespace", "id"),)


class ConversationRow(Base):
    """A conversation's settings and running summary; its messages and entities are
    rows of their own. ``last_seq`` only grows: a message's ``seq`` is never reused,
    so a paging cursor stays valid across trims and folds."""

    __tablename__ = "conversations"

    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    max_messages: Mapped[int] = mapped_column(Integer)
    summarize_after: Mapped[int | None] = mapped_column(Integer)
    window_size: Mapped[int] = mapped_column(Integer)
    summary: Mapped[str | None] = mapped_column(Text)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ConversationMessageRow(Base):
    """A message kept verbatim in a conversation (older ones are trimmed or folded into
    its summary)."""

    __tablename__ = "conversation_messages"

    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(64))
    content: Mapped[Any] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[float] = mapped_column(Float)


class ConversationEntityRow(Base):
    """The facts known about a named entity in a conversation, merged as they come."""

    __tablename__ = "conversation_entities"

    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    facts: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_at: Mapped[float] = mapped_column(Float)
