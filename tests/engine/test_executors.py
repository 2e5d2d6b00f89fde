"""Executors (strategies), cancellation and run control."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.engine import (
    ConditionalExecutor,
    EventType,
    ExecutionConfig,
    ListEventSink,
    NodeStatus,
    ParallelExecutor,
    RunNotFoundError,
    RunResult,
    RunStatus,
    SequentialExecutor,
    WorkflowDefinition,
    WorkflowExecutor,
)
from tests.engine.conftest import (
    Probe,
    RecordingSink,
    make_workflow,
    node,
    probe_node,
)


def wide(n: int) -> WorkflowDefinition:
    """``n`` independent probe nodes, then one that joins them."""
    ids = [f"w{i}" for i in range(n)]
    return make_workflow(
        [*(probe_node(i) for i in ids), probe_node("join")],
        [(i, "join") for i in ids],
    )


def layered() -> tuple[WorkflowDefinition, list[tuple[str, str]]]:
    edges = [
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
        ("b", "e"),
        ("c", "e"),
        ("d", "f"),
        ("e", "g"),
        ("f", "g"),
        ("x", "f"),
    ]
    ids = sorted({n for edge in edges for n in edge})
    return make_workflow([probe_node(i) for i in ids], edges), edges


def assert_order_follows_edges(probe: Probe, edges: list[tuple[str, str]]) -> None:
    for source, target in edges:
        assert probe.position("end", source) < probe.position("start", target), (source, target)


# ---------------------------------------------------------------------------- strategies


async def test_workflow_executor_runs_independent_nodes_in_parallel(probe: Probe) -> None:
    result = await WorkflowExecutor().execute(wide(6))
    assert result.status is RunStatus.SUCCEEDED
    assert probe.max_running == 6


async def test_workflow_executor_default_limit_is_max_parallel_nodes(probe: Probe) -> None:
    assert ExecutionConfig().max_parallel_nodes == 10
    result = await WorkflowExecutor().execute(wide(25))
    assert result.status is RunStatus.SUCCEEDED
    assert probe.max_running == 10


async def test_sequential_executor_runs_one_node_at_a_time_in_edge_order(probe: Probe) -> None:
    workflow, edges = layered()
    # the strategy wins over a workflow's own parallelism
    executor = SequentialExecutor(ExecutionConfig(max_parallel_nodes=8))
    result = await executor.execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert probe.max_running == 1
    assert sorted(probe.starts()) == sorted(result.node_results)
    assert_order_follows_edges(probe, edges)
    # strictly one after the other: every start is followed by its own end
    log = probe.log
    assert all(
        log[i] == ("start", key) and log[i + 1] == ("end", key)
        for i in range(0, len(log), 2)
        for key in [log[i][1]]
    )


async def test_sequential_executor_on_a_wide_graph(probe: Probe) -> None:
    result = await SequentialExecutor().execute(wide(8))
    assert result.status is RunStatus.SUCCEEDED
    assert probe.max_running == 1
    assert probe.starts()[-1] == "join"


async def test_parallel_executor_runs_at_most_max_workers(probe: Probe) -> None:
    executor = ParallelExecutor(max_workers=3)
    result = await executor.execute(wide(10))
    assert result.status is RunStatus.SUCCEEDED
    assert probe.max_running == 3  # never more, and reached on the fan-out
    assert len(probe.starts()) == 11


async def test_parallel_executor_keeps_edge_order(probe: Probe) -> None:
    workflow, edges = layered()
    result = await ParallelExecutor(max_workers=3).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert probe.max_running <= 3
    assert_order_follows_edges(probe, edges)


def test_parallel_executor_rejects_zero_workers() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        ParallelExecutor(max_workers=0)


def branching() -> WorkflowDefinition:
    return make_workflow(
        [node("route"), node("big"), node("medium"), node("other"), node("other2")],
        [
            ("route", "big", "input.n > 10"),
            ("route", "medium", "input.n > 5"),
            ("route", "other"),
            ("route", "other2"),
        ],
    )


def ran(result: RunResult) -> set[str]:
    return {
        node_id
        for node_id, record in result.node_results.items()
        if record.status is NodeStatus.SUCCEEDED and node_id != "route"
    }


@pytest.mark.parametrize(
    ("n", "first_match", "every_match"),
    [
        (20, {"big"}, {"big", "medium", "other", "other2"}),
        (7, {"medium"}, {"medium", "other", "other2"}),
        (1, {"other", "other2"}, {"other", "other2"}),
    ],
)
async def test_conditional_executor_takes_the_first_true_condition_else_unconditional(
    n: int, first_match: set[str], every_match: set[str]
) -> None:
    conditional = await ConditionalExecutor().execute(branching(), {"n": n})
    assert conditional.status is RunStatus.SUCCEEDED
    assert ran(conditional) == first_match
    skipped = {"big", "medium", "other", "other2"} - first_match
    assert {k for k, r in conditional.node_results.items() if r.status is NodeStatus.SKIPPED} == (
        skipped
    )
    # WorkflowExecutor takes every edge whose condition holds, and unconditional ones
    everything = await WorkflowExecutor().execute(branching(), {"n": n})
    assert ran(everything) == every_match


async def test_conditional_executor_follows_edge_order_for_first_match() -> None:
    workflow = make_workflow(
        [node("route"), node("second"), node("first")],
        [("route", "second", "true"), ("route", "first", "true")],
    )
    result = await ConditionalExecutor().execute(workflow)
    assert ran(result) == {"second"}


# -------------------------------------------------------------------------- cancellation


async def test_cancel_by_run_id_cancels_the_running_node(probe: Probe, sink: RecordingSink) -> None:
    workflow = make_workflow(
        [probe_node("stuck", block=True, cleanup_yields=5), probe_node("after")],
        [("stuck", "after")],
    )
    executor = WorkflowExecutor(event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, run_id="run-1"))
    await probe.wait_started("stuck")
    assert executor.status("run-1") is RunStatus.RUNNING
    executor.cancel("run-1")
    result = await task
    assert result.status is RunStatus.CANCELLED
    assert result.output is None
    assert probe.cancelled == ["stuck"]
    assert probe.cleaned_up == ["stuck"]  # the run waited for the node to unwind
    assert "after" not in probe.starts()
    assert result.node_results["stuck"].status is NodeStatus.CANCELLED
    assert sink.events[-1].type is EventType.RUN_CANCELLED
    assert sink.of(EventType.RUN_CANCELLED) == [sink.events[-1]]
    assert executor.active_runs() == []


async def test_cancelled_run_leaves_no_node_pending(probe: Probe) -> None:
    workflow = make_workflow(
        [probe_node("stuck", block=True), probe_node("after")], [("stuck", "after")]
    )
    executor = WorkflowExecutor()
    task = asyncio.create_task(executor.execute(workflow, run_id="run-1"))
    await probe.wait_started("stuck")
    executor.cancel("run-1")
    result = await task
    assert result.node_results["after"].status is NodeStatus.CANCELLED


async def test_cancelling_the_execute_task_propagates_and_cancels_nodes(probe: Probe) -> None:
    sink = ListEventSink()
    workflow = make_workflow(
        [
            probe_node("stuck1", block=True, cleanup_yields=5),
            probe_node("stuck2", block=True, cleanup_yields=1),
        ]
    )
    executor = WorkflowExecutor(event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, run_id="run-2"))
    await probe.wait_started("stuck1")
    await probe.wait_started("stuck2")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(probe.cancelled) == ["stuck1", "stuck2"]
    assert sorted(probe.cleaned_up) == ["stuck1", "stuck2"]
    assert sink.events[-1].type is EventType.RUN_CANCELLED
    assert executor.active_runs() == []


async def test_unknown_run_ids_raise_run_not_found() -> None:
    executor = WorkflowExecutor()
    with pytest.raises(RunNotFoundError):
        executor.cancel("nope")
    with pytest.raises(RunNotFoundError):
        executor.signal("nope", "go", {"x": 1})
    with pytest.raises(RunNotFoundError):
        executor.status("nope")


async def test_finished_runs_are_no_longer_found() -> None:
    executor = WorkflowExecutor()
    result = await executor.execute(make_workflow([node("a")]), run_id="done")
    assert result.run_id == "done"
    with pytest.raises(RunNotFoundError):
        executor.cancel("done")


# ------------------------------------------------------------------- concurrent runs


async def test_two_runs_at_once_on_one_executor(probe: Probe) -> None:
    workflow = make_workflow(
        [
            probe_node("hold", key="{{ input.name }}", block=True),
            node("echo", "transform", config={"output": {"name": "input.name"}}),
        ],
        [("hold", "echo")],
    )
    executor = WorkflowExecutor()
    first = asyncio.create_task(executor.execute(workflow, {"name": "one"}, run_id="r1"))
    second = asyncio.create_task(executor.execute(workflow, {"name": "two"}, run_id="r2"))
    await probe.wait_started("one")
    await probe.wait_started("two")
    assert sorted(executor.active_runs()) == ["r1", "r2"]
    with pytest.raises(ValueError, match="already active"):
        await executor.execute(workflow, {"name": "three"}, run_id="r1")
    probe.release("two")
    second_result = await second
    assert executor.active_runs() == ["r1"]
    assert not first.done()
    probe.release("one")
    first_result = await first
    assert executor.active_runs() == []
    outputs: dict[str, Any] = {r.run_id: r.output for r in (first_result, second_result)}
    assert outputs == {"r1": {"echo": {"name": "one"}}, "r2": {"echo": {"name": "two"}}}
