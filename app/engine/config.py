"""``ExecutionConfig``: every execution knob, with its default and its meaning.

Precedence when the service runs a workflow: service defaults < the workflow's ``config``
< the run request's ``config``. An unknown knob is an error everywhere.

Three kinds of knob:

- *limits* (:data:`LIMIT_FIELDS`) bound what a definition or a value may contain; they
  come from whoever validates (the operator), and nothing a workflow says changes them;
  nor does it change the *process settings* (:data:`PROCESS_FIELDS`: the trace file,
  connection pools);
- *budgets* (:data:`BUDGET_FIELDS`) bound the work and the data of one run; the operator
  sets them, and a workflow's or a run's ``config`` may only lower them (a higher value
  is ignored: the operator's stands). Crossing one fails the run with kind ``budget``;
- everything else: how a run executes, overridable per workflow and per run.

Every number has an upper bound, so no config can ask for an unbounded pool, queue or
wait.
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
        "max_value_depth",
    }
)

#: Knobs that configure the process rather than a run (a file the trace is written to,
#: connection pools): set by the operator; a workflow's or a run's ``config`` cannot set
#: them. (``event_loop_policy`` is not one: `flowcore run` honours a workflow's choice.
#: The engine itself reads neither ``db_pool_size`` nor ``redis_pool_size``: it holds no
#: such connection; the service has settings of its own for them, docs/engine.md.)
PROCESS_FIELDS = frozenset({"trace_output", "db_pool_size", "http_pool_size", "redis_pool_size"})

#: Knobs that bound one run's work and data: a workflow or a run may lower them only.
BUDGET_FIELDS = frozenset(
    {
        "max_node_executions",
        "max_subruns",
        "max_map_items",
        "max_output_bytes",
        "max_state_bytes",
        "max_delay_seconds",
    }
)

_DAY = 86_400.0


class ExecutionConfig(BaseModel):
    """How a run executes. Mutable (``config.enable_checkpoints = True`` is validated)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )

    # Parallel execution
    max_parallel_nodes: int = Field(
        10, ge=1, le=10_000, description="Nodes of one run running at once."
    )
    max_concurrent_tasks: int = Field(
        100, ge=1, le=10_000, description="Concurrent body runs inside one map node, at most."
    )
    batch_size: int = Field(
        100,
        ge=1,
        le=100_000,
        description="A map node runs its items in batches of this many, a batch starting "
        "when the one before has finished (bounds the body runs alive per map).",
    )

    # Timeouts (seconds; None = no limit)
    timeout_seconds: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Whole-run timeout."
    )
    node_timeout: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Default per-node timeout."
    )

    # Resilience
    retry_failed_nodes: bool = Field(False, description="Retry failed nodes by default.")
    max_retries: int = Field(3, ge=0, le=100, description="Default retries when retrying.")
    retry_delay: float = Field(
        1.0, ge=0, le=_DAY, allow_inf_nan=False, description="Default first retry delay (s)."
    )
    on_error: OnError = Field("stop", description="stop | continue | retry.")
    error_handler: Callable[..., Awaitable[Any] | Any] | None = Field(
        None, exclude=True, description="Called with (error, node, context) on a node failure."
    )
    max_errors: int | None = Field(None, ge=1, description="Fail the run after this many.")

    # Checkpointing
    enable_checkpoints: bool = False
    checkpoint_interval: int = Field(
        1, ge=1, le=100_000, description="Checkpoint every N completed nodes."
    )

    # Tracing and metrics
    trace_execution: bool = False
    trace_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    trace_output: str | None = Field(None, description="Write the trace as JSON to this file.")
    collect_metrics: bool = False

    # Caching
    enable_cache: bool = False
    cache_ttl: float = Field(3600.0, gt=0, le=365 * _DAY, allow_inf_nan=False)
    cache_size: int = Field(1000, ge=0, le=10_000_000)

    # Connection pools
    db_pool_size: int = Field(20, ge=1, le=10_000)
    http_pool_size: int = Field(
        100, ge=1, le=10_000, description="Connections in the shared HTTP pool."
    )
    redis_pool_size: int = Field(50, ge=1, le=10_000)

    # Event loop
    event_loop_policy: Literal["asyncio", "uvloop"] = "asyncio"

    # Debugging
    debug_mode: bool = False
    break_on_error: bool = False
    verbose_logging: bool = False

    # Definition and value limits (see LIMIT_FIELDS)
    max_nodes: int = Field(10_000, ge=1, description="Nodes in one definition, nested included.")
    max_edges: int = Field(50_000, ge=0, description="Edges in one definition.")
    max_expression_length: int = Field(4096, ge=1, description="Characters in one expression.")
    max_nesting_depth: int = Field(
        32, ge=1, description="Depth of nested body workflows (and of their runs)."
    )
    max_definition_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Size of a definition as JSON."
    )
    max_value_depth: int = Field(
        64,
        ge=1,
        le=200,
        description="Nesting of any JSON value: a definition, a run's input, variables, "
        "signal and resume payloads, what a node outputs.",
    )

    # Budgets of one run (see BUDGET_FIELDS)
    max_node_executions: int = Field(
        100_000,
        ge=1,
        description="Node executions in one run: body nodes of maps, loops and sub-runs "
        "included (a resumed run counts afresh).",
    )
    max_subruns: int = Field(1_000, ge=0, description="Sub-workflow runs one run starts.")
    max_map_items: int = Field(10_000, ge=0, description="Items one map node maps over.")
    max_output_bytes: int = Field(
        2 * 1024 * 1024, ge=1, description="Size of one node's output as JSON."
    )
    max_state_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Size as JSON of every output a run's nodes produce, nested ones "
        "included: what its checkpoints and event log hold.",
    )
    max_delay_seconds: float = Field(
        30 * _DAY, gt=0, allow_inf_nan=False, description="Longest `delay` a node may sleep."
    )

    def merged(self, overrides: dict[str, Any] | None) -> ExecutionConfig:
        """A copy with ``overrides`` applied (validated); limits and process settings are
        never overridden, budgets only lowered."""
        if not overrides:
            return self
        data = self.model_dump(exclude={"error_handler"})
        for key, value in overrides.items():
            if key in LIMIT_FIELDS or key in PROCESS_FIELDS:
                continue
            if key in BUDGET_FIELDS and isinstance(value, int | float) and value > data[key]:
                continue  # the operator's budget stands
            data[key] = value
        merged = ExecutionConfig.model_validate(data)
        merged.error_handler = self.error_handler
        return merged
