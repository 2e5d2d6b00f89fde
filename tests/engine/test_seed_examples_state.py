"""The seed document's examples for Checkpointing, Execution Hooks, Execution Tracing,
Metrics Collection, Debug Mode and Error Handling, as close to verbatim as the language
allows: only the import lines changed (``nadoo_flow`` -> ``app.engine``,
``nadoo_flow.metrics`` -> ``app.engine.metrics``), names the seed uses without showing an
import (FileCheckpointStore, DebugExecutor) imported from ``app.engine``, the helpers
it leaves undefined (logger, custom_error_handler, report_to_sentry, can_recover,
recover) filled in minimally, a temporary directory for /tmp/checkpoints and the trace
file, and assertions on the results."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.engine import (
    BaseNode,
    DebugExecutor,  # the seed's Debug Mode example uses it without showing its import
    DeliberateFailure,
    FileCheckpointStore,  # likewise, in the Checkpointing example
    NodeContext,
    NodeRegistry,
    NodeResult,
    NodeSpec,
    RunStatus,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowExecutor,
    create_workflow,
)

# ------------------------------------------------------------ helpers the seed assumes

logger = logging.getLogger("seed.examples")


class Outage:
    """Whether the ``seed_service`` node type is failing, and how often it ran."""

    def __init__(self) -> None:
        self.on = False
        self.calls: Counter[str] = Counter()


_outage = Outage()


class ServiceNode(BaseNode):
    """Counts its calls; fails while there is an outage."""

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        _outage.calls[node_context.node_id] += 1
        if _outage.on:
            raise DeliberateFailure(f"{node_context.node_id}: service unavailable")
        return NodeResult(output={"served": node_context.node_id})


@pytest.fixture
def outage() -> Iterator[Outage]:
    global _outage
    _outage = Outage()
    NodeRegistry.register("seed_service")(ServiceNode)
    try:
        yield _outage
    finally:
        NodeRegistry.unregister("seed_service")


@pytest.fixture
def workflow() -> WorkflowDefinition:
    return create_workflow(
        {
            "id": "orders",
            "nodes": [
                {"id": "load", "type": "transform", "config": {"output": {"qty": "input.qty"}}},
                {
                    "id": "price",
                    "type": "transform",
                    "config": {"output": {"total": "nodes.load.output.qty * 3"}},
                },
                {"id": "notify", "type": "noop"},
            ],
            "edges": [
                {"source": "load", "target": "price"},
                {"source": "price", "target": "notify"},
            ],
            "output": {"total": "nodes.price.output.total"},
        }
    )


@pytest.fixture
def input_data() -> dict[str, Any]:
    return {"qty": 4}


def with_service(workflow: WorkflowDefinition) -> WorkflowDefinition:
    """``workflow`` with a ``seed_service`` call between ``price`` and ``notify``."""
    raw = workflow.model_dump(mode="json", exclude_none=True)
    raw["nodes"].insert(2, {"id": "charge", "type": "seed_service"})
    raw["edges"] = [
        {"source": "load", "target": "price"},
        {"source": "price", "target": "charge"},
        {"source": "charge", "target": "notify"},
    ]
    return create_workflow(raw)


# ------------------------------------------------------------------------ Checkpointing


class CheckpointedExecutor(WorkflowExecutor):
    """Executor with checkpointing support"""

    async def execute(self, workflow, input_data):  # type: ignore[no-untyped-def, override]
        # Enable checkpointing
        self.config.enable_checkpoints = True

        # Set checkpoint storage
        self.checkpoint_store = FileCheckpointStore("/tmp/checkpoints")

        # Execute with automatic checkpointing
        return await super().execute(workflow, input_data)

    async def resume_from_checkpoint(self, checkpoint_id):  # type: ignore[no-untyped-def, override]
        """Resume execution from checkpoint"""
        checkpoint = await self.checkpoint_store.load(checkpoint_id)  # type: ignore[union-attr]
        return await self.continue_execution(checkpoint)


@pytest.fixture
def checkpoint_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sends the example's FileCheckpointStore("/tmp/checkpoints") to a temporary dir."""
    directory = tmp_path / "checkpoints"
    real = FileCheckpointStore

    def redirected(path: str) -> FileCheckpointStore:
        assert path == "/tmp/checkpoints"
        return real(directory)

    monkeypatch.setattr(sys.modules[__name__], "FileCheckpointStore", redirected)
    return directory


async def test_checkpointing(
    workflow: WorkflowDefinition,
    input_data: dict[str, Any],
    outage: Outage,
    checkpoint_dir: Path,
) -> None:
    workflow = with_service(workflow)
    outage.on = True

    executor = CheckpointedExecutor()
    result = await executor.execute(workflow, input_data)  # type: ignore[no-untyped-call]

    assert result.status is RunStatus.FAILED
    assert executor.config.enable_checkpoints is True
    files = await asyncio.to_thread(lambda: [p.name for p in checkpoint_dir.iterdir()])
    assert files == [f"{result.run_id}.jsonl"]
    assert executor.checkpoint_store is not None
    infos = await executor.checkpoint_store.list(result.run_id)
    checkpoint_id = infos[-1].id
    assert infos[-1].status == "failed"

    outage.on = False  # the service is back
    resumed = await executor.resume_from_checkpoint(checkpoint_id)  # type: ignore[no-untyped-call]

    assert resumed.status is RunStatus.SUCCEEDED
    assert resumed.run_id == result.run_id
    assert resumed.output == {"total": 12}
    assert outage.calls == Counter({"charge": 2})  # the failed call, then the resumed one
    for node_id in ("load", "price"):  # completed before the checkpoint: not run again
        assert resumed.node_results[node_id].metadata == {"restored": True}


# ---------------------------------------------------------------------- Execution Hooks


class HookedExecutor(WorkflowExecutor):
    """Executor with lifecycle hooks"""

    async def pre_workflow_hook(self, workflow, input_data):  # type: ignore[no-untyped-def]
        """Called before workflow execution"""
        logger.info(f"Starting workflow {workflow.id}")

    async def post_node_hook(self, node, result):  # type: ignore[no-untyped-def]
        """Called after each node"""
        logger.info(f"Node {node.id} completed: {result.success}")

    async def post_workflow_hook(self, workflow, result):  # type: ignore[no-untyped-def]
        """Called after workflow completion"""
        logger.info(f"Workflow {workflow.id} finished")


async def test_execution_hooks(
    workflow: WorkflowDefinition, input_data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="seed.examples"):
        result = await HookedExecutor().execute(workflow, input_data)
    assert result.status is RunStatus.SUCCEEDED
    assert [r.getMessage() for r in caplog.records if r.name == "seed.examples"] == [
        "Starting workflow orders",
        "Node load completed: True",
        "Node price completed: True",
        "Node notify completed: True",
        "Workflow orders finished",
    ]


# -------------------------------------------------------------------- Execution Tracing


async def test_execution_tracing(
    workflow: WorkflowDefinition,
    input_data: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.engine import ExecutionConfig, WorkflowExecutor

    monkeypatch.chdir(tmp_path)  # the example's relative trace file lands here

    # Enable detailed tracing
    config = ExecutionConfig(
        trace_execution=True,
        trace_level="DEBUG",
        trace_output="workflow_trace.json"
    )  # fmt: skip

    executor = WorkflowExecutor(config)
    result = await executor.execute(workflow, input_data)

    # Access trace
    trace = result.execution_trace
    print(f"Total duration: {trace.duration}ms")
    print(f"Node timings: {trace.node_timings}")

    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"Total duration: {result.duration_ms}ms"
    assert printed[1].startswith("Node timings: {'load': NodeTiming(node_id='load'")
    assert set(trace.node_timings) == {"load", "price", "notify"}
    assert all(t.attempts == 1 for t in trace.node_timings.values())
    assert trace.events[0]["type"] == "run.started"  # DEBUG carries the events
    written = json.loads((tmp_path / "workflow_trace.json").read_text(encoding="utf-8"))
    assert written["run_id"] == result.run_id
    assert written["duration"] == trace.duration
    assert set(written["node_timings"]) == {"load", "price", "notify"}
    assert len(written["events"]) == len(trace.events)


# ------------------------------------------------------------------- Metrics Collection


async def test_metrics_collection(
    workflow: WorkflowDefinition, input_data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from app.engine.metrics import MetricsCollector

    # Configure metrics
    metrics = MetricsCollector()
    executor = WorkflowExecutor(metrics_collector=metrics)

    # Execute
    result = await executor.execute(workflow, input_data)

    # Get metrics
    stats = metrics.get_statistics()
    print(f"Average node execution: {stats['avg_node_time']}ms")
    print(f"Total workflows: {stats['total_workflows']}")

    assert result.status is RunStatus.SUCCEEDED
    assert capsys.readouterr().out.splitlines() == [
        f"Average node execution: {stats['avg_node_time']}ms",
        "Total workflows: 1",
    ]
    durations = [r.duration_ms or 0.0 for r in result.node_results.values()]
    assert stats["avg_node_time"] == pytest.approx(sum(durations) / 3)
    assert stats["node_types"]["transform"]["count"] == 2
    assert stats["node_types"]["noop"]["count"] == 1


# --------------------------------------------------------------------------- Debug Mode


async def test_debug_mode(
    workflow: WorkflowDefinition,
    input_data: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from app.engine import ExecutionConfig

    caplog.set_level(logging.DEBUG, logger="flowcore.engine")

    # Enable debug mode
    config = ExecutionConfig(
        debug_mode=True,
        break_on_error=True,
        verbose_logging=True
    )  # fmt: skip

    # Debug execution
    async with DebugExecutor(config) as executor:
        result = await executor.execute(workflow, input_data)

        # Inspect state at any point
        state = executor.get_current_state()
        print(f"Current node: {state.current_node}")
        print(f"Context: {state.context}")

    assert result.status is RunStatus.SUCCEEDED
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Current node: notify"
    assert printed[1].startswith("Context: {'workflow_id': 'orders', 'run_id': ")
    assert state.context["input"] == input_data
    assert state.context["node_outputs"]["price"] == {"total": 12}
    assert any("node.completed price" in r.getMessage() for r in caplog.records)


async def test_debug_mode_breaks_on_the_first_error(
    workflow: WorkflowDefinition, input_data: dict[str, Any], outage: Outage
) -> None:
    from app.engine import ExecutionConfig

    outage.on = True
    config = ExecutionConfig(debug_mode=True, break_on_error=True, verbose_logging=True)
    async with DebugExecutor(config) as executor:
        result = await executor.execute(with_service(workflow), input_data)
        state = executor.get_current_state()
    assert result.status is RunStatus.WAITING
    assert state.current_node == "charge"
    assert state.error is not None
    assert state.error.node_id == "charge"


# ------------------------------------------------------------------------ Error Handling


def custom_error_handler(error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
    """Substitutes an empty charge for a failed service call; leaves other failures."""
    if node.type == "seed_service":
        return {"served": None, "error": str(error)}
    return None


async def test_error_recovery(
    workflow: WorkflowDefinition, input_data: dict[str, Any], outage: Outage
) -> None:
    from app.engine import ExecutionConfig

    # Configure error handling
    config = ExecutionConfig(
        on_error="continue",  # continue, stop, retry
        error_handler=custom_error_handler,
        max_errors=5
    )  # fmt: skip

    outage.on = True
    workflow = with_service(workflow)
    raw = workflow.model_dump(mode="json", exclude_none=True)
    raw["nodes"].append({"id": "audit", "type": "fail", "config": {"message": "audit down"}})
    raw["nodes"].append({"id": "after_audit", "type": "noop"})
    raw["edges"].append({"source": "audit", "target": "after_audit"})
    executor = WorkflowExecutor(config)
    result = await executor.execute(create_workflow(raw), input_data)

    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["charge"].output == {
        "served": None,
        "error": "charge: service unavailable",
    }
    assert result.node_results["notify"].status.value == "succeeded"
    # the audit failure was not recovered: continued past, its downstream skipped
    assert [(e.node_id, e.kind) for e in result.errors] == [("audit", "deliberate")]
    assert result.node_results["after_audit"].status.value == "skipped"


async def test_error_recovery_max_errors(workflow: WorkflowDefinition) -> None:
    from app.engine import ExecutionConfig

    config = ExecutionConfig(
        on_error="continue",  # continue, stop, retry
        error_handler=custom_error_handler,
        max_errors=5
    )  # fmt: skip
    raw = workflow.model_dump(mode="json", exclude_none=True)
    raw["nodes"] += [{"id": f"f{i}", "type": "fail"} for i in range(6)]
    result = await WorkflowExecutor(config).execute(create_workflow(raw), {"qty": 1})
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.kind == "max_errors"
    assert result.error.message == "5 node errors reached max_errors"
    # the failing nodes run in parallel: one may finish failing as the run stops
    assert len(result.errors) >= 5


class ErrorReportingExecutor(WorkflowExecutor):
    async def handle_error(self, error, node, context):  # type: ignore[no-untyped-def]
        """Custom error handling"""
        # Log error
        logger.error(f"Error in {node.id}: {error}")

        # Report to monitoring
        await self.report_to_sentry(error, node, context)

        # Attempt recovery
        if self.can_recover(error):
            return await self.recover(node, context)

        raise error

    # -- the helpers the example calls, filled in minimally

    reported: list[str]

    async def report_to_sentry(self, error: BaseException, node: NodeSpec, context: Any) -> None:
        self.reported = [*getattr(self, "reported", []), f"{node.id}: {error}"]

    def can_recover(self, error: BaseException) -> bool:
        return isinstance(error, DeliberateFailure)

    async def recover(self, node: NodeSpec, context: NodeContext) -> NodeResult:
        return NodeResult(output={"recovered": node.id, "attempt": context.attempt})


async def test_error_reporting(
    workflow: WorkflowDefinition,
    input_data: dict[str, Any],
    outage: Outage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage.on = True
    executor = ErrorReportingExecutor()
    with caplog.at_level(logging.ERROR, logger="seed.examples"):
        recovered = await executor.execute(with_service(workflow), input_data)

    assert recovered.status is RunStatus.SUCCEEDED
    assert recovered.node_results["charge"].output == {"recovered": "charge", "attempt": 1}
    assert recovered.output == {"total": 12}
    assert executor.reported == ["charge: charge: service unavailable"]
    assert [r.getMessage() for r in caplog.records] == [
        "Error in charge: charge: service unavailable"
    ]

    # an error it cannot recover from is re-raised: the failure stands
    broken = create_workflow(
        {
            "id": "broken",
            "nodes": [{"id": "t", "type": "transform", "config": {"output": {"x": "1 / 0"}}}],
        }
    )
    failed = await executor.execute(broken, {})
    assert failed.status is RunStatus.FAILED
    assert failed.error is not None
    assert (failed.error.node_id, failed.error.kind) == ("t", "expression")
    assert executor.reported[-1].startswith("t: expression '1 / 0' failed")
