"""What the service layer hands to its callers: plain, frozen records of workflows, runs,
events and checkpoints. Store rows stop at the service layer; routers render these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.store.records import StoredCheckpoint, StoredEvent, StoredRun, StoredWorkflow

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` fetches the next (None: the last one)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """One stored version of a workflow."""

    workflow_id: str
    version: int
    name: str | None
    archived: bool
    created_at: float
    definition: dict[str, Any]

    @classmethod
    def of(cls, row: StoredWorkflow) -> WorkflowRecord:
        return cls(
            row.workflow_id, row.version, row.name, bool(row.archived), row.created_at,
            row.definition,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as its callers see it (not its lease)."""

    id: str
    workflow_id: str
    workflow_version: int
    status: str
    input: Any
    output: Any
    error: dict[str, Any] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    current_nodes: list[str]
    cancel_requested: bool
    fork_of: str | None
    parked: bool
    wake_at: float | None
    config: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: StoredRun) -> RunRecord:
        parked = bool(row.parked)
        return cls(
            id=row.id,
            workflow_id=row.workflow_id,
            workflow_version=row.workflow_version,
            status=row.status,
            input=row.input,
            output=row.output,
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            current_nodes=list(row.current_nodes or []),
            cancel_requested=bool(row.cancel_requested),
            fork_of=row.fork_of,
            parked=parked,
            wake_at=row.wake_at if parked else None,
            config=row.config,
        )

    @property
    def duration_ms(self) -> float | None:
        if self.finished_at is None or self.started_at is None:
            return None
        return (self.finished_at - self.started_at) * 1000.0


#: one event of a run's durable log: the store's record is already what callers see
EventRecord = StoredEvent


@dataclass(frozen=True, slots=True)
class CheckpointSummary:
    """One checkpoint record of a run, without the state it carries."""

    run_id: str
    sequence: int
    parent: int | None
    status: str
    event_seq: int
    created_at: float
    #: nodes that finished since the previous checkpoint
    completed: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.run_id}:{self.sequence}"

    @classmethod
    def of(cls, row: StoredCheckpoint) -> CheckpointSummary:
        return cls(
            row.run_id,
            row.sequence,
            row.parent,
            row.status,
            row.event_seq,
            row.created_at,
            sorted(row.record.get("completed", {})),
        )


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """A node's outcome in a run's trace."""

    status: str
    attempts: int
    duration_ms: float | None
    error: str | None
    error_kind: str | None


@dataclass(frozen=True, slots=True)
class RunTrace:
    run_id: str
    status: str
    duration_ms: float | None
    node_timings: dict[str, NodeTiming]


@dataclass(frozen=True, slots=True)
class RunState:
    """A run's state at its latest checkpoint."""

    run_id: str
    status: str
    current_nodes: list[str]
    variables: dict[str, Any]
    node_outputs: dict[str, Any]
    pending: dict[str, Any]
    checkpoint_id: str | None
