"""Built-in node types: noop, transform, delay, fail, map, loop, subworkflow, wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.engine import (
    EventType,
    InMemoryWorkflowRepository,
    NodeStatus,
    RunResult,
    RunStatus,
    WorkflowExecutor,
    create_workflow,
)
from tests.engine.conftest import (
    HANG_GUARD,
    FakeClock,
    Probe,
    RecordingSink,
    make_workflow,
    node,
    probe_node,
)


def failure(result: RunResult) -> tuple[str | None, str, str]:
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    return result.error.node_id, result.error.kind, result.error.message


# -------------------------------------------------------------------- noop / transform


async def test_noop_outputs_its_parents_outputs_by_id() -> None:
    workflow = make_workflow(
        [
            node("a", "transform", config={"output": {"n": "1"}}),
            node("b", "transform", config={"output": {"s": "'two'"}}),
            node("root_noop"),
            node("join"),
        ],
        [("a", "join"), ("b", "join")],
    )
    result = await WorkflowExecutor().execute(workflow, {"ignored": True})
    assert result.node_results["join"].output == {"a": {"n": 1}, "b": {"s": "two"}}
    assert result.node_results["root_noop"].output == {}


async def test_transform_evaluates_its_output_map() -> None:
    workflow = make_workflow(
        [
            node("first", "transform", config={"output": {"total": "input.qty * input.price"}}),
            node(
                "second",
                "transform",
                config={
                    "output": {
                        "vip": "nodes.first.output.total > vars.threshold",
                        "label": "'order-' + input.id",
                        "items": "[input.qty, nodes.first.output.total]",
                    }
                },
            ),
        ],
        [("first", "second")],
        vars={"threshold": 100},
    )
    result = await WorkflowExecutor().execute(workflow, {"qty": 3, "price": 50, "id": "A1"})
    assert result.output == {"second": {"vip": True, "label": "order-A1", "items": [3, 150]}}


async def test_transform_expression_error_fails_the_node() -> None:
    workflow = make_workflow([node("t", "transform", config={"output": {"x": "input.nope"}})])
    node_id, kind, message = failure(await WorkflowExecutor().execute(workflow, {}))
    assert (node_id, kind) == ("t", "expression")
    assert "input.nope" in message


# ------------------------------------------------------------------------------ delay


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (3600, 3600),  # a real sleep this long would hit the test timeout
        (0.5, 0.5),
        ("input.s * 2", 7200),  # a CEL expression
        ("{{ input.s + 1 }}", 3601),  # a template
    ],
)
async def test_delay_sleeps_on_the_engine_clock(
    clock: FakeClock, seconds: float | str, expected: float
) -> None:
    workflow = make_workflow(
        [node("wait", "delay", config={"seconds": seconds}), node("after")], [("wait", "after")]
    )
    before = clock.now()
    result = await WorkflowExecutor(clock=clock).execute(workflow, {"s": 3600})
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["wait"].output == {"slept": expected}
    assert clock.sleeps == [expected]
    assert clock.now() == before + expected
    assert result.node_results["after"].status is NodeStatus.SUCCEEDED


async def test_delay_rejects_a_negative_duration(clock: FakeClock) -> None:
    workflow = make_workflow([node("wait", "delay", config={"seconds": "input.s"})])
    node_id, kind, _ = failure(await WorkflowExecutor(clock=clock).execute(workflow, {"s": -1}))
    assert (node_id, kind) == ("wait", "config")
    assert clock.sleeps == []


# ------------------------------------------------------------------------------- fail


async def test_fail_fails_with_its_message() -> None:
    workflow = make_workflow(
        [node("drill", "fail", config={"message": "drill for {{ input.team }}"})]
    )
    node_id, kind, message = failure(await WorkflowExecutor().execute(workflow, {"team": "ops"}))
    assert (node_id, kind, message) == ("drill", "deliberate", "drill for ops")


async def test_fail_times_fails_only_the_first_attempts(clock: FakeClock) -> None:
    workflow = make_workflow(
        [node("drill", "fail", config={"times": 2}, retry={"max_retries": 5, "delay": 1})]
    )
    result = await WorkflowExecutor(clock=clock).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.output == {"drill": {"attempts": 3}}
    assert len(clock.sleeps) == 2


async def test_fail_times_without_retry_still_fails() -> None:
    workflow = make_workflow([node("drill", "fail", config={"times": 1})])
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.FAILED


# -------------------------------------------------------------------------------- map


async def test_map_with_a_node_body() -> None:
    workflow = make_workflow(
        [
            node(
                "m",
                "map",
                config={
                    "items": "input.xs",
                    "node": {
                        "id": "double",
                        "type": "transform",
                        "config": {"output": {"v": "item * 2", "i": "index"}},
                    },
                },
            )
        ]
    )
    result = await WorkflowExecutor().execute(workflow, {"xs": [5, 6, 7]})
    assert result.status is RunStatus.SUCCEEDED
    assert result.output == {"m": [{"v": 10, "i": 0}, {"v": 12, "i": 1}, {"v": 14, "i": 2}]}


async def test_map_with_a_workflow_body() -> None:
    body = {
        "id": "body",
        "nodes": [
            {"id": "sq", "type": "transform", "config": {"output": {"v": "item * item"}}},
            {
                "id": "fmt",
                "type": "transform",
                "config": {"output": {"s": "string(index) + ':' + string(nodes.sq.output.v)"}},
            },
        ],
        "edges": [{"source": "sq", "target": "fmt"}],
        "output": {"s": "nodes.fmt.output.s", "item": "input.item", "index": "input.index"},
    }
    workflow = make_workflow(
        [node("m", "map", config={"items": "input.xs", "workflow": body})],
    )
    result = await WorkflowExecutor().execute(workflow, {"xs": [3, 4]})
    assert result.output == {
        "m": [{"s": "0:9", "item": 3, "index": 0}, {"s": "1:16", "item": 4, "index": 1}]
    }


async def test_map_over_an_empty_list() -> None:
    workflow = make_workflow(
        [node("m", "map", config={"items": "[]", "node": {"id": "x", "type": "noop"}})]
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.output == {"m": []}


def blocking_map(max_concurrency: int | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "items": "input.xs",
        "node": {
            "id": "body",
            "type": "engine_probe",
            "config": {
                "key": "{{ 'm' + string(index) }}",
                "block": True,
                "output": "{{ item * 10 }}",
            },
        },
    }
    if max_concurrency is not None:
        config["max_concurrency"] = max_concurrency
    return node("m", "map", config=config)


async def test_map_results_are_in_item_order_whatever_the_finish_order(probe: Probe) -> None:
    workflow = make_workflow([blocking_map()])
    task = asyncio.create_task(WorkflowExecutor().execute(workflow, {"xs": [1, 2, 3, 4]}))
    await probe.wait_running(4)
    for key, still_running in zip(["m3", "m2", "m1", "m0"], [3, 2, 1, 0], strict=True):
        probe.release(key)
        await probe.wait_running(still_running)
    result = await task
    assert probe.ends() == ["m3", "m2", "m1", "m0"]
    assert result.output == {"m": [10, 20, 30, 40]}


@pytest.mark.parametrize("where", ["node", "config"])
async def test_map_honours_max_concurrency(probe: Probe, where: str) -> None:
    workflow = make_workflow(
        [blocking_map(2 if where == "node" else None)],
        config={"max_concurrent_tasks": 2} if where == "config" else {},
    )
    task = asyncio.create_task(WorkflowExecutor().execute(workflow, {"xs": list(range(7))}))
    await probe.wait_running(2)
    for _ in range(20):  # a map that over-starts would do it now
        await asyncio.sleep(0)
    assert probe.starts() == ["m0", "m1"]
    for i in range(7):
        probe.release(f"m{i}")
    result = await task
    assert result.status is RunStatus.SUCCEEDED
    assert probe.max_running == 2
    assert sorted(probe.starts()) == [f"m{i}" for i in range(7)]
    assert result.output == {"m": [i * 10 for i in range(7)]}


async def test_map_runs_items_in_batches_of_batch_size(probe: Probe) -> None:
    # max_concurrency 10 would start all five at once; batch_size 2 starts two, and the
    # next batch only when both have finished, though a slot is free before that
    workflow = make_workflow([blocking_map(10)], config={"batch_size": 2})
    task = asyncio.create_task(WorkflowExecutor().execute(workflow, {"xs": list(range(5))}))
    await probe.wait_running(2)
    probe.release("m1")
    await probe.wait_running(1)
    for _ in range(20):  # a map that refilled the free slot would start m2 now
        await asyncio.sleep(0)
    assert probe.starts() == ["m0", "m1"]
    probe.release("m0")
    await probe.wait_running(2)
    assert probe.starts() == ["m0", "m1", "m2", "m3"]
    for key in ("m2", "m3"):
        probe.release(key)
    await probe.wait_running(1)
    assert probe.starts()[-1] == "m4"
    probe.release("m4")
    result = await task
    assert result.status is RunStatus.SUCCEEDED
    assert probe.max_running == 2
    assert result.output == {"m": [i * 10 for i in range(5)]}


async def test_a_run_s_config_sets_the_batch_size(probe: Probe) -> None:
    workflow = make_workflow([blocking_map()], config={"batch_size": 3})
    run = WorkflowExecutor().execute(workflow, {"xs": list(range(4))}, config={"batch_size": 1})
    task = asyncio.create_task(run)
    for i in range(4):
        await probe.wait_started(f"m{i}")
        assert probe.running == 1
        probe.release(f"m{i}")
    result = await task
    assert probe.max_running == 1
    assert result.output == {"m": [i * 10 for i in range(4)]}


async def test_a_failing_item_stops_the_map_before_the_next_batch(probe: Probe) -> None:
    workflow = make_workflow(
        [map_with_failing_item(type="fail", config={"message": "bad item"})],
        config={"batch_size": 2},
    )
    task = asyncio.create_task(WorkflowExecutor().execute(workflow, {"xs": [1, 0, 2, 3]}))
    result = await task
    node_id, _, message = failure(result)
    assert (node_id, "bad item" in message) == ("m", True)
    # item 0 (index 1) failed in the first batch: indexes 2 and 3 (the second batch)
    # never started
    assert probe.starts() == ["m0"]


def map_with_failing_item(**failing: Any) -> dict[str, Any]:
    body = {
        "id": "body",
        "nodes": [
            {"id": "route", "type": "noop"},
            {"id": "boom", **failing},
            {
                "id": "work",
                "type": "engine_probe",
                "config": {"key": "{{ 'm' + string(index) }}", "block": True, "cleanup_yields": 10},
            },
        ],
        "edges": [
            {"source": "route", "target": "boom", "condition": "item == 0"},
            {"source": "route", "target": "work", "condition": "item != 0"},
        ],
    }
    return node("m", "map", config={"items": "input.xs", "workflow": body})


async def test_a_failing_item_fails_the_map(probe: Probe) -> None:
    workflow = make_workflow(
        [map_with_failing_item(type="fail", config={"message": "bad item"}), node("after")],
        [("m", "after")],
    )
    result = await WorkflowExecutor().execute(workflow, {"xs": [0, 1]})
    node_id, _, message = failure(result)
    assert node_id == "m"
    assert "bad item" in message
    assert result.node_results["after"].status is not NodeStatus.SUCCEEDED


async def test_a_failing_item_cancels_the_other_items_before_the_run_ends(
    probe: Probe,
) -> None:
    workflow = make_workflow(
        [map_with_failing_item(type="engine_raise", config={"after": "m1"})],
    )
    result = await WorkflowExecutor().execute(workflow, {"xs": [0, 1]})
    assert failure(result)[0] == "m"
    assert probe.cancelled == ["m1"]
    assert probe.cleaned_up == ["m1"]  # unwound before execute() returned


async def test_map_items_must_be_a_list() -> None:
    workflow = make_workflow(
        [node("m", "map", config={"items": "input.xs", "node": {"id": "x", "type": "noop"}})]
    )
    node_id, kind, _ = failure(await WorkflowExecutor().execute(workflow, {"xs": "abc"}))
    assert (node_id, kind) == ("m", "config")


# ------------------------------------------------------------------------------- loop


def counter_body(expression: str = "input.state.n + 1") -> dict[str, Any]:
    return {
        "id": "body",
        "nodes": [
            {
                "id": "step",
                "type": "transform",
                "config": {"output": {"n": expression, "it": "input.iteration", "k": "iteration"}},
            }
        ],
        "output": {
            "n": "nodes.step.output.n",
            "it": "nodes.step.output.it",
            "k": "nodes.step.output.k",
        },
    }


async def test_loop_runs_while_the_condition_over_last_holds() -> None:
    workflow = make_workflow(
        [
            node(
                "count",
                "loop",
                config={
                    "workflow": counter_body(),
                    "while": "last.n < 5",
                    "input": {"n": "input.start"},
                },
            )
        ]
    )
    result = await WorkflowExecutor().execute(workflow, {"start": 0})
    assert result.status is RunStatus.SUCCEEDED
    assert result.output == {"count": {"output": {"n": 5, "it": 5, "k": 5}, "iterations": 5}}


async def test_loop_passes_state_from_one_iteration_to_the_next() -> None:
    workflow = make_workflow(
        [
            node(
                "double",
                "loop",
                config={
                    "workflow": counter_body("input.state.n * 2"),
                    "while": "last.n < 100",
                    "input": {"n": "1"},
                },
            )
        ]
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.output == {"double": {"output": {"n": 128, "it": 7, "k": 7}, "iterations": 7}}


async def test_loop_condition_sees_the_iteration() -> None:
    workflow = make_workflow(
        [
            node(
                "l",
                "loop",
                config={
                    "workflow": counter_body(),
                    "while": "iteration < 3",
                    "input": {"n": "10"},
                },
            )
        ]
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.node_results["l"].output == {
        "output": {"n": 13, "it": 3, "k": 3},
        "iterations": 3,
    }


async def test_loop_stops_at_max_iterations() -> None:
    workflow = make_workflow(
        [
            node(
                "l",
                "loop",
                config={
                    "workflow": counter_body(),
                    "while": "true",
                    "max_iterations": 4,
                    "input": {"n": "0"},
                },
            )
        ]
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["l"].output == {
        "output": {"n": 4, "it": 4, "k": 4},
        "iterations": 4,
    }


async def test_a_failing_loop_body_fails_the_loop() -> None:
    body = {"id": "body", "nodes": [{"id": "f", "type": "fail", "config": {"message": "nope"}}]}
    workflow = make_workflow(
        [node("l", "loop", config={"workflow": body, "while": "true", "max_iterations": 3})]
    )
    node_id, _, message = failure(await WorkflowExecutor().execute(workflow))
    assert node_id == "l"
    assert "nope" in message


# ------------------------------------------------------------------------ subworkflow


def child(offset: int) -> dict[str, Any]:
    return {
        "id": "child",
        "nodes": [
            {
                "id": "t",
                "type": "transform",
                "config": {"output": {"r": f"input.x + {offset}", "tag": "input.tag"}},
            }
        ],
        "output": {"result": "nodes.t.output.r", "tag": "nodes.t.output.tag"},
    }


@pytest.fixture
def repo() -> InMemoryWorkflowRepository:
    repo = InMemoryWorkflowRepository()
    assert repo.add(create_workflow(child(1))).version == 1
    assert repo.add(create_workflow(child(100))).version == 2
    return repo


async def test_subworkflow_runs_a_pinned_or_latest_version(
    repo: InMemoryWorkflowRepository, sink: RecordingSink
) -> None:
    child_input = {"x": "input.value * 2", "tag": "'from-parent'"}
    workflow = make_workflow(
        [
            node(
                "pinned",
                "subworkflow",
                config={"workflow_id": "child", "version": 1, "input": child_input},
            ),
            node("latest", "subworkflow", config={"workflow_id": "child", "input": child_input}),
        ]
    )
    executor = WorkflowExecutor(workflows=repo, event_sinks=[sink])
    result = await executor.execute(workflow, {"value": 5})
    assert result.status is RunStatus.SUCCEEDED
    assert result.output == {
        "pinned": {"result": 11, "tag": "from-parent"},
        "latest": {"result": 110, "tag": "from-parent"},
    }
    # the child's nodes report their events inside the parent's run
    child_nodes = {
        e.node_id for e in sink.of(EventType.NODE_COMPLETED) if e.node_id not in result.output
    }
    assert len(child_nodes) == 2
    assert all(n is not None and n.startswith(("pinned", "latest")) for n in child_nodes)


@pytest.mark.parametrize(("workflow_id", "version"), [("no-such-workflow", None), ("child", 3)])
async def test_subworkflow_unknown_workflow_fails_the_node(
    repo: InMemoryWorkflowRepository, workflow_id: str, version: int | None
) -> None:
    config: dict[str, Any] = {"workflow_id": workflow_id}
    if version is not None:
        config["version"] = version
    workflow = make_workflow([node("sub", "subworkflow", config=config)])
    result = await WorkflowExecutor(workflows=repo).execute(workflow)
    node_id, kind, message = failure(result)
    assert (node_id, kind) == ("sub", "workflow_not_found")
    assert workflow_id in message
    assert result.node_results["sub"].status is NodeStatus.FAILED


async def test_subworkflow_without_a_resolver_fails_the_node() -> None:
    workflow = make_workflow([node("sub", "subworkflow", config={"workflow_id": "child"})])
    node_id, _, message = failure(await WorkflowExecutor().execute(workflow))
    assert node_id == "sub"
    assert "resolver" in message


# ------------------------------------------------------------------------------- wait


async def test_wait_parks_the_run_until_a_signal_delivers_the_payload(
    sink: RecordingSink,
) -> None:
    workflow = make_workflow(
        [
            node("approval", "wait", config={"signal": "approve"}),
            node("after", "transform", config={"output": {"by": "nodes.approval.output.by"}}),
        ],
        [("approval", "after")],
    )
    executor = WorkflowExecutor(event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, run_id="w-1"))
    waiting = await sink.wait_for(EventType.RUN_WAITING)
    assert waiting.data == {"signal": "approve"}
    assert executor.status("w-1") is RunStatus.WAITING
    executor.signal("w-1", "something-else", {"by": "nobody"})
    for _ in range(10):
        await asyncio.sleep(0)
    assert executor.status("w-1") is RunStatus.WAITING  # another name does not wake it
    executor.signal("w-1", "approve", {"by": "alice"})
    result = await task
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["approval"].output == {"by": "alice"}
    assert result.output == {"after": {"by": "alice"}}
    types = sink.types()
    assert types.index("run.waiting") < types.index("run.resumed") < types.index("run.succeeded")


async def test_a_signal_sent_before_the_wait_starts_is_kept(
    probe: Probe, sink: RecordingSink
) -> None:
    workflow = make_workflow(
        [probe_node("before", block=True), node("approval", "wait", config={"signal": "go"})],
        [("before", "approval")],
    )
    executor = WorkflowExecutor(event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, run_id="w-2"))
    await probe.wait_started("before")
    executor.signal("w-2", "go", [1, 2, 3])
    probe.release("before")
    result = await asyncio.wait_for(task, HANG_GUARD)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["approval"].output == [1, 2, 3]
    assert sink.of(EventType.RUN_WAITING) == []


async def test_two_waits_on_one_signal_each_get_one_payload(sink: RecordingSink) -> None:
    workflow = make_workflow(
        [node("w1", "wait", config={"signal": "go"}), node("w2", "wait", config={"signal": "go"})]
    )
    executor = WorkflowExecutor(event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, run_id="w-3"))
    await sink.wait_for(EventType.RUN_WAITING)
    executor.signal("w-3", "go", "first")
    executor.signal("w-3", "go", "second")
    result = await asyncio.wait_for(task, HANG_GUARD)
    assert sorted(result.output.values()) == ["first", "second"]


async def test_wait_timeout_fails_the_node_with_kind_timeout(sink: RecordingSink) -> None:
    # real time is the point: the wait's timeout is enforced by asyncio.timeout()
    workflow = make_workflow([node("approval", "wait", config={"signal": "go", "timeout": 0.02})])
    executor = WorkflowExecutor(event_sinks=[sink])
    result = await executor.execute(workflow, run_id="w-4")
    node_id, kind, message = failure(result)
    assert (node_id, kind) == ("approval", "timeout")
    assert "go" in message
    assert sink.types()[-1] == "run.failed"


async def test_a_timed_out_wait_does_not_report_the_run_resumed(sink: RecordingSink) -> None:
    workflow = make_workflow([node("approval", "wait", config={"signal": "go", "timeout": 0.02})])
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert sink.of(EventType.RUN_WAITING)
    assert sink.of(EventType.RUN_RESUMED) == []


async def test_cancelling_a_waiting_run_does_not_report_it_resumed(sink: RecordingSink) -> None:
    workflow = make_workflow([node("approval", "wait", config={"signal": "go"})])
    executor = WorkflowExecutor(event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, run_id="w-5"))
    await sink.wait_for(EventType.RUN_WAITING)
    executor.cancel("w-5")
    result = await task
    assert result.status is RunStatus.CANCELLED
    assert result.node_results["approval"].status is NodeStatus.CANCELLED
    assert sink.types()[-2:] == ["run.waiting", "run.cancelled"]
