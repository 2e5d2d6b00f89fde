"""What a run returns: ``RunResult`` with per-node ``NodeRun`` records."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class NodeStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class NodeRun:
    """One node's record in one run."""

    node_id: str
    type: str
    status: NodeStatus = NodeStatus.PENDING
    output: Any = None
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    #: set when a fallback node's output stands in for this node's
    fallback_from: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def success(self) -> bool:
        return self.status is NodeStatus.SUCCEEDED

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at) * 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "type": self.type,
            "status": self.status.value,
            "output": self.output,
            "error": self.error,
            "error_kind": self.error_kind,
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
        }


@dataclass(slots=True)
class RunError:
    """Why a run failed: the node (if any), the error kind and the message."""

    message: str
    kind: str = "error"
    node_id: str | None = None

    def __str__(self) -> str:
        where = f"node {self.node_id!r}: " if self.node_id else ""
        return f"{where}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "kind": self.kind, "node_id": self.node_id}


@dataclass(slots=True)
class RunResult:
    """The outcome of ``executor.execute``."""

    run_id: str
    workflow_id: str
    status: RunStatus
    output: Any = None
    error: RunError | None = None
    #: every node's record, by node id
    node_results: dict[str, NodeRun] = field(default_factory=dict)
    #: failures that did not stop the run (on_error="continue")
    errors: list[RunError] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    events: int = 0
    variables: dict[str, Any] = field(default_factory=dict)
    execution_trace: Any = None
    #: WAITING because the run parked (see ``WorkflowExecutor.execute``); it wakes at
    #: ``wake_at`` (epoch seconds) or, when None, only on a signal
    parked: bool = False
    wake_at: float | None = None

    @property
    def success(self) -> bool:
        return self.status is RunStatus.SUCCEEDED

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at) * 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "status": self.status.value,
            "output": self.output,
            "error": self.error.to_dict() if self.error else None,
            "errors": [e.to_dict() for e in self.errors],
            "duration_ms": self.duration_ms,
            "nodes": {k: v.to_dict() for k, v in self.node_results.items()},
        }
