"""Data nested deeper than ``max_value_depth`` fails its node cleanly (kind ``output``),
and checkpoint records stay bounded on a wide fan-out."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine import (
    ExecutionConfig,
    FileCheckpointStore,
    InMemoryCheckpointStore,
    NodeStatus,
    RunStatus,
    WorkflowExecutor,
    create_workflow,
)
from app.engine.cache import cache_key


def noop_chain(n: int) -> dict[str, object]:
    # each noop outputs its parent's output: a chain nests one level per node
    return {
        "id": "deep",
        "nodes": [{"id": f"n{i}", "type": "noop"} for i in range(n)],
        "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)],
    }


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"x": value}
    return value


def test_a_cache_key_for_data_too_deep_to_encode_is_none() -> None:
    assert cache_key("t", {}, nested(10)) is not None
    assert cache_key("t", {}, nested(5000)) is None


@pytest.mark.parametrize("cache", [False, True])
async def test_an_output_nested_too_deep_fails_its_node(tmp_path: Path, cache: bool) -> None:
    # noop i outputs {"n<i-1>": <its output>}: node n64's output is the first 65 deep
    workflow = create_workflow(noop_chain(1200), limits=ExecutionConfig(max_nodes=2000))
    store = FileCheckpointStore(tmp_path)
    executor = WorkflowExecutor(
        ExecutionConfig(enable_checkpoints=True, enable_cache=cache), checkpoint_store=store
    )
    result = await executor.execute(workflow, run_id="deep")
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert (result.error.kind, result.error.node_id) == ("output", "n64")
    assert "nests deeper than 64 levels" in result.error.message
    assert result.node_results["n63"].status is NodeStatus.SUCCEEDED
    # what was stored is whole: the last checkpoint says how the run ended
    latest = await store.latest("deep")
    assert latest is not None
    assert latest.status == "failed"
    assert set(latest.completed) == {f"n{i}" for i in range(64)}


async def test_the_depth_limit_is_the_operators_setting() -> None:
    workflow = create_workflow(noop_chain(12))
    result = await WorkflowExecutor(ExecutionConfig(max_value_depth=8)).execute(workflow)
    assert result.error is not None
    assert (result.error.kind, result.error.node_id) == ("output", "n8")


async def test_records_of_a_wide_fan_out_do_not_copy_the_queue() -> None:
    n = 500
    workflow = create_workflow(
        {
            "id": "wide",
            "nodes": [{"id": "root", "type": "noop"}]
            + [{"id": f"leaf{i}", "type": "noop"} for i in range(n)],
            "edges": [{"source": "root", "target": f"leaf{i}"} for i in range(n)],
        }
    )
    store = InMemoryCheckpointStore()
    executor = WorkflowExecutor(
        ExecutionConfig(enable_checkpoints=True, max_parallel_nodes=4), checkpoint_store=store
    )
    result = await executor.execute(workflow, run_id="wide")
    assert result.status is RunStatus.SUCCEEDED
    checkpoint = await store.load("wide:3")  # the root and a leaf done, 499 leaves queued
    assert 0 < len(checkpoint.frontier) <= 2 * 4
