"""Node result caching: enable_cache / cache_ttl / cache_size and per-node ``cache``
policies, the default and templated keys, LRU and TTL (on a fake clock), how a hit is
reported (event, NodeRun metadata, trace), and the node types that are never cached."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.engine import (
    EventType,
    ExecutionConfig,
    RunResult,
    RunStatus,
    WorkflowDefinition,
    WorkflowExecutor,
)
from app.engine.cache import InMemoryCache, cache_key
from tests.engine.conftest import (
    FakeClock,
    Probe,
    RecordingSink,
    make_workflow,
    node,
    probe_node,
)


def cached_flags(sink: RecordingSink, run: RunResult, node_id: str) -> list[bool]:
    """``cached`` of each node.completed event of ``node_id`` in ``run``."""
    return [
        bool(e.data.get("cached"))
        for e in sink.of(EventType.NODE_COMPLETED)
        if e.run_id == run.run_id and e.node_id == node_id
    ]


def single(**config: Any) -> WorkflowDefinition:
    return make_workflow([probe_node("p", key="{{ input.k }}")], config=config)


# ------------------------------------------------------------------------------- hits


async def test_a_hit_skips_the_node_and_is_reported_everywhere(
    clock: FakeClock, probe: Probe, sink: RecordingSink
) -> None:
    workflow = make_workflow(
        [probe_node("p"), node("after", "noop")],
        [("p", "after")],
        config={"enable_cache": True, "trace_execution": True},
    )
    executor = WorkflowExecutor(clock=clock, event_sinks=[sink])
    first = await executor.execute(workflow)
    second = await executor.execute(workflow)

    assert probe.starts() == ["p"]  # the second run did not execute it
    assert second.status is RunStatus.SUCCEEDED
    assert second.node_results["p"].output == first.node_results["p"].output == {"node": "p"}
    assert second.output == first.output
    # the event
    assert cached_flags(sink, first, "p") == [False]
    assert cached_flags(sink, second, "p") == [True]
    # the NodeRun
    assert first.node_results["p"].metadata is None
    assert second.node_results["p"].metadata == {"cache_hit": True}
    assert second.node_results["p"].attempts == 0
    # the trace
    assert first.execution_trace.node_timings["p"].cache_hit is False
    assert second.execution_trace.node_timings["p"].cache_hit is True
    assert second.execution_trace.cache_hits == 1  # `after` is a noop: never cached
    assert second.execution_trace.to_dict()["node_timings"]["p"]["cache_hit"] is True


async def test_without_caching_every_run_executes_every_node(probe: Probe) -> None:
    executor = WorkflowExecutor()
    for _ in range(3):
        await executor.execute(single(), {"k": "same"})
    assert probe.starts() == ["same"] * 3
    assert executor.cache is None


async def test_a_node_cache_policy_caches_that_node_only(probe: Probe) -> None:
    workflow = make_workflow(
        [{**probe_node("cached", key="c"), "cache": {}}, probe_node("plain", key="n")],
        [("cached", "plain")],
    )
    executor = WorkflowExecutor()
    await executor.execute(workflow)
    await executor.execute(workflow)
    assert probe.starts() == ["c", "n", "n"]


async def test_a_given_cache_is_used_and_shared_across_executors(probe: Probe) -> None:
    cache = InMemoryCache(10)
    config = ExecutionConfig(enable_cache=True)
    await WorkflowExecutor(config, cache=cache).execute(single(), {"k": "x"})
    await WorkflowExecutor(config, cache=cache).execute(single(), {"k": "x"})
    assert probe.starts() == ["x"]
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


async def test_the_same_work_hits_across_workflows(probe: Probe) -> None:
    executor = WorkflowExecutor(ExecutionConfig(enable_cache=True))
    await executor.execute(make_workflow([probe_node("p", key="shared")], id="one"))
    other = await executor.execute(make_workflow([probe_node("p", key="shared")], id="two"))
    assert probe.starts() == ["shared"]
    assert other.node_results["p"].metadata == {"cache_hit": True}


# -------------------------------------------------------------------------------- keys


async def test_the_default_key_covers_the_resolved_config(probe: Probe) -> None:
    executor = WorkflowExecutor(ExecutionConfig(enable_cache=True))
    for k in ["a", "b", "a", "b", "c"]:
        await executor.execute(single(), {"k": k})
    assert probe.starts() == ["a", "b", "c"]


async def test_the_default_key_covers_the_inputs(probe: Probe) -> None:
    # `source` is not cached; `child` is, and its input (source's output) varies by run
    workflow = make_workflow(
        [
            node("source", "transform", config={"output": {"v": "input.v"}}),
            {**probe_node("child"), "cache": {}},
        ],
        [("source", "child")],
    )
    executor = WorkflowExecutor()
    for v in [1, 2, 1, 2, 3]:
        await executor.execute(workflow, {"v": v})
    assert probe.starts() == ["child"] * 3


def test_cache_key_hashes_type_config_and_inputs() -> None:
    base = cache_key("t", {"a": 1, "b": [1, 2]}, {"p": {"x": 1}})
    assert base is not None
    assert base == cache_key("t", {"b": [1, 2], "a": 1}, {"p": {"x": 1}})  # order-free
    assert base.startswith("t:")
    assert base != cache_key("u", {"a": 1, "b": [1, 2]}, {"p": {"x": 1}})
    assert base != cache_key("t", {"a": 2, "b": [1, 2]}, {"p": {"x": 1}})
    assert base != cache_key("t", {"a": 1, "b": [1, 2]}, {"p": {"x": 2}})


async def test_the_default_key_covers_what_expressions_read() -> None:
    workflow = make_workflow(
        [node("t", "transform", config={"output": {"double": "input.x * 2"}})],
        config={"enable_cache": True},
    )
    executor = WorkflowExecutor()
    first = await executor.execute(workflow, {"x": 1})
    second = await executor.execute(workflow, {"x": 2})
    assert first.output == {"t": {"double": 2}}
    assert second.output == {"t": {"double": 4}}


async def test_a_key_template_decides_what_counts_as_the_same_work(probe: Probe) -> None:
    spec = probe_node("p", key="{{ input.k }}", output={"for": "{{ input.user }}"})
    spec["cache"] = {"key": "user-{{ input.user }}"}
    workflow = make_workflow([spec])
    executor = WorkflowExecutor()
    first = await executor.execute(workflow, {"user": "ann", "k": "1"})
    # same user, different everything else: the key says it is the same work
    second = await executor.execute(workflow, {"user": "ann", "k": "2"})
    third = await executor.execute(workflow, {"user": "bob", "k": "3"})
    assert probe.starts() == ["1", "3"]
    assert first.output == second.output == {"p": {"for": "ann"}}
    assert third.output == {"p": {"for": "bob"}}


async def test_a_literal_key_is_shared_by_every_run(probe: Probe) -> None:
    spec = probe_node("p", key="{{ input.k }}")
    spec["cache"] = {"key": "constant"}
    executor = WorkflowExecutor()
    for k in ["a", "b"]:
        await executor.execute(make_workflow([spec]), {"k": k})
    assert probe.starts() == ["a"]


# --------------------------------------------------------------------------- TTL / LRU


@pytest.mark.parametrize(
    ("config", "policy", "ttl"),
    [
        ({"enable_cache": True, "cache_ttl": 10}, None, 10.0),
        ({"enable_cache": True, "cache_ttl": 100}, {"ttl": 5}, 5.0),
        ({}, {"ttl": 7}, 7.0),
        ({}, {}, ExecutionConfig().cache_ttl),
    ],
)
async def test_entries_expire_after_their_ttl_on_the_clock(
    config: dict[str, Any],
    policy: dict[str, Any] | None,
    ttl: float,
    clock: FakeClock,
    probe: Probe,
) -> None:
    spec = probe_node("p", key="{{ input.k }}")
    if policy is not None:
        spec["cache"] = policy
    workflow = make_workflow([spec], config=config)
    executor = WorkflowExecutor(clock=clock)
    await executor.execute(workflow, {"k": "x"})
    clock.current += ttl - 0.001
    await executor.execute(workflow, {"k": "x"})
    assert probe.starts() == ["x"]  # still fresh
    clock.current += 0.001
    await executor.execute(workflow, {"k": "x"})
    assert probe.starts() == ["x", "x"]  # expired: ran again (and was cached again)
    clock.current += ttl - 0.001
    await executor.execute(workflow, {"k": "x"})
    assert probe.starts() == ["x", "x"]


async def test_lru_eviction_at_cache_size(probe: Probe) -> None:
    executor = WorkflowExecutor(ExecutionConfig(enable_cache=True, cache_size=2))
    for k in ["a", "b", "a", "c", "b", "a", "c"]:
        await executor.execute(single(), {"k": k})
    # a, b cached; a hit (most recent now); c evicts b; b runs (evicts a);
    # a runs (evicts c); c runs
    assert probe.starts() == ["a", "b", "c", "b", "a", "c"]
    assert isinstance(executor.cache, InMemoryCache)
    assert len(executor.cache) == 2


async def test_cache_size_zero_caches_nothing(probe: Probe) -> None:
    executor = WorkflowExecutor(ExecutionConfig(enable_cache=True, cache_size=0))
    for _ in range(3):
        await executor.execute(single(), {"k": "x"})
    assert probe.starts() == ["x"] * 3


async def test_in_memory_cache_unit(clock: FakeClock) -> None:
    cache = InMemoryCache(2, clock)
    await cache.set("a", None, ttl=5)  # None is a cacheable value
    hit = await cache.get("a")
    assert hit is not None
    assert hit.value is None
    await cache.set("b", 1, ttl=5)
    assert await cache.get("a") is not None  # refreshes a
    await cache.set("c", 2, ttl=5)  # evicts b, the least recently used
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    clock.current += 5
    assert await cache.get("a") is None
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


# ---------------------------------------------------------------- what is never cached


async def test_failures_are_not_cached() -> None:
    workflow = make_workflow(
        [node("t", "transform", config={"output": {"v": "10 / input.d"}}, cache={"key": "k"})]
    )
    executor = WorkflowExecutor()
    assert (await executor.execute(workflow, {"d": 0})).status is RunStatus.FAILED
    # same key: had the failure been cached this would not run
    assert (await executor.execute(workflow, {"d": 5})).output == {"t": {"v": 2}}
    # and a success is: same key, served from the cache
    hit = await executor.execute(workflow, {"d": 0})
    assert hit.output == {"t": {"v": 2}}
    assert hit.node_results["t"].metadata == {"cache_hit": True}


async def test_delay_is_never_cached(clock: FakeClock, sink: RecordingSink) -> None:
    workflow = make_workflow(
        [node("d", "delay", config={"seconds": 2})], config={"enable_cache": True}
    )
    executor = WorkflowExecutor(clock=clock, event_sinks=[sink])
    runs = [await executor.execute(workflow) for _ in range(2)]
    assert clock.sleeps == [2.0, 2.0]
    assert all(cached_flags(sink, run, "d") == [False] for run in runs)


async def test_fail_is_never_cached(clock: FakeClock) -> None:
    workflow = make_workflow(
        [node("f", "fail", config={"times": 1}, retry={"delay": 1}, cache={"ttl": 60})],
        config={"enable_cache": True},
    )
    executor = WorkflowExecutor(clock=clock)
    for _ in range(2):
        result = await executor.execute(workflow)
        assert result.status is RunStatus.SUCCEEDED
        assert result.node_results["f"].attempts == 2  # it ran (and failed once) again
        assert result.node_results["f"].metadata is None
    assert clock.sleeps == [1.0, 1.0]


async def test_wait_is_never_cached(sink: RecordingSink) -> None:
    workflow = make_workflow(
        [node("w", "wait", config={"signal": "go"}, cache={})], config={"enable_cache": True}
    )
    executor = WorkflowExecutor(event_sinks=[sink])
    for payload in ["first", "second"]:
        task = asyncio.create_task(executor.execute(workflow))
        waiting = await sink.wait_for(EventType.RUN_WAITING)
        executor.signal(waiting.run_id, "go", payload)
        result = await task
        assert result.output == {"w": payload}
        sink.events.clear()
