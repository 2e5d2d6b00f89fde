"""``ExecutionConfig``: every execution knob, with its default and its meaning.

Precedence when the service runs a workflow: service defaults < the workflow's ``config``
< the run request's ``config``. An unknown knob is an error everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

OnError = Literal["stop", "continue", "retry"]

#: Knobs that bound what a definition may contain. They come from whoever *validates*
#: a definition (the service, or the caller of ``create_workflow``); a workflow's own
#: ``config`` cannot raise them.
LIMIT_FIELDS = frozenset(
    {
        "max_nodes",
        "max_edges",
        "max_expression_length",
        "max_nesting_depth",
        "max_definition_bytes",
    }
)


class ExecutionConfig(BaseModel):
    """How a run executes. Mutable (``config.enable_checkpoints = True`` is validated)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )

    # Parallel execution
    max_parallel_nodes: int = Field(10, ge=1, description="Nodes of one run running at once.")
    max_concurrent_tasks: int = Field(
        100, ge=1, description="Concurrent body runs inside one map node, at most."
    )
    batch_size: int = Field(
        100, ge=1, description="Items a map node schedules per batch (bounds memory per map)."
    )

    # Timeouts (seconds; None = no limit)
    timeout_seconds: float | None = Field(None, gt=0, description="Whole-run timeout.")
    node_timeout: float | None = Field(None, gt=0, description="Default per-node timeout.")

    # Resilience
    retry_failed_nodes: bool = Field(False, description="Retry failed nodes by default.")
    max_retries: int = Field(3, ge=0, description="Default retries when retrying.")
    retry_delay: float = Field(1.0, ge=0, description="Default first retry delay (seconds).")
    on_error: OnError = Field("stop", description="stop | continue | retry.")
    error_handler: Callable[..., Awaitable[Any] | Any] | None = Field(
        None, exclude=True, description="Called with (error, node, context) on a node failure."
    )
    max_errors: int | None = Field(None, ge=1, description="Fail the run after this many.")

    # Checkpointing
    enable_checkpoints: bool = False
    checkpoint_interval: int = Field(1, ge=1, description="Checkpoint every N completed nodes.")

    # Tracing and metrics
    trace_execution: bool = False
    trace_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    trace_output: str | None = Field(None, description="Write the trace as JSON to this file.")
    collect_metrics: bool = False

    # Caching
    enable_cache: bool = False
    cache_ttl: float = Field(3600.0, gt=0)
    cache_size: int = Field(1000, ge=0)

    # Connection pools
    db_pool_size: int = Field(20, ge=1)
    http_pool_size: int = Field(100, ge=1, description="Connections in the shared HTTP pool.")
    redis_pool_size: int = Field(50, ge=1)

    # Event loop
    event_loop_policy: Literal["asyncio", "uvloop"] = "asyncio"

    # Debugging
    debug_mode: bool = False
    break_on_error: bool = False
    verbose_logging: bool = False

    # Definition limits (see LIMIT_FIELDS)
    max_nodes: int = Field(10_000, ge=1, description="Nodes in one definition, nested included.")
    max_edges: int = Field(50_000, ge=0, description="Edges in one definition.")
    max_expression_length: int = Field(4096, ge=1, description="Characters in one expression.")
    max_nesting_depth: int = Field(
        32, ge=1, description="Depth of nested JSON and of nested body workflows."
    )
    max_definition_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Size of a definition as JSON."
    )

    def merged(self, overrides: dict[str, Any] | None) -> ExecutionConfig:
        """A copy with ``overrides`` applied (validated); limits are never overridden."""
        if not overrides:
            return self
        data = self.model_dump(exclude={"error_handler"})
        data.update({k: v for k, v in overrides.items() if k not in LIMIT_FIELDS})
        merged = ExecutionConfig.model_validate(data)
        merged.error_handler = self.error_handler
        return merged
