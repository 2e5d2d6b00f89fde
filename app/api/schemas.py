"""Request and response models of the REST API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema, create_model

from app.api.params import MAX_INT
from app.engine import LIMIT_FIELDS, PROCESS_FIELDS, WORKFLOW_ID_PATTERN, ExecutionConfig

#: a string as the service stores it: no NUL character (nor a lone surrogate, which no
#: JSON text that is valid UTF-8 can carry)
TEXT_SCHEMA: dict[str, Any] = {"type": "string", "pattern": "^[^\\u0000]*$"}
#: what ``JsonValue`` is in the OpenAPI document (its recursion refers to itself there)
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "description": "Any JSON value that nests at most max_value_depth (64) levels and "
    "holds no NUL character, lone surrogate, NaN or infinity (docs/dsl.md, Values).",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number"},
        TEXT_SCHEMA,
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "propertyNames": TEXT_SCHEMA,
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        },
    ],
}
_JSON_VALUE_REF = {"$ref": "#/components/schemas/JsonValue"}
JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": TEXT_SCHEMA,
    "additionalProperties": _JSON_VALUE_REF,
}
#: a JSON value the store holds exactly (checked where bodies are parsed: api.body)
JsonValue = Annotated[Any, WithJsonSchema(JSON_VALUE_SCHEMA)]
JsonObject = Annotated[dict[str, Any], WithJsonSchema(JSON_OBJECT_SCHEMA)]

#: the execution knobs a run's ``config`` may set: not the operator's limits and process
#: settings (documents the body; ``api.runs.check_config`` is what enforces it)
RunConfig = create_model(  # type: ignore[call-overload]
    "RunConfig",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (field.annotation, field)
        for name, field in ExecutionConfig.model_fields.items()
        if name not in LIMIT_FIELDS | PROCESS_FIELDS | {"error_handler", "enable_checkpoints"}
    },
)


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
    input: JsonValue = None
    config: Annotated[
        dict[str, Any] | None,
        WithJsonSchema({"anyOf": [{"$ref": "#/components/schemas/RunConfig"}, {"type": "null"}]}),
    ] = Field(
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
    name: str = Field(min_length=1, max_length=200, pattern="^[^\\u0000]+$")
    payload: JsonValue = None


class ResumeIn(_In):
    fork: StrictBool = Field(False, description="Start a new run from the checkpoint instead.")
    input: JsonValue = Field(None, description="For a fork: a new input (default: the original).")
    vars: JsonObject | None = Field(None, description="Variables to set before resuming.")


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
