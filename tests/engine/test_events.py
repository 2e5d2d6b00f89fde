"""Run events: order, sequence numbers, live streaming, custom and token events, wire
form."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

import pytest

from app.engine import (
    Event,
    EventType,
    InputValidationError,
    RunStatus,
    WorkflowExecutor,
)
from tests.engine.conftest import (
    HANG_GUARD,
    Probe,
    RecordingSink,
    make_workflow,
    node,
    probe_node,
)

TERMINAL = {EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_CANCELLED}


def assert_well_formed(events: list[Event], run_id: str) -> None:
    """The invariants every run's event log keeps."""
    assert events, "no events"
    assert events[0].type is EventType.RUN_STARTED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(e.run_id == run_id for e in events)
    assert events[-1].type in TERMINAL
    assert [e for e in events if e.type in TERMINAL] == [events[-1]]
    started: dict[str, int] = {}
    for event in events:
        assert isinstance(event.type, EventType)
        if event.type is EventType.NODE_STARTED:
            assert event.node_id is not None
            started.setdefault(event.node_id, event.seq)
        elif event.type in (EventType.NODE_COMPLETED, EventType.NODE_FAILED):
            assert event.node_id in started, f"{event.type} for {event.node_id} before its start"
            assert started[event.node_id] < event.seq


async def test_events_of_a_small_workflow_in_order(sink: RecordingSink) -> None:
    workflow = make_workflow(
        [
            node("a", "transform", config={"output": {"n": "1"}}),
            node("b", "transform", config={"output": {"n": "nodes.a.output.n + 1"}}),
            node("c", "noop"),
        ],
        [("a", "b"), ("b", "c", "false")],
    )
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow, run_id="ev-1")
    assert result.status is RunStatus.SUCCEEDED
    events = sink.events
    assert_well_formed(events, "ev-1")
    assert [(e.seq, e.type.value, e.node_id) for e in events] == [
        (1, "run.started", None),
        (2, "node.started", "a"),
        (3, "node.completed", "a"),
        (4, "node.started", "b"),
        (5, "node.completed", "b"),
        (6, "node.skipped", "c"),
        (7, "run.succeeded", None),
    ]
    assert events[0].data["workflow_id"] == "test"
    assert events[2].data["output"] == {"n": 1}
    assert events[-1].data["output"] == result.output
    assert result.events == 7


async def test_event_log_of_a_parallel_run_is_well_formed(sink: RecordingSink) -> None:
    ids = [f"p{i}" for i in range(6)]
    workflow = make_workflow(
        [*(probe_node(i) for i in ids), probe_node("end")], [(i, "end") for i in ids]
    )
    await WorkflowExecutor(event_sinks=[sink]).execute(workflow, run_id="ev-2")
    assert_well_formed(sink.events, "ev-2")
    completed = {e.node_id for e in sink.of(EventType.NODE_COMPLETED)}
    assert completed == {*ids, "end"}


async def test_failed_run_ends_with_run_failed(sink: RecordingSink) -> None:
    workflow = make_workflow([node("a"), node("bad", "fail")], [("a", "bad")])
    await WorkflowExecutor(event_sinks=[sink]).execute(workflow, run_id="ev-3")
    assert_well_formed(sink.events, "ev-3")
    assert sink.events[-1].type is EventType.RUN_FAILED
    assert sink.events[-1].data["error"]["node_id"] == "bad"
    assert sink.events[-2].type is EventType.NODE_FAILED


async def test_cancelled_run_ends_with_run_cancelled(probe: Probe, sink: RecordingSink) -> None:
    workflow = make_workflow([probe_node("stuck", block=True)])
    executor = WorkflowExecutor(event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, run_id="ev-4"))
    await probe.wait_started("stuck")
    executor.cancel("ev-4")
    await task
    assert_well_formed(sink.events, "ev-4")
    assert sink.events[-1].type is EventType.RUN_CANCELLED


async def test_per_run_sinks_get_the_same_events_as_executor_sinks(
    sink: RecordingSink,
) -> None:
    own = RecordingSink()
    workflow = make_workflow([node("a"), node("b")], [("a", "b")])
    await WorkflowExecutor(event_sinks=[sink]).execute(workflow, event_sinks=[own])
    assert own.events == sink.events


# ------------------------------------------------------------------------------ stream


async def test_stream_yields_events_as_they_happen(probe: Probe) -> None:
    workflow = make_workflow(
        [probe_node("first"), probe_node("gate", block=True), probe_node("last")],
        [("first", "gate"), ("gate", "last")],
    )
    seen: list[Event] = []
    released_after: int | None = None
    async with asyncio.timeout(HANG_GUARD):  # a buffered stream would deadlock here
        async for event in WorkflowExecutor().stream(workflow, run_id="st-1"):
            seen.append(event)
            if event.type is EventType.NODE_STARTED and event.node_id == "gate":
                assert "last" not in probe.starts()
                assert probe.running == 1  # `gate` is blocked right now
                released_after = event.seq
                probe.release("gate")
    assert released_after is not None
    assert_well_formed(seen, "st-1")
    assert seen[-1].type is EventType.RUN_SUCCEEDED
    later = [(e.type, e.node_id) for e in seen if e.seq > released_after]
    assert (EventType.NODE_COMPLETED, "gate") in later
    assert (EventType.NODE_STARTED, "last") in later


async def test_closing_the_stream_early_cancels_the_run(probe: Probe) -> None:
    workflow = make_workflow([probe_node("stuck", block=True, cleanup_yields=3)])
    executor = WorkflowExecutor()
    # stream() is an async generator, though annotated as a bare AsyncIterator
    events = executor.stream(workflow, run_id="st-2")
    async with aclosing(events) as stream:
        async for event in stream:
            if event.type is EventType.NODE_STARTED:
                assert executor.active_runs() == ["st-2"]
                break
    assert probe.cancelled == ["stuck"]
    assert probe.cleaned_up == ["stuck"]
    assert executor.active_runs() == []


async def test_breaking_out_of_the_stream_cancels_the_run(
    probe: Probe, sink: RecordingSink
) -> None:
    workflow = make_workflow([probe_node("stuck", block=True)])
    executor = WorkflowExecutor(event_sinks=[sink])
    async for event in executor.stream(workflow, run_id="st-3"):
        if event.type is EventType.NODE_STARTED:
            break
    # the abandoned generator is closed by the event loop's async-generator finalizer
    await sink.wait_for(EventType.RUN_CANCELLED)
    assert probe.cancelled == ["stuck"]
    assert executor.active_runs() == []


async def test_stream_surfaces_errors_raised_before_the_run_starts() -> None:
    workflow = make_workflow([node("a")], input_schema={"type": "object", "required": ["x"]})
    with pytest.raises(InputValidationError):
        async for _ in WorkflowExecutor().stream(workflow, {}):
            pass


# ------------------------------------------------------------------- custom and tokens


async def test_node_custom_events_carry_name_and_data(sink: RecordingSink) -> None:
    workflow = make_workflow(
        [
            node(
                "talker",
                "engine_emit",
                config={"custom": [{"name": "progress", "data": {"pct": 50}}, {"name": "ping"}]},
            )
        ]
    )
    await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    custom = sink.of(EventType.NODE_CUSTOM)
    assert [(e.node_id, e.data) for e in custom] == [
        ("talker", {"name": "progress", "data": {"pct": 50}}),
        ("talker", {"name": "ping"}),
    ]
    assert sink.types().index("node.custom") > sink.types().index("node.started")


async def test_node_tokens_stream_in_order(sink: RecordingSink) -> None:
    tokens = ["Hel", "lo", ", ", "wor", "ld"]
    workflow = make_workflow([node("llm", "engine_emit", config={"tokens": tokens})])
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    assert result.output == {"llm": {"text": "Hello, world"}}
    kinds = sink.types()
    assert kinds == [
        "run.started",
        "node.started",
        *["node.token"] * len(tokens),
        "node.completed",
        "run.succeeded",
    ]
    assert [e.data["token"] for e in sink.of(EventType.NODE_TOKEN)] == tokens
    assert {e.data["attempt"] for e in sink.of(EventType.NODE_TOKEN)} == {1}
    assert {e.node_id for e in sink.of(EventType.NODE_TOKEN)} == {"llm"}


async def test_tokens_are_streamed_live() -> None:
    workflow = make_workflow([node("llm", "engine_emit", config={"tokens": ["a", "b", "c"]})])
    got: list[str] = []
    async for event in WorkflowExecutor().stream(workflow):
        if event.type is EventType.NODE_TOKEN:
            got.append(event.data["token"])
    assert got == ["a", "b", "c"]


async def test_events_serialise_to_json(sink: RecordingSink) -> None:
    workflow = make_workflow(
        [
            node("a", "transform", config={"output": {"n": "1", "s": "'x'", "l": "[1, 2]"}}),
            node("e", "engine_emit", config={"tokens": ["t"], "custom": [{"name": "c"}]}),
            node("f", "fail"),
        ],
        [("a", "e"), ("e", "f")],
    )
    await WorkflowExecutor(event_sinks=[sink]).execute(workflow, run_id="json-1")
    for event in sink.events:
        wire = event.to_dict()
        decoded = json.loads(json.dumps(wire))
        assert decoded == wire
        assert decoded["type"] == event.type.value
        assert decoded["seq"] == event.seq
        assert decoded["run_id"] == "json-1"
        assert set(decoded) == {"seq", "type", "run_id", "node_id", "timestamp", "data"}
