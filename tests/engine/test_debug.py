"""Debugging: debug_mode, break_on_error (a resumable ``waiting`` stop at the first
error), verbose_logging, and ``DebugExecutor`` with ``get_current_state()``."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.engine import (
    EventType,
    ExecutionConfig,
    NodeStatus,
    RunStatus,
    WorkflowDefinition,
    WorkflowExecutor,
)
from app.engine.checkpoint import InMemoryCheckpointStore
from app.engine.executor import DebugExecutor, DebugState
from tests.engine.conftest import Probe, RecordingSink, make_workflow, node, probe_node


def divide_chain(*, output_map: bool = True) -> WorkflowDefinition:
    """``first`` -> ``divide`` (fails while vars.d == 0) -> ``last``."""
    output = {"q": "nodes.divide.output.q"} if output_map else None
    return make_workflow(
        [
            probe_node("first"),
            node("divide", "transform", config={"output": {"q": "10 / vars.d"}}),
            probe_node("last"),
        ],
        [("first", "divide"), ("divide", "last")],
        vars={"d": 0},
        output=output,
    )


# ------------------------------------------------------------------------ break_on_error


async def test_break_on_error_stops_in_a_resumable_waiting_state(
    probe: Probe, sink: RecordingSink
) -> None:
    store = InMemoryCheckpointStore()
    config = ExecutionConfig(break_on_error=True, enable_checkpoints=True)
    executor = WorkflowExecutor(config, checkpoint_store=store, event_sinks=[sink])
    result = await executor.execute(divide_chain(), run_id="brk")

    assert result.status is RunStatus.WAITING
    assert result.error is not None
    assert (result.error.node_id, result.error.kind) == ("divide", "expression")
    assert result.node_results["divide"].status is NodeStatus.FAILED
    assert "last" not in probe.starts()
    waiting = sink.events[-1]
    assert waiting.type is EventType.RUN_WAITING
    assert waiting.node_id == "divide"
    assert waiting.data["reason"] == "break_on_error"
    assert waiting.data["error"] == result.error.to_dict()
    assert sink.of(EventType.RUN_FAILED) == []

    checkpoint = await store.latest("brk")
    assert checkpoint is not None
    assert checkpoint.status == "waiting"
    assert checkpoint.pending["divide"]["kind"] == "break"
    assert "divide" not in checkpoint.completed

    # fix the cause, resume: the failed node runs again, the completed one does not
    fixed = await executor.continue_execution(checkpoint, variables={"d": 5})
    assert fixed.status is RunStatus.SUCCEEDED
    assert fixed.output == {"q": 2}
    assert probe.starts() == ["first", "last"]


async def test_break_on_error_cancels_what_is_still_running(probe: Probe) -> None:
    workflow = make_workflow(
        [node("bad", "engine_raise", config={"after": "slow"}), probe_node("slow", block=True)]
    )
    store = InMemoryCheckpointStore()
    config = ExecutionConfig(break_on_error=True, enable_checkpoints=True)
    executor = WorkflowExecutor(config, checkpoint_store=store)
    result = await executor.execute(workflow, run_id="brk2")
    assert result.status is RunStatus.WAITING
    assert probe.cancelled == ["slow"]
    # neither completed, so a resume would run both again
    checkpoint = await store.latest("brk2")
    assert checkpoint is not None
    assert checkpoint.completed == {}


async def test_without_break_on_error_the_run_fails(sink: RecordingSink) -> None:
    result = await WorkflowExecutor(event_sinks=[sink]).execute(divide_chain())
    assert result.status is RunStatus.FAILED
    assert sink.events[-1].type is EventType.RUN_FAILED


# ----------------------------------------------------------------------- verbose_logging


async def test_verbose_logging_logs_every_event_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workflow = make_workflow([probe_node("a"), probe_node("b")], [("a", "b")])
    with caplog.at_level(logging.DEBUG, logger="flowcore.engine"):
        result = await WorkflowExecutor(ExecutionConfig(verbose_logging=True)).execute(
            workflow, run_id="loud"
        )
    records = [r for r in caplog.records if r.name == "flowcore.engine"]
    assert all(r.levelno == logging.DEBUG for r in records)
    messages = [r.getMessage() for r in records]
    assert len(messages) == result.events == 6
    assert messages[0].startswith("run loud #1 run.started -")
    assert any(m.startswith("run loud #3 node.completed a ") for m in messages)
    assert messages[-1].startswith("run loud #6 run.succeeded -")


async def test_no_event_logging_without_verbose_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="flowcore.engine"):
        await WorkflowExecutor().execute(make_workflow([probe_node("a")]))
    assert [r for r in caplog.records if r.name == "flowcore.engine"] == []


# ------------------------------------------------------------------------ DebugExecutor


async def test_debug_executor_turns_debug_mode_on_without_touching_the_config() -> None:
    config = ExecutionConfig(break_on_error=True)
    async with DebugExecutor(config) as executor:
        assert isinstance(executor, DebugExecutor)
        assert executor.config.debug_mode is True
        assert executor.config.break_on_error is True
    assert config.debug_mode is False


async def test_get_current_state_while_a_node_is_blocked(probe: Probe) -> None:
    workflow = make_workflow(
        [
            node("start", "transform", config={"output": {"v": "input.n + 1"}}),
            probe_node("stuck", block=True),
            probe_node("end"),
        ],
        [("start", "stuck"), ("stuck", "end")],
        vars={"mode": "debug"},
    )
    async with DebugExecutor() as executor:
        assert executor.get_current_state().status == "idle"
        task = asyncio.create_task(executor.execute(workflow, {"n": 1}, run_id="dbg"))
        await probe.wait_started("stuck")

        state = executor.get_current_state()
        assert isinstance(state, DebugState)
        assert (state.run_id, state.status) == ("dbg", "running")
        assert state.current_nodes == ["stuck"]
        assert state.current_node == "stuck"
        assert state.completed == ["start"]
        assert state.context["input"] == {"n": 1}
        assert state.context["variables"] == {"mode": "debug"}
        assert state.context["node_outputs"] == {"start": {"v": 2}}
        assert executor.get_current_state("dbg") == state

        probe.release("stuck")
        result = await task
        assert result.status is RunStatus.SUCCEEDED

        after = executor.get_current_state()
        assert after.status == "succeeded"
        assert after.current_nodes == []
        assert after.current_node == "end"  # the last node that ran
        assert after.completed == ["start", "stuck", "end"]


async def test_current_nodes_lists_every_running_node(probe: Probe) -> None:
    workflow = make_workflow([probe_node(k, block=True) for k in ("p", "q", "r")])
    async with DebugExecutor() as executor:
        task = asyncio.create_task(executor.execute(workflow))
        await probe.wait_running(3)
        state = executor.get_current_state()
        assert sorted(state.current_nodes) == ["p", "q", "r"]
        assert state.current_node in ("p", "q", "r")
        for key in ("p", "q", "r"):
            probe.release(key)
        await task


async def test_node_tracking_needs_debug_mode(probe: Probe) -> None:
    workflow = make_workflow([probe_node("stuck", block=True)])
    for debug_mode, expected in [(False, []), (True, ["stuck"])]:
        executor = WorkflowExecutor(ExecutionConfig(debug_mode=debug_mode))
        task = asyncio.create_task(executor.execute(workflow))
        await probe.wait_started("stuck")
        assert executor.get_current_state().current_nodes == expected
        probe.release("stuck")
        await task
        probe.gate("stuck").clear()
        probe.started_event("stuck").clear()


@pytest.mark.parametrize("with_output_map", [False, True])
async def test_state_of_a_run_stopped_by_break_on_error(with_output_map: bool) -> None:
    workflow = divide_chain(output_map=with_output_map)
    async with DebugExecutor(ExecutionConfig(break_on_error=True)) as executor:
        result = await executor.execute(workflow)
        state = executor.get_current_state()
    assert result.status is RunStatus.WAITING
    assert state.status == "waiting"
    assert state.error == result.error
    assert state.error is not None
    assert (state.error.node_id, state.error.kind) == ("divide", "expression")
    assert state.current_node == "divide"
    assert state.completed == ["first"]


async def test_leaving_the_context_cancels_runs_still_going(probe: Probe) -> None:
    workflow = make_workflow([probe_node("stuck", block=True)])
    async with DebugExecutor() as executor:
        task = asyncio.create_task(executor.execute(workflow))
        await probe.wait_started("stuck")
    result = await task
    assert result.status is RunStatus.CANCELLED
    assert probe.cancelled == ["stuck"]
