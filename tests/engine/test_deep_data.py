"""Data the engine cannot encode (nested thousands of levels deep) fails a run cleanly,
and checkpoint records stay bounded on a wide fan-out."""

from __future__ import annotations

from pathlib import Path

from app.engine import (
    ExecutionConfig,
    FileCheckpointStore,
    InMemoryCheckpointStore,
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


async def test_caching_skips_what_cannot_be_keyed_and_the_run_succeeds() -> None:
    workflow = create_workflow(noop_chain(1200), limits=ExecutionConfig(max_nodes=2000))
    result = await WorkflowExecutor(ExecutionConfig(enable_cache=True)).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED


async def test_unstorable_checkpoints_fail_the_run_instead_of_raising(tmp_path: Path) -> None:
    workflow = create_workflow(noop_chain(1200), limits=ExecutionConfig(max_nodes=2000))
    executor = WorkflowExecutor(
        ExecutionConfig(enable_checkpoints=True), checkpoint_store=FileCheckpointStore(tmp_path)
    )
    result = await executor.execute(workflow, run_id="deep")
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.kind == "checkpoint"
    assert "nests too deeply" in result.error.message


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
