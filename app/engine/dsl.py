"""The workflow definition language: pydantic models of a workflow, its nodes and edges.

These models check *shape* (types, required fields, unknown keys). Everything that
needs the whole graph or the node registry (duplicate ids, dangling edges, cycles,
unknown types, node configs, expressions, limits) is checked by ``validation``, which
reports all problems of a definition at once.
"""

from __future__ import annotations

from dataclasses import field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter
from pydantic.dataclasses import dataclass

NODE_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$"
#: workflow ids: safe in a URL path, a header, a file name and a metric label
WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Spec):
    """How a failed node is retried; unset fields take ``ExecutionConfig`` defaults."""

    max_retries: int | None = Field(None, ge=0, le=100)
    delay: float | None = Field(None, ge=0, le=86_400, allow_inf_nan=False)
    backoff: float = Field(2.0, ge=1.0, le=100)
    max_delay: float = Field(60.0, ge=0, le=86_400, allow_inf_nan=False)
    jitter: float = Field(0.0, ge=0, le=1)
    retry_on: list[str] | None = Field(
        None, description="Error kinds to retry (e.g. 'timeout', 'execution'); None = all."
    )


class CachePolicy(_Spec):
    ttl: float | None = Field(None, gt=0, le=365 * 86_400, allow_inf_nan=False)
    key: str | None = Field(None, description="A template for the cache key.")


class CircuitBreakerPolicy(_Spec):
    key: str | None = None
    failure_threshold: int = Field(5, ge=1)
    recovery_timeout: float = Field(30.0, gt=0, le=86_400, allow_inf_nan=False)
    half_open_max_calls: int = Field(1, ge=1)


_SPEC_CONFIG = ConfigDict(extra="forbid")


class _SlottedSpec:
    """Nodes and edges are slotted pydantic dataclasses, not models: a definition may hold
    10,000 of them, and a slotted instance is a fifth of a model's size."""

    __slots__ = ()

    @classmethod
    def model_validate(cls, data: Any) -> Any:
        return _adapter(cls).validate_python(data)


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(cls: type) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


@dataclass(frozen=True, slots=True, config=_SPEC_CONFIG)
class NodeSpec(_SlottedSpec):
    """One node: its id, type, type-specific ``config`` and the common policies."""

    id: Annotated[str, Field(pattern=NODE_ID_PATTERN)]
    type: Annotated[str, Field(min_length=1, max_length=128)]
    name: str | None = None
    description: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    timeout: Annotated[float | None, Field(gt=0, allow_inf_nan=False)] = None
    fallback: str | None = None
    cache: CachePolicy | None = None
    circuit_breaker: CircuitBreakerPolicy | None = None
    join: Literal["all", "any"] = "all"
    on_error: Literal["stop", "continue", "retry"] | None = None

    if TYPE_CHECKING:

        @classmethod
        def model_validate(cls, data: Any) -> NodeSpec: ...


@dataclass(frozen=True, slots=True, config=_SPEC_CONFIG)
class EdgeSpec(_SlottedSpec):
    """A dependency ``source -> target``, taken when ``condition`` (CEL) is true."""

    source: str
    target: str
    condition: str | None = None

    @property
    def label(self) -> str:
        return f"{self.source}->{self.target}"

    if TYPE_CHECKING:

        @classmethod
        def model_validate(cls, data: Any) -> EdgeSpec: ...


class WorkflowDefinition(_Spec):
    """A workflow: a DAG of nodes, an optional output map and default config.

    Build one with :func:`app.engine.create_workflow`, which also validates it.
    """

    id: str = Field(
        "workflow",
        pattern=WORKFLOW_ID_PATTERN,
        description="Letters, digits, '.', '_' and '-', starting with a letter or a digit; "
        "at most 128 characters.",
    )
    name: str | None = None
    description: str | None = None
    version: int | None = Field(None, ge=1)
    config: dict[str, Any] = Field(default_factory=dict)
    input_schema: dict[str, Any] | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    nodes: list[NodeSpec] = Field(default_factory=list)
    edges: list[EdgeSpec] = Field(default_factory=list)
    output: dict[str, str] | None = Field(
        None, description="Output name -> CEL expression, evaluated when the run ends."
    )

    # Compiled form, built once per definition on first use (see graph.compile_workflow).
    _compiled: Any = PrivateAttr(default=None)

    def node(self, node_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        raise KeyError(node_id)
