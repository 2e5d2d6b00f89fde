"""Parking: a run that waits on nothing but top-level delays and signals leaves the
executor (``WAITING``, ``parked``, ``wake_at``) with its state checkpointed, and a later
``continue_execution`` from that checkpoint goes on where it stopped."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.engine import (
    EventType,
    ExecutionConfig,
    InMemoryCheckpointStore,
    ListEventSink,
    NodeStatus,
    RunStatus,
    WorkflowExecutor,
)
from tests.engine.conftest import HANG_GUARD, RecordingSink, make_workflow, node

PARK_AFTER = 0.05


class ShiftedClock:
    """Real time, moved forward by ``offset`` seconds (a resume long after parking)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def executor(store: InMemoryCheckpointStore, clock: Any = None) -> WorkflowExecutor:
    return WorkflowExecutor(
        ExecutionConfig(enable_checkpoints=True),
        checkpoint_store=store,
        clock=clock or ShiftedClock(),
        park_after=PARK_AFTER,
    )


async def test_a_long_delay_parks_the_run_and_a_resume_after_its_time_finishes_it() -> None:
    store = InMemoryCheckpointStore()
    definition = make_workflow(
        [
            node("a", "transform", config={"output": {"v": "1"}}),
            node("nap", "delay", config={"seconds": 3600}),
            node("b", "transform", config={"output": {"v": "nodes.a.output.v + 1"}}),
        ],
        [("a", "nap"), ("nap", "b")],
    )
    sink = ListEventSink()
    started = time.time()
    result = await asyncio.wait_for(
        executor(store).execute(definition, run_id="r1", event_sinks=[sink]), HANG_GUARD
    )
    assert (result.status, result.parked) == (RunStatus.WAITING, True)
    assert result.wake_at is not None
    assert started + 3600 <= result.wake_at <= time.time() + 3600
    waiting = [e for e in sink.events if e.type is EventType.RUN_WAITING]
    assert [e.data["reason"] for e in waiting] == ["timer"]
    latest = await store.latest("r1")
    assert latest is not None
    assert latest.status == "waiting"
    assert latest.pending == {"nap": {"kind": "delay", "wake_at": result.wake_at}}
    assert set(latest.completed) == {"a"}
    # an hour later: the delay has nothing left to sleep, `a` does not run again
    later = executor(store, ShiftedClock(3601))
    resumed = await asyncio.wait_for(later.continue_execution(latest), HANG_GUARD)
    assert resumed.status is RunStatus.SUCCEEDED
    assert resumed.output == {"b": {"v": 2}}
    assert resumed.node_results["a"].metadata == {"restored": True}


async def test_a_resume_before_the_wake_time_parks_again() -> None:
    store = InMemoryCheckpointStore()
    definition = make_workflow([node("nap", "delay", config={"seconds": 3600})])
    first = await executor(store).execute(definition, run_id="r2")
    latest = await store.latest("r2")
    assert latest is not None
    again = await asyncio.wait_for(executor(store).continue_execution(latest), HANG_GUARD)
    assert again.parked
    assert again.wake_at == first.wake_at  # the first wake time stands


async def test_a_wait_parks_until_its_signal_and_keeps_its_deadline() -> None:
    store = InMemoryCheckpointStore()
    definition = make_workflow(
        [node("approve", "wait", config={"signal": "go", "timeout": 7200})],
    )
    first = executor(store)
    result = await asyncio.wait_for(first.execute(definition, run_id="r3"), HANG_GUARD)
    assert result.parked
    assert result.wake_at is not None  # the deadline: a timeout fires then
    latest = await store.latest("r3")
    assert latest is not None
    assert latest.pending["approve"] == {
        "kind": "wait",
        "signal": "go",
        "deadline": result.wake_at,
    }
    second = executor(store)
    second.signal("r3", "go", {"ok": True}, early=True)
    resumed = await asyncio.wait_for(second.continue_execution(latest), HANG_GUARD)
    assert resumed.status is RunStatus.SUCCEEDED
    assert resumed.output == {"approve": {"ok": True}}


async def test_a_wait_resumed_after_its_deadline_times_out() -> None:
    store = InMemoryCheckpointStore()
    definition = make_workflow([node("approve", "wait", config={"signal": "go", "timeout": 60})])
    parked = await executor(store).execute(definition, run_id="r4")
    assert parked.parked
    latest = await store.latest("r4")
    assert latest is not None
    late = await executor(store, ShiftedClock(61)).continue_execution(latest)
    assert late.status is RunStatus.FAILED
    assert late.error is not None
    assert late.error.kind == "timeout"


async def test_signals_for_a_later_wait_are_kept_across_parking() -> None:
    store = InMemoryCheckpointStore()
    definition = make_workflow(
        [
            node("first", "wait", config={"signal": "go"}),
            node("second", "wait", config={"signal": "later"}),
        ],
        [("first", "second")],
    )
    ex = executor(store)
    sink = RecordingSink()
    task = asyncio.create_task(ex.execute(definition, run_id="r5", event_sinks=[sink]))
    await sink.wait_for(EventType.RUN_WAITING)
    assert ex.signal("r5", "later", "kept") is True  # buffered: nobody waits for it yet
    result = await asyncio.wait_for(task, HANG_GUARD)
    assert result.parked
    assert result.wake_at is None  # only a signal wakes it
    latest = await store.latest("r5")
    assert latest is not None
    assert latest.signals == {"later": ["kept"]}
    second = executor(store)
    second.signal("r5", "go", "now", early=True)
    resumed = await asyncio.wait_for(second.continue_execution(latest), HANG_GUARD)
    assert resumed.status is RunStatus.SUCCEEDED
    assert resumed.output == {"second": "kept"}


async def test_a_signal_is_refused_once_the_run_has_parked() -> None:
    store = InMemoryCheckpointStore()
    definition = make_workflow([node("w", "wait", config={"signal": "go"})])
    ex = executor(store)
    refused: list[bool] = []
    sink = RecordingSink()
    task = asyncio.create_task(ex.execute(definition, run_id="r6", event_sinks=[sink]))
    await sink.wait_for(EventType.RUN_WAITING)
    root = ex._runs["r6"]  # the run's root graph
    park = root.park

    def parking() -> None:  # the moment the run parks, before its nodes stop
        refused.append(ex.signal("r6", "go", 1))
        park()

    root.park = parking  # type: ignore[method-assign]
    result = await asyncio.wait_for(task, HANG_GUARD)
    assert result.parked
    assert refused == [False]


async def test_nested_delays_and_busy_nodes_keep_a_run_in_the_process() -> None:
    store = InMemoryCheckpointStore()
    definition = make_workflow(
        [
            node(
                "each",
                "map",
                config={"items": "[1, 2]", "node": node("nap", "delay", config={"seconds": 0.3})},
            ),
            node("top", "delay", config={"seconds": 0.2}),
        ]
    )
    result = await asyncio.wait_for(executor(store).execute(definition, run_id="r7"), HANG_GUARD)
    assert result.status is RunStatus.SUCCEEDED
    assert not result.parked
    assert result.node_results["each"].status is NodeStatus.SUCCEEDED


async def test_without_checkpoints_nothing_parks() -> None:
    definition = make_workflow([node("nap", "delay", config={"seconds": 0.3})])
    ex = WorkflowExecutor(ExecutionConfig(), park_after=PARK_AFTER)
    result = await asyncio.wait_for(ex.execute(definition), HANG_GUARD)
    assert result.status is RunStatus.SUCCEEDED
