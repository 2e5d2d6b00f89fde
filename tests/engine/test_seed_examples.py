"""The seed document's code examples ("Basic Usage", "Execution Configuration",
"Execution Strategies", "Custom Node Types"), as close to verbatim as the language
allows: only the import lines changed (``nadoo_flow`` -> ``app.engine``), a concrete
workflow where the seed writes ``[...]``, and assertions on the results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.engine import (
    BaseNode,  # the seed's Custom Node Types example uses it without showing its import
    NodeRegistry,
    NodeResult,  # likewise
    RunStatus,
    WorkflowDefinition,
    WorkflowExecutor,
    create_workflow,
)

NODES: list[dict[str, Any]] = [
    {"id": "read", "type": "transform", "config": {"output": {"text": "input.input"}}},
    {
        "id": "shout",
        "type": "transform",
        "config": {"output": {"text": "nodes.read.output.text + '!'"}},
    },
    {"id": "long", "type": "noop"},
    {"id": "short", "type": "noop"},
]
EDGES: list[dict[str, Any]] = [
    {"source": "read", "target": "shout"},
    {"source": "shout", "target": "long", "condition": "size(nodes.shout.output.text) > 3"},
    {"source": "shout", "target": "short", "condition": "size(nodes.shout.output.text) > 1"},
]


@pytest.fixture
def workflow() -> WorkflowDefinition:
    return create_workflow({"id": "example", "nodes": NODES, "edges": EDGES})


@pytest.fixture
def input_data() -> dict[str, Any]:
    return {"input": "data"}


# ------------------------------------------------------------------------- Basic Usage


async def test_basic_usage() -> None:
    from app.engine import WorkflowExecutor, create_workflow

    # Create workflow
    workflow = create_workflow({
        "id": "example",
        "nodes": NODES,
        "edges": EDGES
    })  # fmt: skip

    # Execute with native backend (default)
    executor = WorkflowExecutor()
    result = await executor.execute(workflow, {"input": "data"})

    assert result.status is RunStatus.SUCCEEDED
    assert result.success
    assert result.workflow_id == "example"
    shout = {"shout": {"text": "data!"}}
    assert result.output == {"long": shout, "short": shout}


# ------------------------------------------------------------- Execution Configuration


async def test_execution_configuration(
    workflow: WorkflowDefinition, input_data: dict[str, Any]
) -> None:
    from app.engine import ExecutionConfig, WorkflowExecutor

    config = ExecutionConfig(
        # Parallel execution
        max_parallel_nodes=10,

        # Timeouts
        timeout_seconds=300,
        node_timeout=30,

        # Resilience
        retry_failed_nodes=True,
        max_retries=3,
        retry_delay=1.0,

        # Checkpointing
        enable_checkpoints=True,
        checkpoint_interval=5,

        # Tracing
        trace_execution=True,
        collect_metrics=True
    )  # fmt: skip

    executor = WorkflowExecutor(config)

    assert executor.config.max_parallel_nodes == 10
    assert (executor.config.timeout_seconds, executor.config.node_timeout) == (300, 30)
    assert executor.config.retry_failed_nodes
    result = await executor.execute(workflow, input_data)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["long"].output == {"shout": {"text": "data!"}}


# ---------------------------------------------------------------- Execution Strategies


async def test_sequential_execution(
    workflow: WorkflowDefinition, input_data: dict[str, Any]
) -> None:
    from app.engine import SequentialExecutor

    executor = SequentialExecutor()
    result = await executor.execute(workflow, input_data)

    assert result.status is RunStatus.SUCCEEDED
    assert set(result.output) == {"long", "short"}


async def test_parallel_execution(workflow: WorkflowDefinition, input_data: dict[str, Any]) -> None:
    from app.engine import ParallelExecutor

    executor = ParallelExecutor(max_workers=10)
    result = await executor.execute(workflow, input_data)

    assert result.status is RunStatus.SUCCEEDED
    assert set(result.output) == {"long", "short"}


async def test_conditional_execution(
    workflow: WorkflowDefinition, input_data: dict[str, Any]
) -> None:
    from app.engine import ConditionalExecutor

    executor = ConditionalExecutor()
    result = await executor.execute(workflow, input_data)

    assert result.status is RunStatus.SUCCEEDED
    # first match: both conditions hold, only the first edge is taken
    assert result.output == {"long": {"shout": {"text": "data!"}}}
    assert result.node_results["short"].status.value == "skipped"


# ------------------------------------------------------------------- Custom Node Types


@pytest.fixture
def unregister_custom_type() -> Iterator[None]:
    try:
        yield
    finally:
        NodeRegistry.unregister("custom_type")


@pytest.mark.usefixtures("unregister_custom_type")
async def test_custom_node_types(input_data: dict[str, Any]) -> None:
    # Register custom node types with native backend
    from app.engine import NodeRegistry

    @NodeRegistry.register("custom_type")
    class CustomNode(BaseNode):
        async def execute(self, node_context, workflow_context):  # type: ignore[no-untyped-def]
            # Custom execution logic
            return NodeResult(success=True)

    assert NodeRegistry.get("custom_type") is CustomNode
    workflow = create_workflow(
        {
            "id": "custom",
            "nodes": [{"id": "mine", "type": "custom_type"}, {"id": "after", "type": "noop"}],
            "edges": [{"source": "mine", "target": "after"}],
        }
    )
    result = await WorkflowExecutor().execute(workflow, input_data)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["mine"].status.value == "succeeded"
    assert result.node_results["mine"].output is None
    assert result.output == {"after": {"mine": None}}
