"""Timeouts and cancellation, the error policy (on_error, error_handler, max_errors,
the ``handle_error`` subclass hook), lifecycle hooks and callback objects."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.engine import (
    DeliberateFailure,
    EventType,
    ExecutionConfig,
    NodeContext,
    NodeExecutionError,
    NodeResult,
    NodeSpec,
    NodeStatus,
    RunResult,
    RunStatus,
    WorkflowDefinition,
    WorkflowExecutor,
)
from tests.engine.conftest import (
    FakeClock,
    Probe,
    RecordingSink,
    make_workflow,
    node,
    probe_node,
)


def statuses(result: RunResult) -> dict[str, str]:
    return {node_id: record.status.value for node_id, record in result.node_results.items()}


def failure(result: RunResult) -> tuple[str | None, str, str]:
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    return result.error.node_id, result.error.kind, result.error.message


# ------------------------------------------------------------------------------ timeouts
# Node and run timeouts are enforced with asyncio.timeout() in loop time, so these tests
# use tiny real timeouts on nodes that block forever; they assert outcomes, not timings.


@pytest.mark.parametrize(
    ("spec_timeout", "config"),
    [
        (0.01, {}),
        (None, {"node_timeout": 0.01}),
        (0.01, {"node_timeout": 3600}),  # the node's own timeout wins over the default
    ],
)
async def test_a_node_timeout_cancels_the_node_and_reports_kind_timeout(
    spec_timeout: float | None, config: dict[str, Any], probe: Probe, sink: RecordingSink
) -> None:
    spec = probe_node("stuck", block=True, cleanup_yields=2)
    if spec_timeout is not None:
        spec["timeout"] = spec_timeout
    workflow = make_workflow([spec, probe_node("after")], [("stuck", "after")], config=config)
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)

    node_id, kind, message = failure(result)
    assert (node_id, kind) == ("stuck", "timeout")
    assert message == "timed out after 0.01s"
    assert result.node_results["stuck"].error_kind == "timeout"
    [failed] = sink.of(EventType.NODE_FAILED)
    assert (failed.node_id, failed.data["kind"]) == ("stuck", "timeout")
    # the node's task saw CancelledError and finished its clean-up before the run ended
    assert probe.cancelled == ["stuck"]
    assert probe.cleaned_up == ["stuck"]
    assert "after" not in probe.starts()


async def test_a_node_timeout_longer_than_node_timeout_overrides_it(probe: Probe) -> None:
    spec = probe_node("slow", block=True)
    spec["timeout"] = 3600
    workflow = make_workflow([spec], config={"node_timeout": 0.01})
    task = asyncio.create_task(WorkflowExecutor().execute(workflow))
    await probe.wait_started("slow")
    await asyncio.sleep(0.05)  # well past node_timeout: only the node's own timeout counts
    probe.release("slow")
    result = await task
    assert result.status is RunStatus.SUCCEEDED
    assert probe.cancelled == []


async def test_the_run_timeout_cancels_running_nodes_and_reports_kind_timeout(
    probe: Probe, sink: RecordingSink
) -> None:
    workflow = make_workflow(
        [probe_node("first"), probe_node("stuck", block=True), probe_node("never")],
        [("first", "stuck"), ("stuck", "never")],
        config={"timeout_seconds": 0.02},
    )
    result = await WorkflowExecutor(event_sinks=[sink]).execute(workflow)
    node_id, kind, message = failure(result)
    assert (node_id, kind) == (None, "timeout")
    assert message == "the run timed out after 0.02s"
    assert probe.cancelled == ["stuck"]
    assert statuses(result) == {"first": "succeeded", "stuck": "cancelled", "never": "cancelled"}
    assert sink.events[-1].type is EventType.RUN_FAILED
    assert sink.events[-1].data["error"]["kind"] == "timeout"


async def test_a_run_timeout_given_per_run_applies(probe: Probe) -> None:
    workflow = make_workflow([probe_node("stuck", block=True)])
    result = await WorkflowExecutor().execute(workflow, config={"timeout_seconds": 0.01})
    assert failure(result)[1] == "timeout"
    assert probe.cancelled == ["stuck"]


# --------------------------------------------------------------------------- on_error


def diamond(fail_fields: dict[str, Any] | None = None) -> WorkflowDefinition:
    """``bad`` fails; ``bad_child`` depends on it; ``ok`` -> ``ok_child`` do not."""
    return make_workflow(
        [
            node("bad", "fail", **(fail_fields or {})),
            probe_node("bad_child"),
            probe_node("ok"),
            probe_node("ok_child"),
            probe_node("join_all"),
        ],
        [("bad", "bad_child"), ("ok", "ok_child"), ("bad_child", "join_all"), ("ok", "join_all")],
    )


async def test_on_error_stop_is_the_default_and_fails_the_run(probe: Probe) -> None:
    assert ExecutionConfig().on_error == "stop"
    # `bad` raises once `ok` is running, so the failure finds the other branch mid-flight
    workflow = make_workflow(
        [
            node("bad", "engine_raise", config={"after": "ok"}),
            probe_node("ok", block=True),
            probe_node("ok_child"),
        ],
        [("ok", "ok_child")],
    )
    result = await WorkflowExecutor().execute(workflow)
    assert failure(result)[:2] == ("bad", "execution")
    assert probe.cancelled == ["ok"]
    assert statuses(result) == {"bad": "failed", "ok": "cancelled", "ok_child": "cancelled"}
    assert result.errors == []


@pytest.mark.parametrize("where", ["config", "node"])
async def test_on_error_continue_skips_only_the_failed_nodes_downstream(
    where: str, sink: RecordingSink
) -> None:
    if where == "config":
        workflow, config = diamond(), ExecutionConfig(on_error="continue")
    else:
        workflow, config = diamond({"on_error": "continue"}), ExecutionConfig()
    result = await WorkflowExecutor(config, event_sinks=[sink]).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert statuses(result) == {
        "bad": "failed",
        "bad_child": "skipped",
        "ok": "succeeded",
        "ok_child": "succeeded",
        # one edge skipped, one taken: a node runs when at least one edge is taken
        "join_all": "succeeded",
    }
    assert [(e.node_id, e.kind) for e in result.errors] == [("bad", "deliberate")]
    assert [e.node_id for e in sink.of(EventType.NODE_SKIPPED)] == ["bad_child"]


async def test_a_node_on_error_stop_overrides_a_config_continue() -> None:
    workflow = diamond({"on_error": "stop"})
    result = await WorkflowExecutor(ExecutionConfig(on_error="continue")).execute(workflow)
    assert failure(result)[0] == "bad"


async def test_on_error_retry_retries_with_the_config_defaults_then_stops(
    clock: FakeClock,
) -> None:
    config = ExecutionConfig(on_error="retry", max_retries=2, retry_delay=0.5)
    flaky = make_workflow([node("n", "fail", config={"times": 2})])
    result = await WorkflowExecutor(config, clock=clock).execute(flaky)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["n"].attempts == 3

    never = make_workflow([node("n", "fail"), probe_node("after")], [("n", "after")])
    result = await WorkflowExecutor(config, clock=clock).execute(never)
    assert failure(result)[0] == "n"
    assert result.node_results["n"].attempts == 3
    assert statuses(result)["after"] == "cancelled"


@pytest.mark.parametrize(("max_errors", "status"), [(1, "failed"), (3, "failed"), (4, "succeeded")])
async def test_max_errors_fails_the_run_once_reached(max_errors: int, status: str) -> None:
    workflow = make_workflow(
        [node(f"f{i}", "fail") for i in range(3)] + [probe_node("ok")],
        config={"on_error": "continue", "max_errors": max_errors, "max_parallel_nodes": 1},
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status.value == status
    if status == "failed":
        assert result.error is not None
        assert result.error.kind == "max_errors"
        assert f"{max_errors} node errors reached max_errors" in result.error.message
        assert len(result.errors) == max_errors
    else:
        assert len(result.errors) == 3


# ------------------------------------------------------------------------ error_handler


class HandlerLog:
    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, NodeSpec, NodeContext]] = []


@pytest.mark.parametrize("style", ["sync", "async"])
@pytest.mark.parametrize(
    ("returned", "status", "output"),
    [
        ({"recovered": "value"}, "succeeded", {"recovered": "value"}),
        (NodeResult(output={"as": "result"}), "succeeded", {"as": "result"}),
        (None, "failed", None),
        (NodeResult(success=False, error="still broken"), "failed", None),
    ],
)
async def test_error_handler_recovers_by_returning_a_result_or_value(
    style: str, returned: Any, status: str, output: Any, clock: FakeClock
) -> None:
    log = HandlerLog()

    def sync_handler(error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
        log.calls.append((error, node, context))
        return returned

    async def async_handler(error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
        await asyncio.sleep(0)
        return sync_handler(error, node, context)

    handler = sync_handler if style == "sync" else async_handler
    config = ExecutionConfig(error_handler=handler)
    workflow = make_workflow(
        [
            node("bad", "fail", config={"message": "kaput"}, retry={"max_retries": 2}),
            node("down", "transform", config={"output": {"saw": "nodes.bad.output"}}),
        ],
        [("bad", "down")],
    )
    result = await WorkflowExecutor(config, clock=clock).execute(workflow)

    assert result.status.value == status
    [(error, spec, context)] = log.calls  # once, after the retries, not per attempt
    assert isinstance(error, DeliberateFailure)
    assert str(error) == "kaput"
    assert spec.id == "bad"
    assert spec.type == "fail"
    assert context.node_id == "bad"
    assert context.attempt == 3
    if status == "succeeded":
        assert result.node_results["bad"].output == output
        assert result.node_results["down"].output == {"saw": output}
    else:
        assert result.node_results["bad"].status is NodeStatus.FAILED
        assert result.error is not None
        expected = "still broken" if isinstance(returned, NodeResult) else "kaput"
        assert result.error.message == expected


async def test_a_value_returned_by_error_handler_is_marked_recovered() -> None:
    config = ExecutionConfig(error_handler=lambda error, node, context: 42)
    result = await WorkflowExecutor(config).execute(make_workflow([node("bad", "fail")]))
    record = result.node_results["bad"]
    assert record.output == 42
    assert record.metadata == {"recovered": True}


async def test_an_error_handler_that_raises_replaces_the_failure() -> None:
    def handler(error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
        raise NodeExecutionError(f"handler gave up on {node.id}")

    result = await WorkflowExecutor(ExecutionConfig(error_handler=handler)).execute(
        make_workflow([node("bad", "fail")])
    )
    assert failure(result) == ("bad", "execution", "handler gave up on bad")


async def test_error_handler_sees_a_node_reported_failure_as_an_exception() -> None:
    seen: list[BaseException] = []

    def handler(error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
        seen.append(error)
        return None

    config = ExecutionConfig(error_handler=handler)
    # a condition on a missing key makes transform fail with an expression error
    workflow = make_workflow([node("t", "transform", config={"output": {"x": "input.missing"}})])
    result = await WorkflowExecutor(config).execute(workflow, {})
    assert failure(result)[1] == "expression"
    [error] = seen
    assert "input.missing" in str(error)


async def test_error_handler_runs_before_the_fallback() -> None:
    calls: list[str] = []

    def handler(error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
        calls.append(node.id)
        return None

    workflow = make_workflow(
        [
            node("bad", "fail", fallback="backup"),
            node("backup", "transform", config={"output": {"ok": "true"}}),
        ]
    )
    result = await WorkflowExecutor(ExecutionConfig(error_handler=handler)).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["bad"].output == {"ok": True}
    assert calls == ["bad"]


async def test_error_handler_with_on_error_continue_and_max_errors() -> None:
    def handler(error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
        return {"patched": node.id} if node.id.startswith("soft") else None

    config = ExecutionConfig(on_error="continue", error_handler=handler, max_errors=2)
    workflow = make_workflow(
        [node("soft1", "fail"), node("soft2", "fail"), node("hard1", "fail"), probe_node("ok")]
    )
    result = await WorkflowExecutor(config).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED  # one unrecovered error < max_errors
    assert [e.node_id for e in result.errors] == ["hard1"]
    assert result.node_results["soft2"].output == {"patched": "soft2"}


# -------------------------------------------------------------------- handle_error hook


class RecoveringExecutor(WorkflowExecutor):
    """Recovers DeliberateFailure; lets everything else fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, str, str]] = []

    async def handle_error(self, error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
        self.seen.append((type(error).__name__, node.id, context.node_id))
        if isinstance(error, DeliberateFailure):
            return NodeResult(output={"recovered_from": str(error)})
        if "replace" in str(error):
            raise NodeExecutionError("replaced by the hook")
        raise error


async def test_handle_error_hook_recovers() -> None:
    workflow = make_workflow(
        [
            node("bad", "fail", config={"message": "oops"}),
            node("down", "transform", config={"output": {"v": "nodes.bad.output.recovered_from"}}),
        ],
        [("bad", "down")],
    )
    executor = RecoveringExecutor()
    result = await executor.execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["down"].output == {"v": "oops"}
    assert executor.seen == [("DeliberateFailure", "bad", "bad")]


async def test_handle_error_hook_reraising_leaves_the_failure(probe: Probe) -> None:
    workflow = make_workflow([node("t", "engine_raise", config={"message": "kept"})])
    executor = RecoveringExecutor()
    result = await executor.execute(workflow)
    assert failure(result) == ("t", "execution", "RuntimeError: kept")
    assert executor.seen == [("RuntimeError", "t", "t")]


async def test_handle_error_hook_raising_another_error_replaces_the_failure() -> None:
    workflow = make_workflow([node("t", "engine_raise", config={"message": "replace me"})])
    result = await RecoveringExecutor().execute(workflow)
    assert failure(result) == ("t", "execution", "replaced by the hook")


async def test_the_default_handle_error_leaves_failures_alone() -> None:
    result = await WorkflowExecutor().execute(make_workflow([node("bad", "fail")]))
    assert failure(result) == ("bad", "deliberate", "deliberate failure")


# ------------------------------------------------------------------ hooks and callbacks


class Journal:
    def __init__(self) -> None:
        self.entries: list[str] = []


class HookedExecutor(WorkflowExecutor):
    def __init__(self, journal: Journal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.journal = journal

    async def pre_workflow_hook(self, workflow: WorkflowDefinition, input_data: Any) -> None:
        self.journal.entries.append(f"pre_workflow {workflow.id} {input_data}")

    async def pre_node_hook(self, node: NodeSpec, context: NodeContext) -> None:
        self.journal.entries.append(f"pre_node {node.id} attempt={context.attempt}")

    async def post_node_hook(self, node: NodeSpec, result: NodeResult) -> None:
        self.journal.entries.append(f"post_node {node.id} {result.success}")

    async def post_workflow_hook(self, workflow: WorkflowDefinition, result: RunResult) -> None:
        self.journal.entries.append(f"post_workflow {workflow.id} {result.status.value}")


class SyncCallbacks:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def on_workflow_start(self, workflow: WorkflowDefinition, input_data: Any) -> None:
        self.journal.entries.append(f"cb start {workflow.id}")

    def on_node_start(self, node: NodeSpec, context: NodeContext) -> None:
        self.journal.entries.append(f"cb node_start {node.id}")

    def on_node_end(self, node: NodeSpec, result: NodeResult) -> None:
        self.journal.entries.append(f"cb node_end {node.id} {result.output}")

    def on_workflow_end(self, workflow: WorkflowDefinition, result: RunResult) -> None:
        self.journal.entries.append(f"cb end {result.status.value}")


class AsyncCallbacks:
    """Only some of the methods, all async."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def on_node_end(self, node: NodeSpec, result: NodeResult) -> None:
        await asyncio.sleep(0)
        self.journal.entries.append(f"acb node_end {node.id}")

    async def on_workflow_end(self, workflow: WorkflowDefinition, result: RunResult) -> None:
        await asyncio.sleep(0)
        self.journal.entries.append(f"acb end {result.status.value}")


def chain() -> WorkflowDefinition:
    return make_workflow(
        [
            node("a", "transform", config={"output": {"v": "1"}}),
            node("b", "transform", config={"output": {"v": "nodes.a.output.v + 1"}}),
        ],
        [("a", "b")],
        id="hooks",
    )


async def test_subclass_hooks_run_in_lifecycle_order() -> None:
    journal = Journal()
    result = await HookedExecutor(journal).execute(chain(), {"k": 1})
    assert result.status is RunStatus.SUCCEEDED
    assert journal.entries == [
        "pre_workflow hooks {'k': 1}",
        "pre_node a attempt=1",
        "post_node a True",
        "pre_node b attempt=1",
        "post_node b True",
        "post_workflow hooks succeeded",
    ]


async def test_hooks_and_callbacks_interleave_hook_first() -> None:
    journal = Journal()
    executor = HookedExecutor(journal, callbacks=[SyncCallbacks(journal), AsyncCallbacks(journal)])
    result = await executor.execute(chain())
    assert result.status is RunStatus.SUCCEEDED
    assert journal.entries == [
        "pre_workflow hooks None",
        "cb start hooks",
        "pre_node a attempt=1",
        "cb node_start a",
        "post_node a True",
        "cb node_end a {'v': 1}",
        "acb node_end a",
        "pre_node b attempt=1",
        "cb node_start b",
        "post_node b True",
        "cb node_end b {'v': 2}",
        "acb node_end b",
        "post_workflow hooks succeeded",
        "cb end succeeded",
        "acb end succeeded",
    ]


async def test_post_hooks_see_failures() -> None:
    journal = Journal()
    workflow = make_workflow([node("bad", "fail")], id="sad")
    result = await HookedExecutor(journal, callbacks=[SyncCallbacks(journal)]).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert "post_node bad False" in journal.entries
    assert "cb node_end bad None" in journal.entries
    assert journal.entries[-2:] == ["post_workflow sad failed", "cb end failed"]


async def test_callbacks_without_a_subclass() -> None:
    journal = Journal()
    result = await WorkflowExecutor(callbacks=[AsyncCallbacks(journal)]).execute(chain())
    assert result.status is RunStatus.SUCCEEDED
    assert journal.entries[:2] == ["acb node_end a", "acb node_end b"]
