"""What the store hands out: frozen records of its rows, one per table. No ORM instance,
session or driver row leaves the store; every implementation builds these (``of`` from
an object with the columns as attributes, ``from_mapping`` from a driver's row)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

R = TypeVar("R", bound="_Record")

#: the namespace of rows written before namespaces existed, and of a service without auth
DEFAULT_NAMESPACE = "default"


class _Record:
    """Fields in the order of the table's columns (a test holds them to it)."""

    __slots__ = ()

    @classmethod
    def of(cls: type[R], row: Any) -> R:
        """From an object holding the columns as attributes (an ORM row)."""
        return cls(*(getattr(row, name) for name in _names(cls)))

    @classmethod
    def from_mapping(cls: type[R], row: Mapping[str, Any], **more: Any) -> R:
        """From a mapping of column names (a driver's row); ``more`` overrides it, and a
        column it lacks is None."""
        get = row.get
        return cls(*(more[n] if n in more else get(n) for n in _names(cls)))


_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _names(cls: type[Any]) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass(frozen=True, slots=True)
class StoredWorkflow(_Record):
    """An immutable version of a workflow definition."""

    namespace: str
    workflow_id: str
    version: int
    name: str | None
    definition: dict[str, Any]
    created_at: float
    archived: bool


@dataclass(frozen=True, slots=True)
class StoredRun(_Record):
    """A run: its request, its state, and its lease while a replica executes it."""

    id: str
    namespace: str
    workflow_id: str
    workflow_version: int
    status: str
    input: Any
    config: dict[str, Any] | None
    output: Any
    error: dict[str, Any] | None
    idempotency_key: str | None
    request_hash: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    owner: str | None
    lease_until: float | None
    epoch: int
    claims: int
    event_seq: int
    checkpoint_seq: int
    current_nodes: list[str] | None
    resume_from: str | None
    fork_of: str | None
    vars_patch: dict[str, Any] | None
    cancel_requested: bool
    parked: bool
    wake_at: float | None


@dataclass(frozen=True, slots=True)
class StoredEvent(_Record):
    """One event of a run's durable log."""

    run_id: str
    seq: int
    type: str
    node_id: str | None
    data: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredCheckpoint(_Record):
    """One incremental checkpoint record of a run, as stored."""

    run_id: str
    sequence: int
    parent: int | None
    status: str
    event_seq: int
    created_at: float
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredNodeResult(_Record):
    """A node's committed result in a run."""

    run_id: str
    node_id: str
    iteration: int
    status: str
    output: Any
    error: str | None
    error_kind: str | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    committed_at: float


@dataclass(frozen=True, slots=True)
class StoredSignal(_Record):
    """A signal for a run."""

    id: int
    run_id: str
    name: str
    payload: Any
    created_at: float
    delivered: bool


@dataclass(frozen=True, slots=True)
class StoredAudit(_Record):
    """One entry of a namespace's audit log: who did what, when and from where."""

    id: int
    at: float
    namespace: str
    actor: str
    role: str
    action: str
    target: str | None
    source: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StoredApiKey(_Record):
    """An API key as stored: its public id and the hash of the whole key, never the key."""

    id: str
    hash: str
    namespace: str
    role: str
    name: str | None
    created_at: float
    created_by: str | None
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class StoredSecret(_Record):
    """A namespace's secret as stored: its value encrypted (the store never sees it)."""

    namespace: str
    name: str
    ciphertext: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class StoredSecretInfo(_Record):
    """A secret as listed: its name and times, never its value or its ciphertext."""

    namespace: str
    name: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class StoredConversation(_Record):
    """A conversation's settings and running summary (its messages are rows of their
    own); ``last_seq``: the highest message sequence it ever had."""

    namespace: str
    id: str
    max_messages: int
    summarize_after: int | None
    window_size: int
    summary: str | None
    last_seq: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class StoredMessage(_Record):
    """A message kept verbatim in a conversation, by sequence."""

    namespace: str
    conversation_id: str
    seq: int
    role: str
    content: Any
    meta: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredEntity(_Record):
    """The facts known about a named entity in a conversation."""

    namespace: str
    conversation_id: str
    name: str
    facts: dict[str, Any]
    updated_at: float


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append to a conversation (its sequence is the store's to give)."""

    role: str
    content: Any
    meta: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    """What a conversation keeps: at most ``max_messages`` verbatim, folding older ones
    into its summary past ``summarize_after``, showing the last ``window_size``."""

    max_messages: int
    summarize_after: int | None
    window_size: int


@dataclass(frozen=True, slots=True)
class StoredConversationState:
    """A conversation as loaded: its row, its kept messages (oldest first, at most its
    ``max_messages``) and its entities (by name)."""

    conversation: StoredConversation
    messages: list[StoredMessage]
    entities: list[StoredEntity]
