"""Budgets bound one run's work and data (crossing one fails the whole run, kind
``budget``); values no store can hold fail the node that produced them (kind ``output``);
data a template yields is never evaluated as an expression."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import (
    EventType,
    ExecutionConfig,
    InMemoryWorkflowRepository,
    InputValidationError,
    ListEventSink,
    RunStatus,
    WorkflowExecutor,
    create_workflow,
)
from app.engine.config import BUDGET_FIELDS
from tests.engine.conftest import FakeClock, make_workflow, node


def transform(node_id: str, **outputs: str) -> dict[str, Any]:
    return node(node_id, "transform", config={"output": outputs})


async def run(
    definition: Any, input: Any = None, *, config: ExecutionConfig | None = None, **kw: Any
) -> Any:
    executor = WorkflowExecutor(config or ExecutionConfig(), **kw)
    return await executor.execute(definition, input)


def budget_error(result: Any, budget: str) -> str:
    assert result.status is RunStatus.FAILED, result.status
    assert result.error is not None
    assert result.error.kind == "budget", result.error
    assert budget in result.error.message
    return str(result.error.message)


# ----------------------------------------------------------------------- node executions


async def test_node_executions_count_map_bodies_and_fail_the_run() -> None:
    inner = {"id": "inner", "nodes": [node("leaf", "noop")]}
    outer = {
        "id": "outer",
        "nodes": [
            node(
                "each",
                "map",
                config={
                    "items": "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
                    "workflow": {
                        "id": "body",
                        "nodes": [
                            node(
                                "nested",
                                "map",
                                config={
                                    "items": "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
                                    "node": inner["nodes"][0],
                                },
                            )
                        ],
                    },
                },
            )
        ],
    }
    definition = create_workflow(outer)
    # 1 + 10 + 100 executions fit in 111 ...
    assert (await run(definition, config=ExecutionConfig(max_node_executions=111))).success
    # ... and not in 110: the run fails as a whole, whatever on_error says
    result = await run(
        definition, config=ExecutionConfig(max_node_executions=110, on_error="continue")
    )
    message = budget_error(result, "max_node_executions")
    assert "110" in message


async def test_a_loop_counts_its_iterations() -> None:
    definition = make_workflow(
        [
            node(
                "spin",
                "loop",
                config={
                    "while": "true",
                    "max_iterations": 100_000,
                    "workflow": {"id": "b", "nodes": [node("x", "noop")]},
                },
            )
        ]
    )
    result = await run(definition, config=ExecutionConfig(max_node_executions=500))
    budget_error(result, "max_node_executions")


async def test_recursive_subworkflows_are_stopped_by_the_subrun_budget() -> None:
    # each run of `fork` starts two runs of itself while d < 24: 2^24 runs unbounded
    repo = InMemoryWorkflowRepository()
    repo.add(
        create_workflow(
            {
                "id": "fork",
                "nodes": [
                    node(
                        name,
                        "subworkflow",
                        config={"workflow_id": "fork", "input": {"d": "input.d + 1"}},
                    )
                    for name in ("left", "right")
                ],
            }
        )
    )
    guard = create_workflow(
        {
            "id": "start",
            "nodes": [
                node("go", "subworkflow", config={"workflow_id": "fork", "input": {"d": "0"}})
            ],
        }
    )
    sink = ListEventSink()
    result = await run(
        guard, workflows=repo, config=ExecutionConfig(max_nesting_depth=32), event_sinks=[sink]
    )
    message = budget_error(result, "max_subruns")
    assert "1000" in message
    # every body run stopped before the run ended: nothing follows its terminal event
    assert sink.events[-1].type is EventType.RUN_FAILED


async def test_a_map_over_too_many_items_fails_the_run() -> None:
    definition = make_workflow(
        [node("m", "map", config={"items": "input.xs", "node": node("b", "noop")})]
    )
    ok = await run(definition, {"xs": list(range(5))}, config=ExecutionConfig(max_map_items=5))
    assert ok.success
    result = await run(definition, {"xs": list(range(6))}, config=ExecutionConfig(max_map_items=5))
    assert "a map over 6 items" in budget_error(result, "max_map_items")


# ------------------------------------------------------------------------------ outputs


async def test_doubling_strings_stop_at_the_output_budget() -> None:
    # 20 doublings of 64 characters would be 64 MiB
    nodes = [transform("n0", s="input.s")]
    nodes += [
        transform(f"n{i}", s=f"nodes.n{i - 1}.output.s + nodes.n{i - 1}.output.s")
        for i in range(1, 21)
    ]
    edges = [(f"n{i - 1}", f"n{i}") for i in range(1, 21)]
    definition = make_workflow(nodes, edges)
    result = await run(
        definition, {"s": "x" * 64}, config=ExecutionConfig(max_output_bytes=100_000)
    )
    budget_error(result, "max_output_bytes")
    assert result.error.node_id == "n11"  # 64 * 2^11 = 131,072 characters
    assert result.node_results["n10"].success


async def test_the_run_state_budget_adds_every_output_up() -> None:
    nodes = [transform(f"n{i}", s="'y' * 1" if False else "input.s") for i in range(10)]
    definition = make_workflow(nodes)
    config = ExecutionConfig(max_state_bytes=5 * 1002 + 500, max_parallel_nodes=1)
    result = await run(definition, {"s": "y" * 1000}, config=config)
    budget_error(result, "max_state_bytes")


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("1.0 / 0.0", "Infinity is not a JSON number"),
        ("-1.0 / 0.0", "-Infinity is not a JSON number"),
        (r"'a\x00b'", "NUL"),
    ],
)
async def test_an_output_no_store_can_hold_fails_its_node(expression: str, reason: str) -> None:
    definition = make_workflow(
        [transform("bad", v=expression), transform("after", v="1")], [("bad", "after")]
    )
    result = await run(definition)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert (result.error.kind, result.error.node_id) == ("output", "bad")
    assert reason in result.error.message
    assert "at .v" in result.error.message
    # an ordinary node failure: a fallback can stand in for it
    rescued = make_workflow(
        [transform("bad", v=expression) | {"fallback": "plan_b"}, transform("plan_b", v="2")]
    )
    assert (await run(rescued)).success


async def test_a_custom_event_or_token_no_log_can_hold_fails_its_node() -> None:
    for config in (
        {"custom": [{"name": "x", "data": {"v": "{{ 'a\\x00' }}"}}]},
        {"tokens": ["ok", "{{ 'b\\x00' }}"]},
    ):
        result = await run(make_workflow([node("e", "engine_emit", config=config)]))
        assert result.error is not None
        assert result.error.kind == "output", (config, result.error)


async def test_input_no_store_can_hold_is_refused_before_the_run_starts() -> None:
    definition = make_workflow([transform("a", v="input")])
    for bad in ({"s": "a\x00"}, {"n": [float("nan")]}, {"s": "\udc00"}):
        with pytest.raises(InputValidationError, match="input"):
            await run(definition, bad)


async def test_a_run_output_expression_that_builds_a_nan_fails_the_run() -> None:
    definition = make_workflow([transform("a", v="1")], output={"x": "0.0 / 0.0"})
    result = await run(definition)
    assert result.error is not None
    assert result.error.kind == "output"


# ------------------------------------------------------------------------------- delays


async def test_a_delay_longer_than_the_budget_fails_the_run(clock: FakeClock) -> None:
    definition = make_workflow([node("d", "delay", config={"seconds": "input.s"})])
    config = ExecutionConfig(max_delay_seconds=60)
    assert (await run(definition, {"s": 60}, config=config, clock=clock)).success
    result = await run(definition, {"s": 61}, config=config, clock=clock)
    assert "a delay of 61s" in budget_error(result, "max_delay_seconds")


async def test_a_template_result_is_data_never_an_expression(clock: FakeClock) -> None:
    definition = make_workflow(
        [node("d", "delay", config={"seconds": "{{ input.s }}"})], vars={"pin": 5}
    )
    # the string "vars.pin" is data: not a number, so the node refuses it
    result = await run(definition, {"s": "vars.pin"}, clock=clock)
    assert result.error is not None
    assert result.error.kind == "config"
    assert "'vars.pin'" in result.error.message
    assert clock.sleeps == []
    assert (await run(definition, {"s": 2}, clock=clock)).success
    assert clock.sleeps == [2.0]


async def test_a_non_finite_delay_is_refused(clock: FakeClock) -> None:
    definition = make_workflow([node("d", "delay", config={"seconds": "{{ 1.0 / 0.0 }}"})])
    result = await run(definition, clock=clock)
    assert result.error is not None
    assert result.error.kind == "config"


# ------------------------------------------------------------------------- precedence


async def test_a_definition_may_lower_a_budget_but_never_raise_it() -> None:
    nodes = [transform(f"n{i}", v="1") for i in range(5)]
    lowered = make_workflow(nodes, config={"max_node_executions": 3})
    budget_error(await run(lowered), "max_node_executions")
    raised = make_workflow(nodes, config={"max_node_executions": 1_000_000})
    result = await run(raised, config=ExecutionConfig(max_node_executions=4))
    assert "is 4" in budget_error(result, "max_node_executions")
    # and per run, the same
    executor = WorkflowExecutor(ExecutionConfig(max_node_executions=4))
    result = await executor.execute(make_workflow(nodes), config={"max_node_executions": 99})
    budget_error(result, "max_node_executions")


def test_every_budget_is_a_known_knob_with_a_bound() -> None:
    for knob in BUDGET_FIELDS:
        assert knob in ExecutionConfig.model_fields
    with pytest.raises(ValueError, match="less than or equal"):
        ExecutionConfig(max_parallel_nodes=10**9)
    with pytest.raises(ValueError, match="finite"):
        ExecutionConfig(node_timeout=float("inf"))
