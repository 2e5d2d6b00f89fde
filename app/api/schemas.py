"""Request and response models of the REST API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.params import MAX_INT
from app.engine.dsl import WORKFLOW_ID_PATTERN


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Issue(BaseModel):
    code: str
    node: str | None = None
    edge: str | None = None
    field: str | None = None
    message: str


class ValidationResult(BaseModel):
    valid: bool
    errors: list[Issue]


class WorkflowOut(BaseModel):
    id: str
    version: int
    name: str | None
    archived: bool
    created_at: float
    definition: dict[str, Any]


class WorkflowSummary(BaseModel):
    id: str
    version: int
    name: str | None
    created_at: float


class WorkflowPage(BaseModel):
    items: list[WorkflowSummary]
    next_cursor: str | None


class RunCreate(_In):
    workflow_id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    version: int | None = Field(None, ge=1, le=MAX_INT, description="Default: the latest version.")
    input: Any = None
    config: dict[str, Any] | None = Field(
        None, description="ExecutionConfig overrides for this run (unknown knobs are rejected)."
    )


class RunLinks(BaseModel):
    self: str
    events: str
    cancel: str
    checkpoints: str
    trace: str


class RunOut(BaseModel):
    run_id: str
    workflow_id: str
    workflow_version: int
    status: Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_ms: float | None
    current_nodes: list[str]
    cancel_requested: bool
    forked_from: str | None = None
    parked: bool = Field(
        False,
        description="Waiting with no replica holding it: it is claimed again at `wake_at`, "
        "or when a signal comes.",
    )
    wake_at: float | None = Field(None, description="When a parked run is due (epoch s).")
    links: RunLinks


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class SignalIn(_In):
    name: str = Field(min_length=1, max_length=200)
    payload: Any = None


class ResumeIn(_In):
    fork: bool = Field(False, description="Start a new run from the checkpoint instead.")
    input: Any = Field(None, description="For a fork: a new input (default: the original).")
    vars: dict[str, Any] | None = Field(None, description="Variables to set before resuming.")


class EventOut(BaseModel):
    seq: int
    type: str
    run_id: str
    node_id: str | None
    data: dict[str, Any]
    timestamp: float


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` (or `after`) for the next page; null: no more yet."
    )


class CheckpointOut(BaseModel):
    id: str
    run_id: str
    sequence: int
    parent: int | None
    status: str
    event_seq: int
    created_at: float
    completed: list[str] = Field(description="Nodes that finished since the previous one.")


class CheckpointDetail(CheckpointOut):
    state: dict[str, Any] = Field(description="The full state at this checkpoint.")


class NodeTimingOut(BaseModel):
    status: str
    attempts: int
    duration_ms: float | None
    error: str | None
    error_kind: str | None


class TraceOut(BaseModel):
    run_id: str
    status: str
    duration_ms: float | None
    node_timings: dict[str, NodeTimingOut]


class StateOut(BaseModel):
    run_id: str
    status: str
    current_nodes: list[str]
    variables: dict[str, Any]
    node_outputs: dict[str, Any]
    pending: dict[str, Any]
    checkpoint_id: str | None


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)
