"""The execution trace (trace_execution, trace_level, trace_output, durations, node
timings with attempts, cache hits and fallbacks) and ``MetricsCollector``
(get_statistics: counts, averages, errors, retries, p50/p95 per node type)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.engine import (
    ExecutionConfig,
    NodeRun,
    NodeStatus,
    RunResult,
    RunStatus,
    WorkflowDefinition,
    WorkflowExecutor,
)
from app.engine.metrics import MetricsCollector
from app.engine.trace import ExecutionTrace
from tests.engine.conftest import FakeClock, Probe, make_workflow, node, probe_node


def mixed() -> WorkflowDefinition:
    """One of everything: a success, a retried success, a failure (continued past),
    a skipped node, and a fallback."""
    return make_workflow(
        [
            probe_node("ok"),
            node("flaky", "fail", config={"times": 2}, retry={"max_retries": 2, "delay": 1}),
            node("broken", "fail", on_error="continue"),
            probe_node("skipped"),
            node("rescued", "fail", fallback="backup"),
            node("backup", "transform", config={"output": {"b": "1"}}),
        ],
        [("broken", "skipped")],
        id="mixed",
    )


async def run_mixed(clock: FakeClock, **config: Any) -> RunResult:
    result = await WorkflowExecutor(ExecutionConfig(**config), clock=clock).execute(mixed())
    assert result.status is RunStatus.SUCCEEDED
    return result


# --------------------------------------------------------------------------------- trace


async def test_no_trace_unless_trace_execution(clock: FakeClock) -> None:
    assert (await run_mixed(clock)).execution_trace is None


async def test_trace_duration_and_node_timings(clock: FakeClock) -> None:
    result = await run_mixed(clock, trace_execution=True)
    trace = result.execution_trace
    assert isinstance(trace, ExecutionTrace)
    assert (trace.run_id, trace.workflow_id, trace.status, trace.level) == (
        result.run_id,
        "mixed",
        "succeeded",
        "INFO",
    )
    assert trace.duration == result.duration_ms  # milliseconds
    assert trace.duration >= 0
    assert set(trace.node_timings) == {"ok", "flaky", "broken", "skipped", "rescued", "backup"}
    timings = trace.node_timings
    assert {k: t.status for k, t in timings.items()} == {
        "ok": "succeeded",
        "flaky": "succeeded",
        "broken": "failed",
        "skipped": "skipped",
        "rescued": "succeeded",
        "backup": "succeeded",
    }
    assert {k: t.attempts for k, t in timings.items()} == {
        "ok": 1,
        "flaky": 3,
        "broken": 1,
        "skipped": 0,
        "rescued": 1,
        "backup": 1,
    }
    assert trace.attempts == 7
    assert timings["rescued"].fallback_from == "backup"
    assert timings["broken"].error == "deliberate failure"
    assert timings["skipped"].duration_ms is None
    for node_id in ("ok", "flaky", "broken"):
        timing = timings[node_id]
        assert timing.duration_ms == result.node_results[node_id].duration_ms
        assert timing.duration_ms is not None
        assert timing.duration_ms >= 0
        assert timing.start_ms is not None
        assert 0 <= timing.start_ms <= trace.duration
    assert trace.events == []  # only at DEBUG
    assert trace.cache_hits == 0


async def test_trace_counts_cache_hits(clock: FakeClock) -> None:
    workflow = make_workflow(
        [probe_node("p"), probe_node("q")], config={"enable_cache": True, "trace_execution": True}
    )
    executor = WorkflowExecutor(clock=clock)
    await executor.execute(workflow)
    trace = (await executor.execute(workflow)).execution_trace
    assert trace.cache_hits == 2
    assert {k: (t.cache_hit, t.attempts) for k, t in trace.node_timings.items()} == {
        "p": (True, 0),
        "q": (True, 0),
    }


async def test_debug_level_trace_carries_the_events(clock: FakeClock) -> None:
    result = await run_mixed(clock, trace_execution=True, trace_level="DEBUG")
    events = result.execution_trace.events
    assert events[0]["type"] == "run.started"
    assert events[-1]["type"] == "run.succeeded"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["attempt"] for e in events if e["type"] == "node.retry"] == [2, 3]
    assert all(e["run_id"] == result.run_id for e in events)


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
async def test_warning_level_trace_keeps_only_nodes_that_did_not_succeed(
    level: str, clock: FakeClock
) -> None:
    trace = (await run_mixed(clock, trace_execution=True, trace_level=level)).execution_trace
    assert set(trace.node_timings) == {"broken"}
    assert trace.events == []


async def test_warning_level_trace_keeps_cancelled_nodes(probe: Probe) -> None:
    workflow = make_workflow(
        [node("bad", "engine_raise", config={"after": "slow"}), probe_node("slow", block=True)],
        config={"trace_execution": True, "trace_level": "WARNING"},
    )
    result = await WorkflowExecutor().execute(workflow)
    assert result.status is RunStatus.FAILED
    assert {k: t.status for k, t in result.execution_trace.node_timings.items()} == {
        "bad": "failed",
        "slow": "cancelled",
    }


async def test_trace_output_writes_the_trace_as_json(tmp_path: Path, clock: FakeClock) -> None:
    target = tmp_path / "trace.json"
    result = await run_mixed(clock, trace_execution=True, trace_output=str(target))
    written = json.loads(target.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(result.execution_trace.to_dict(), default=str))
    assert written["run_id"] == result.run_id
    assert written["status"] == "succeeded"
    assert written["attempts"] == 7
    assert written["node_timings"]["flaky"]["attempts"] == 3
    assert written["node_timings"]["rescued"]["fallback_from"] == "backup"


async def test_trace_output_of_a_failed_run(tmp_path: Path) -> None:
    target = tmp_path / "failed.json"
    # the trace file is the operator's to name (a workflow's config cannot: PROCESS_FIELDS)
    workflow = make_workflow([node("bad", "fail")], config={"trace_execution": True})
    result = await WorkflowExecutor(ExecutionConfig(trace_output=str(target))).execute(workflow)
    assert result.status is RunStatus.FAILED
    written = json.loads(target.read_text(encoding="utf-8"))
    assert written["status"] == "failed"
    assert written["node_timings"]["bad"]["error"] == "deliberate failure"


async def test_tracing_can_be_turned_on_per_run(clock: FakeClock) -> None:
    executor = WorkflowExecutor(clock=clock)
    assert (await executor.execute(mixed())).execution_trace is None
    traced = await executor.execute(mixed(), config={"trace_execution": True})
    assert isinstance(traced.execution_trace, ExecutionTrace)


# ------------------------------------------------------------------------------- metrics


def synthetic_run(durations_ms: dict[str, list[float]], status: str = "succeeded") -> RunResult:
    """A finished run whose nodes took exactly the given times, by node type."""
    records: dict[str, NodeRun] = {}
    for type_name, durations in durations_ms.items():
        for i, ms in enumerate(durations):
            node_id = f"{type_name}{i}"
            records[node_id] = NodeRun(
                node_id,
                type_name,
                NodeStatus.SUCCEEDED,
                attempts=1,
                started_at=100.0,
                finished_at=100.0 + ms / 1000.0,
            )
    return RunResult(
        "r", "w", RunStatus(status), node_results=records, started_at=100.0, finished_at=101.0
    )


def test_percentiles_per_node_type() -> None:
    metrics = MetricsCollector()
    metrics.record_run(synthetic_run({"fast": [float(ms) for ms in range(1, 101)]}))
    metrics.record_run(synthetic_run({"slow": [100.0, 300.0], "fast": []}))
    stats = metrics.get_statistics()
    fast = stats["node_types"]["fast"]
    assert fast["count"] == 100
    assert fast["avg_ms"] == pytest.approx(50.5)
    assert fast["p50_ms"] == pytest.approx(50.5)
    assert fast["p95_ms"] == pytest.approx(95.05)
    slow = stats["node_types"]["slow"]
    assert (slow["p50_ms"], slow["p95_ms"]) == pytest.approx((200.0, 290.0))
    assert stats["total_workflows"] == 2
    assert stats["total_nodes"] == 102
    assert stats["avg_node_time"] == pytest.approx((5050 + 400) / 102)
    assert stats["avg_workflow_time"] == pytest.approx(1000.0)


def test_an_empty_collector() -> None:
    stats = MetricsCollector().get_statistics()
    assert stats["total_workflows"] == 0
    assert stats["avg_node_time"] == 0.0
    assert stats["node_types"] == {}


async def test_metrics_collector_passed_to_the_executor(clock: FakeClock) -> None:
    metrics = MetricsCollector()
    executor = WorkflowExecutor(metrics_collector=metrics, clock=clock)
    results = [await executor.execute(mixed()) for _ in range(2)]
    results.append(await executor.execute(make_workflow([node("x", "fail")])))
    stats = metrics.get_statistics()

    assert stats["total_workflows"] == 3
    assert stats["workflows_by_status"] == {"succeeded": 2, "failed": 1}
    # per run of mixed(): fail nodes flaky, broken, rescued; skipped is never counted
    assert stats["node_types"]["fail"]["count"] == 3 * 2 + 1
    assert stats["node_types"]["engine_probe"]["count"] == 2
    assert stats["node_types"]["transform"]["count"] == 2
    assert stats["errors"] == 2 * 1 + 1  # broken (twice) and x; rescued was rescued
    assert stats["node_types"]["fail"]["errors"] == 3
    assert stats["retries"] == 2 * 2
    assert stats["node_types"]["fail"]["retries"] == 4
    durations = [
        record.duration_ms
        for result in results
        for record in result.node_results.values()
        if record.attempts and record.duration_ms is not None
    ]
    assert stats["total_nodes"] == len(durations) == 11
    assert stats["avg_node_time"] == pytest.approx(sum(durations) / len(durations))
    for type_stats in stats["node_types"].values():
        assert 0 <= type_stats["p50_ms"] <= type_stats["p95_ms"]


async def test_metrics_count_cache_hits() -> None:
    metrics = MetricsCollector()
    executor = WorkflowExecutor(ExecutionConfig(enable_cache=True), metrics_collector=metrics)
    workflow = make_workflow([probe_node("p")])
    for _ in range(3):
        await executor.execute(workflow)
    stats = metrics.get_statistics()
    assert stats["cache_hits"] == 2
    assert stats["node_types"]["engine_probe"]["cache_hits"] == 2
    assert stats["node_types"]["engine_probe"]["count"] == 3


def collector_of(executor: WorkflowExecutor) -> MetricsCollector | None:
    return executor.metrics_collector


async def test_collect_metrics_creates_a_collector() -> None:
    executor = WorkflowExecutor(ExecutionConfig(collect_metrics=True))
    assert collector_of(executor) is None
    await executor.execute(make_workflow([probe_node("p")]))
    collector = collector_of(executor)
    assert isinstance(collector, MetricsCollector)
    await executor.execute(make_workflow([probe_node("p")]))
    assert collector_of(executor) is collector
    assert collector.get_statistics()["total_workflows"] == 2


async def test_no_metrics_unless_asked() -> None:
    executor = WorkflowExecutor()
    await executor.execute(make_workflow([probe_node("p")]))
    assert executor.metrics_collector is None


def test_reset() -> None:
    metrics = MetricsCollector()
    metrics.record_run(synthetic_run({"t": [1.0]}, status="failed"))
    metrics.reset()
    stats = metrics.get_statistics()
    assert (stats["total_workflows"], stats["total_nodes"], stats["workflows_by_status"]) == (
        0,
        0,
        {},
    )
