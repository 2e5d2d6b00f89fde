"""The scheduler's rules, as WorkflowExecutor applies them: readiness, join "any",
skipping, conditions, parallelism, outputs, variables, errors, timeouts, retries,
fallbacks, input validation and custom node return values."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from app.engine import (
    BaseNode,
    EventType,
    ExecutionConfig,
    InputValidationError,
    ListEventSink,
    NodeContext,
    NodeRegistry,
    NodeResult,
    NodeStatus,
    RunResult,
    RunStatus,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowExecutor,
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


def statuses(result: RunResult) -> dict[str, str]:
    return {node_id: record.status.value for node_id, record in result.node_results.items()}


async def start(
    executor: WorkflowExecutor, workflow: WorkflowDefinition, input_data: Any = None, **kw: Any
) -> asyncio.Task[RunResult]:
    task = asyncio.create_task(executor.execute(workflow, input_data, **kw))
    await asyncio.sleep(0)
    return task


# ------------------------------------------------------------------------------ readiness


async def test_node_waits_until_every_incoming_edge_is_resolved(
    probe: Probe, sink: RecordingSink
) -> None:
    workflow = make_workflow(
        [probe_node("a"), probe_node("b", block=True), probe_node("c")],
        [("a", "c"), ("b", "c")],
    )
    executor = WorkflowExecutor(event_sinks=[sink])
    task = await start(executor, workflow)
    await probe.wait_started("b")
    await sink.wait_for(EventType.NODE_COMPLETED, "a")
    for _ in range(10):  # give a wrongly eager scheduler every chance to start `c`
        await asyncio.sleep(0)
    assert "c" not in probe.starts()
    probe.release("b")
    result = await task
    assert result.status is RunStatus.SUCCEEDED
    assert probe.position("end", "a") < probe.position("start", "c")
    assert probe.position("end", "b") < probe.position("start", "c")


async def test_node_runs_when_one_of_its_resolved_edges_is_taken() -> None:
    workflow = make_workflow(
        [
            node("a", "transform", config={"output": {"n": "1"}}),
            node("b", "transform", config={"output": {"n": "2"}}),
            node("c"),
        ],
        [("a", "c", "false"), ("b", "c", "true")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.node_results["c"].status is NodeStatus.SUCCEEDED
    # a noop's input holds the outputs of every parent that succeeded
    assert result.output == {"c": {"a": {"n": 1}, "b": {"n": 2}}}


async def test_join_any_runs_on_the_first_taken_edge_and_only_once(
    probe: Probe, sink: RecordingSink
) -> None:
    workflow = make_workflow(
        [
            probe_node("fast"),
            probe_node("slow", block=True),
            node("j", "engine_probe", join="any"),
        ],
        [("fast", "j"), ("slow", "j")],
    )
    executor = WorkflowExecutor(event_sinks=[sink])
    task = await start(executor, workflow)
    await sink.wait_for(EventType.NODE_COMPLETED, "j")  # while `slow` still blocks
    assert "slow" not in probe.ends()
    probe.release("slow")
    result = await task
    assert result.status is RunStatus.SUCCEEDED
    assert probe.starts().count("j") == 1
    assert [e.node_id for e in sink.of(EventType.NODE_STARTED)].count("j") == 1
    assert statuses(result) == {"fast": "succeeded", "slow": "succeeded", "j": "succeeded"}


async def test_join_any_waits_for_a_taken_edge() -> None:
    workflow = make_workflow(
        [node("a"), node("b"), node("j", join="any")],
        [("a", "j", "false"), ("b", "j", "true")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.node_results["j"].status is NodeStatus.SUCCEEDED


async def test_join_any_with_no_taken_edge_is_skipped() -> None:
    workflow = make_workflow(
        [node("a"), node("b"), node("j", join="any")],
        [("a", "j", "false"), ("b", "j", "false")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.node_results["j"].status is NodeStatus.SKIPPED


async def test_skipping_propagates_transitively(sink: RecordingSink, probe: Probe) -> None:
    workflow = make_workflow(
        [probe_node("a"), probe_node("b"), probe_node("c"), probe_node("d"), probe_node("e")],
        [("a", "b", "false"), ("b", "c"), ("c", "d"), ("a", "e")],
    )
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert statuses(result) == {
        "a": "succeeded",
        "b": "skipped",
        "c": "skipped",
        "d": "skipped",
        "e": "succeeded",
    }
    assert sorted(e.node_id or "" for e in sink.of(EventType.NODE_SKIPPED)) == ["b", "c", "d"]
    assert sorted(probe.starts()) == ["a", "e"]
    # the default output holds only the leaves that succeeded
    assert result.output == {"e": {"node": "e"}}


async def test_a_skipped_parent_does_not_block_a_node_with_another_taken_edge() -> None:
    workflow = make_workflow(
        [node("a"), node("b"), node("d")],
        [("a", "b", "false"), ("b", "d"), ("a", "d")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert statuses(result) == {"a": "succeeded", "b": "skipped", "d": "succeeded"}
    assert result.output == {"d": {"a": {}}}


@pytest.mark.parametrize(
    ("condition", "taken"),
    [
        ("nodes.a.output.n > 1", True),
        ("nodes.a.output.n > 5", False),
        ("input.flag", True),
        ("!input.flag", False),
        ("vars.mode == 'fast'", True),
        ("vars.mode == 'slow'", False),
        ("nodes.a.output.n == 2 && input.flag && vars.mode == 'fast'", True),
    ],
)
async def test_conditions_see_node_outputs_input_and_vars(condition: str, taken: bool) -> None:
    workflow = make_workflow(
        [node("a", "transform", config={"output": {"n": "2"}}), node("b")],
        [("a", "b", condition)],
        vars={"mode": "fast"},
    )
    result = await WorkflowExecutor().execute(workflow, {"flag": True})
    assert result.status is RunStatus.SUCCEEDED
    expected = NodeStatus.SUCCEEDED if taken else NodeStatus.SKIPPED
    assert result.node_results["b"].status is expected


# ---------------------------------------------------------------------- max_parallel_nodes


class Gauge:
    """How many ``gauge`` nodes run at once; they all wait for ``open``."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.finished = 0
        self.changed = asyncio.Condition()
        self.open = asyncio.Event()


_gauge = Gauge()


class GaugeNode(BaseNode):
    """Counts itself in ``_gauge`` while it runs and waits until the gauge opens."""

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        gauge = _gauge
        async with gauge.changed:
            gauge.running += 1
            gauge.peak = max(gauge.peak, gauge.running)
            gauge.changed.notify_all()
        await gauge.open.wait()
        async with gauge.changed:
            gauge.running -= 1
            gauge.finished += 1
            gauge.changed.notify_all()
        return NodeResult(output=node_context.node_id)


@pytest.fixture
def gauge() -> Iterator[Gauge]:
    global _gauge
    _gauge = Gauge()
    NodeRegistry.register("scheduler_gauge")(GaugeNode)
    try:
        yield _gauge
    finally:
        NodeRegistry.unregister("scheduler_gauge")


@pytest.mark.parametrize("limit", [1, 2, 4])
@pytest.mark.parametrize("where", ["executor", "workflow", "run"])
async def test_max_parallel_nodes_is_never_exceeded(gauge: Gauge, limit: int, where: str) -> None:
    knob = {"max_parallel_nodes": limit}
    workflow = make_workflow(
        [node(f"n{i}", "scheduler_gauge") for i in range(12)],
        config=knob if where == "workflow" else {},
    )
    executor = WorkflowExecutor(ExecutionConfig(**knob) if where == "executor" else None)
    task = await start(executor, workflow, config=knob if where == "run" else None)
    async with asyncio.timeout(HANG_GUARD):
        async with gauge.changed:
            await gauge.changed.wait_for(lambda: gauge.running == limit)
    for _ in range(20):  # a wrongly eager scheduler would start more now
        await asyncio.sleep(0)
    assert gauge.running == limit
    gauge.open.set()
    result = await task
    assert result.status is RunStatus.SUCCEEDED
    assert gauge.finished == 12
    assert gauge.peak == limit


# --------------------------------------------------------------------- outputs and vars


async def test_output_map_is_evaluated_at_the_end() -> None:
    workflow = make_workflow(
        [
            node("a", "transform", config={"output": {"n": "2"}}),
            node("b", "transform", config={"output": {"n": "nodes.a.output.n * 10"}}),
        ],
        [("a", "b")],
        output={"sum": "nodes.a.output.n + nodes.b.output.n", "echo": "input.x"},
    )
    result = await WorkflowExecutor().execute(workflow, {"x": "hi"})
    assert result.status is RunStatus.SUCCEEDED
    assert result.output == {"sum": 22, "echo": "hi"}


async def test_default_output_is_the_leaves_outputs_by_id() -> None:
    workflow = make_workflow(
        [
            node("root", "transform", config={"output": {"v": "1"}}),
            node("left", "transform", config={"output": {"v": "nodes.root.output.v + 1"}}),
            node("right", "transform", config={"output": {"v": "nodes.root.output.v + 2"}}),
        ],
        [("root", "left"), ("root", "right")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.output == {"left": {"v": 2}, "right": {"v": 3}}


async def test_output_map_that_fails_to_evaluate_fails_the_run() -> None:
    workflow = make_workflow([node("a")], output={"x": "input.missing"})
    result = await WorkflowExecutor().execute(workflow, {})
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.kind == "expression"


async def test_node_variables_merge_into_vars_for_later_expressions() -> None:
    workflow = make_workflow(
        [
            node("setter", "engine_vars", config={"variables": {"limit": 5}}),
            node("reader", "transform", config={"output": {"seen": "vars.limit + vars.base"}}),
            node("never"),
        ],
        [("setter", "reader", "vars.limit == 5"), ("setter", "never", "vars.limit != 5")],
        vars={"base": 1},
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["reader"].output == {"seen": 6}
    assert result.node_results["never"].status is NodeStatus.SKIPPED
    assert result.variables == {"base": 1, "limit": 5}


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("level", ["config", "node"])
async def test_on_error_continue_skips_the_failed_nodes_downstream_only(level: str) -> None:
    bad: dict[str, Any] = {"on_error": "continue"} if level == "node" else {}
    workflow = make_workflow(
        [
            node("bad", "fail", config={"message": "nope"}, **bad),
            node("after_bad"),
            node("good", "transform", config={"output": {"ok": "true"}}),
            node("after_good"),
        ],
        [("bad", "after_bad"), ("good", "after_good")],
        config={"on_error": "continue"} if level == "config" else {},
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert statuses(result) == {
        "bad": "failed",
        "after_bad": "skipped",
        "good": "succeeded",
        "after_good": "succeeded",
    }
    assert [(e.node_id, e.kind, e.message) for e in result.errors] == [
        ("bad", "deliberate", "nope")
    ]
    assert result.output == {"after_good": {"good": {"ok": True}}}


async def test_on_error_stop_fails_the_run_and_cancels_running_nodes(probe: Probe) -> None:
    workflow = make_workflow(
        [
            node("bad", "engine_raise", config={"after": "slow"}),
            probe_node("slow", block=True),
            probe_node("after_slow"),
        ],
        [("slow", "after_slow")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.node_id == "bad"
    assert "RuntimeError: boom" in result.error.message
    assert probe.cancelled == ["slow"]
    assert statuses(result) == {
        "bad": "failed",
        "slow": "cancelled",
        "after_slow": "cancelled",
    }
    assert result.output is None


@pytest.mark.parametrize(("max_errors", "status"), [(2, "failed"), (3, "succeeded")])
async def test_max_errors(max_errors: int, status: str) -> None:
    workflow = make_workflow(
        [node("f1", "fail"), node("f2", "fail"), node("ok", "transform", config={"output": {}})],
        config={"on_error": "continue", "max_errors": max_errors, "max_parallel_nodes": 1},
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status.value == status
    assert len(result.errors) == 2
    if status == "failed":
        assert result.error is not None
        assert result.error.kind == "max_errors"


# ----------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("where", ["node", "config"])
async def test_node_timeout_fails_the_node_with_kind_timeout(
    where: str, probe: Probe, sink: RecordingSink
) -> None:
    # real time is the point here: asyncio.timeout() is how node timeouts are enforced
    spec = probe_node("stuck", block=True)
    if where == "node":
        spec["timeout"] = 0.02
    workflow = make_workflow([spec], config={"node_timeout": 0.02} if where == "config" else {})
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert (result.error.node_id, result.error.kind) == ("stuck", "timeout")
    assert result.node_results["stuck"].error_kind == "timeout"
    [failed] = sink.of(EventType.NODE_FAILED)
    assert failed.data["kind"] == "timeout"
    assert probe.cancelled == ["stuck"]  # the node's work was cancelled, not abandoned


async def test_run_timeout_fails_the_run_with_kind_timeout(
    probe: Probe, sink: RecordingSink
) -> None:
    workflow = make_workflow([probe_node("stuck", block=True)], config={"timeout_seconds": 0.02})
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.kind == "timeout"
    assert probe.cancelled == ["stuck"]
    assert result.node_results["stuck"].status is NodeStatus.CANCELLED
    assert sink.events[-1].type is EventType.RUN_FAILED


# ------------------------------------------------------------------------------ retries


async def test_retry_policy_retries_with_growing_backoff_on_the_clock(
    clock: FakeClock, sink: RecordingSink
) -> None:
    workflow = make_workflow(
        [
            node(
                "flaky",
                "fail",
                config={"times": 3},
                retry={"max_retries": 3, "delay": 1.0, "backoff": 2.0},
            )
        ]
    )
    before = clock.now()
    result = await WorkflowExecutor(clock=clock, event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.output == {"flaky": {"attempts": 4}}
    assert result.node_results["flaky"].attempts == 4
    retries = sink.of(EventType.NODE_RETRY)
    assert [(e.data["attempt"], e.data["delay"]) for e in retries] == [
        (2, 1.0),
        (3, 2.0),
        (4, 4.0),
    ]
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert clock.now() == before + 7.0
    assert [e.node_id for e in sink.of(EventType.NODE_STARTED)] == ["flaky"]


async def test_retries_exhausted_fail_the_node(clock: FakeClock, sink: RecordingSink) -> None:
    workflow = make_workflow(
        [node("never", "fail", retry={"max_retries": 2, "delay": 0.5, "backoff": 3.0})]
    )
    result = await WorkflowExecutor(clock=clock, event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.node_results["never"].attempts == 3
    assert clock.sleeps == [0.5, 1.5]
    [failed] = sink.of(EventType.NODE_FAILED)
    assert failed.data["attempts"] == 3
    assert failed.data["kind"] == "deliberate"


async def test_retry_delay_is_capped_by_max_delay(clock: FakeClock) -> None:
    workflow = make_workflow(
        [
            node(
                "n",
                "fail",
                retry={"max_retries": 4, "delay": 1.0, "backoff": 10.0, "max_delay": 5.0},
            )
        ]
    )
    await WorkflowExecutor(clock=clock).execute(workflow)
    assert clock.sleeps == [1.0, 5.0, 5.0, 5.0]


async def test_config_retry_failed_nodes_uses_the_config_defaults(clock: FakeClock) -> None:
    config = ExecutionConfig(retry_failed_nodes=True, max_retries=2, retry_delay=0.25)
    workflow = make_workflow([node("n", "fail", config={"times": 2})])
    result = await WorkflowExecutor(config, clock=clock).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert clock.sleeps == [0.25, 0.5]


async def test_on_error_retry_on_a_node_retries_it(clock: FakeClock) -> None:
    workflow = make_workflow([node("n", "fail", config={"times": 1}, on_error="retry")])
    result = await WorkflowExecutor(clock=clock).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["n"].attempts == 2


async def test_retry_on_limits_the_error_kinds_retried(clock: FakeClock) -> None:
    workflow = make_workflow(
        [node("n", "fail", config={"times": 1}, retry={"retry_on": ["timeout"]})]
    )
    result = await WorkflowExecutor(clock=clock).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.node_results["n"].attempts == 1
    assert clock.sleeps == []


async def test_no_retry_without_a_policy(clock: FakeClock) -> None:
    workflow = make_workflow([node("n", "fail", config={"times": 1})])
    result = await WorkflowExecutor(clock=clock).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.node_results["n"].attempts == 1


# ---------------------------------------------------------------------------- fallbacks


async def test_fallback_output_stands_in_for_the_failed_node(sink: RecordingSink) -> None:
    workflow = make_workflow(
        [
            node("primary", "fail", fallback="backup"),
            node("backup", "transform", config={"output": {"from": "'backup'"}}),
            node("down", "transform", config={"output": {"saw": "nodes.primary.output.from"}}),
        ],
        [("primary", "down")],
    )
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["down"].output == {"saw": "backup"}
    primary = result.node_results["primary"]
    assert primary.status is NodeStatus.SUCCEEDED
    assert primary.fallback_from == "backup"
    assert primary.output == {"from": "backup"}
    assert result.node_results["backup"].status is NodeStatus.SUCCEEDED
    # the standby fallback is not a leaf of its own
    assert result.output == {"down": {"saw": "backup"}}
    seen = [(e.type.value, e.node_id) for e in sink.events]
    assert seen.index(("node.failed", "primary")) < seen.index(("node.started", "backup"))
    assert seen.index(("node.completed", "backup")) < seen.index(("node.started", "down"))
    assert seen[-1] == ("run.succeeded", None)


async def test_a_failing_fallback_fails_the_original_node() -> None:
    workflow = make_workflow(
        [
            node("primary", "fail", config={"message": "first"}, fallback="backup"),
            node("backup", "fail", config={"message": "second"}),
            node("down"),
        ],
        [("primary", "down")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.node_id == "primary"
    assert result.node_results["primary"].status is NodeStatus.FAILED
    assert result.node_results["backup"].status is NodeStatus.FAILED


async def test_fallback_chain_is_followed() -> None:
    workflow = make_workflow(
        [
            node("primary", "fail", fallback="second"),
            node("second", "fail", fallback="third"),
            node("third", "transform", config={"output": {"from": "'third'"}}),
            node("down", "transform", config={"output": {"saw": "nodes.primary.output.from"}}),
        ],
        [("primary", "down")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["down"].output == {"saw": "third"}


# ------------------------------------------------------------------ conditions that fail


async def test_a_condition_that_errors_fails_the_run_naming_the_edge() -> None:
    workflow = make_workflow(
        [node("a", "transform", config={"output": {"n": "1"}}), node("b")],
        [("a", "b", "nodes.a.output.missing > 0")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.kind == "expression"
    assert "a->b" in str(result.error)
    assert result.node_results["b"].status is not NodeStatus.SUCCEEDED


# ------------------------------------------------------------------------------- input


async def test_input_schema_rejects_bad_input() -> None:
    workflow = make_workflow(
        [node("a")],
        input_schema={
            "type": "object",
            "required": ["order_id"],
            "properties": {"order_id": {"type": "string"}},
        },
    )
    sink = ListEventSink()
    executor = WorkflowExecutor(event_sinks=[sink])
    with pytest.raises(InputValidationError) as info:
        await executor.execute(workflow, {"order_id": 7})
    assert any("order_id" in problem for problem in info.value.problems)
    with pytest.raises(InputValidationError):
        await executor.execute(workflow, {})
    assert sink.events == []  # no run started
    assert executor.active_runs() == []
    ok = await executor.execute(workflow, {"order_id": "A-1"})
    assert ok.status is RunStatus.SUCCEEDED


# ----------------------------------------------------------------------- custom nodes


async def test_a_plain_return_value_is_the_output() -> None:
    workflow = make_workflow(
        [
            node("plain", "engine_plain", config={"value": {"k": 41}}),
            node("next", "transform", config={"output": {"k": "nodes.plain.output.k + 1"}}),
        ],
        [("plain", "next")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.node_results["plain"].output == {"k": 41}
    assert result.output == {"next": {"k": 42}}


async def test_an_exception_in_a_custom_node_fails_it_with_the_text(
    sink: RecordingSink,
) -> None:
    workflow = make_workflow([node("boom", "engine_raise", config={"message": "kaput 42"})])
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.FAILED
    [failed] = sink.of(EventType.NODE_FAILED)
    assert failed.node_id == "boom"
    assert "kaput 42" in failed.data["error"]
    assert "RuntimeError" in failed.data["error"]
    assert failed.data["kind"] == "execution"
    assert result.node_results["boom"].error == failed.data["error"]
