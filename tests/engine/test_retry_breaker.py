"""Retries (per-node policy and config defaults, backoff, jitter, retry_on), fallbacks
(after retries and behind an open breaker) and circuit breakers (closed -> open ->
half-open -> closed/open, keys, sharing across executors and runs), all timing on a
fake clock."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from app.engine import (
    BaseNode,
    CircuitBreakerPolicy,
    EventType,
    ExecutionConfig,
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
from app.engine.breaker import (
    BreakerState,
    CircuitOpenError,
    InMemoryCircuitBreakers,
    process_breakers,
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

# --------------------------------------------------------------------------- test nodes


class KindError(Exception):
    """An exception carrying an engine error kind (as FlowcoreError subclasses do)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"failed with kind {kind}")
        self.kind = kind


class HintError(Exception):
    """A failure that says how long to wait, as an HTTP 429's Retry-After does."""

    kind = "execution"

    def __init__(self, retry_after: Any) -> None:
        super().__init__(f"slow down for {retry_after}")
        self.retry_after = retry_after


class Service:
    """A fake downstream service the ``rb_service`` nodes call."""

    def __init__(self) -> None:
        self.down = False
        #: fail only this many more calls (None: as long as ``down``)
        self.failures_left: int | None = None
        self.calls: Counter[str] = Counter()
        #: when set, calls block on it (to hold a call in flight)
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    def failing(self) -> bool:
        if self.failures_left is not None:
            if self.failures_left <= 0:
                return False
            self.failures_left -= 1
            return True
        return self.down


_service = Service()


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = "execution"
    host: str | None = None


class ServiceNode(BaseNode):
    """Calls the fake service: counts the call, fails with ``kind`` while it is down."""

    config_model = ServiceConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        _service.calls[node_context.node_id] += 1
        _service.entered.set()
        if _service.gate is not None:
            await _service.gate.wait()
        if _service.failing():
            raise KindError(str(node_context.config.get("kind", "execution")))
        return NodeResult(output={"served_by": node_context.node_id})

    def breaker_key(self, config: Any) -> str:
        host = config.get("host")
        return f"host:{host}" if host else super().breaker_key(config)


@pytest.fixture
def service() -> Iterator[Service]:
    global _service
    _service = Service()
    NodeRegistry.register("rb_service")(ServiceNode)
    try:
        yield _service
    finally:
        NodeRegistry.unregister("rb_service")


def svc(node_id: str, /, **fields: Any) -> dict[str, Any]:
    return node(node_id, "rb_service", **fields)


def retry_events(sink: RecordingSink) -> list[tuple[int, float]]:
    return [(e.data["attempt"], e.data["delay"]) for e in sink.of(EventType.NODE_RETRY)]


def failure_kind(result: RunResult) -> str:
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    return result.error.kind


# ------------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"max_retries": 3, "delay": 1.0, "backoff": 2.0}, [1.0, 2.0, 4.0]),
        ({"max_retries": 4, "delay": 0.5, "backoff": 3.0}, [0.5, 1.5, 4.5, 13.5]),
        ({"max_retries": 5, "delay": 2.0, "backoff": 1.0}, [2.0] * 5),
        ({"max_retries": 4, "delay": 1.0, "backoff": 4.0, "max_delay": 10.0}, [1, 4, 10, 10]),
        ({"max_retries": 2, "delay": 0.0}, [0.0, 0.0]),
    ],
)
async def test_retry_policy_delays_on_the_fake_clock(
    policy: dict[str, Any], expected: list[float], clock: FakeClock, sink: RecordingSink
) -> None:
    retries = policy["max_retries"]
    workflow = make_workflow([node("n", "fail", config={"times": retries}, retry=policy)])
    before = clock.now()
    result = await WorkflowExecutor(clock=clock, event_sinks=[sink]).execute(workflow)

    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["n"].attempts == retries + 1
    assert retry_events(sink) == [(k + 2, float(d)) for k, d in enumerate(expected)]
    # a zero delay is not slept at all
    assert clock.sleeps == [float(d) for d in expected if d > 0]
    assert clock.now() - before == pytest.approx(sum(expected))


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (7, [7.0]),  # longer than the policy's delay: the server's wait
        (0.1, [1.0]),  # shorter: the policy's
        (500, [30.0]),  # never past max_delay
        (float("nan"), [1.0]),  # not a number of seconds: ignored
        (True, [1.0]),
    ],
)
async def test_a_retry_waits_as_long_as_the_error_asks(
    hint: Any, expected: list[float], clock: FakeClock, sink: RecordingSink
) -> None:
    calls = {"n": 0}

    class Hinting(BaseNode):
        async def execute(
            self, node_context: NodeContext, workflow_context: WorkflowContext
        ) -> NodeResult:
            calls["n"] += 1
            if calls["n"] == 1:
                raise HintError(hint)
            return NodeResult(output=1)

    NodeRegistry.register("rb_hinting")(Hinting)
    try:
        policy = {"max_retries": 2, "delay": 1.0, "max_delay": 30.0}
        workflow = make_workflow([node("h", "rb_hinting", retry=policy)])
        result = await WorkflowExecutor(clock=clock, event_sinks=[sink]).execute(workflow)
    finally:
        NodeRegistry.unregister("rb_hinting")
    assert result.status is RunStatus.SUCCEEDED
    assert [delay for _, delay in retry_events(sink)] == expected
    assert clock.sleeps == expected


async def test_each_retry_event_names_the_attempt_delay_and_the_error(
    clock: FakeClock, sink: RecordingSink
) -> None:
    workflow = make_workflow(
        [node("n", "fail", config={"times": 2, "message": "flaky"}, retry={"delay": 0.1})]
    )
    await WorkflowExecutor(clock=clock, event_sinks=[sink]).execute(workflow)
    events = sink.of(EventType.NODE_RETRY)
    assert [e.node_id for e in events] == ["n", "n"]
    assert [e.data["attempt"] for e in events] == [2, 3]
    assert all(e.data["kind"] == "deliberate" and e.data["error"] == "flaky" for e in events)
    # each retry comes after the failure it retries and before the attempt it announces
    types = [e.type for e in sink.events if e.node_id == "n"]
    assert types == [
        EventType.NODE_STARTED,
        EventType.NODE_RETRY,
        EventType.NODE_RETRY,
        EventType.NODE_COMPLETED,
    ]


async def test_unset_policy_fields_take_the_config_defaults(clock: FakeClock) -> None:
    config = ExecutionConfig(max_retries=2, retry_delay=0.5)
    workflow = make_workflow([node("n", "fail", retry={"backoff": 3.0})])
    result = await WorkflowExecutor(config, clock=clock).execute(workflow)
    assert result.node_results["n"].attempts == 3
    assert clock.sleeps == [0.5, 1.5]


@pytest.mark.parametrize(
    ("config", "attempts", "sleeps"),
    [
        ({"retry_failed_nodes": True, "max_retries": 3, "retry_delay": 0.1}, 4, [0.1, 0.2, 0.4]),
        ({"retry_failed_nodes": True, "max_retries": 0}, 1, []),
        ({"retry_failed_nodes": False, "max_retries": 3}, 1, []),
        ({"on_error": "retry", "max_retries": 1, "retry_delay": 2.0}, 2, [2.0]),
    ],
)
async def test_config_defaults_retry_every_node(
    config: dict[str, Any], attempts: int, sleeps: list[float], clock: FakeClock
) -> None:
    workflow = make_workflow([node("a", "fail"), node("b", "noop")], [("a", "b")])
    result = await WorkflowExecutor(ExecutionConfig(**config), clock=clock).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.node_results["a"].attempts == attempts
    assert clock.sleeps == sleeps


async def test_a_per_node_policy_overrides_retry_failed_nodes(clock: FakeClock) -> None:
    config = ExecutionConfig(retry_failed_nodes=True, max_retries=5, retry_delay=1.0)
    workflow = make_workflow([node("n", "fail", retry={"max_retries": 1, "delay": 7.0})])
    result = await WorkflowExecutor(config, clock=clock).execute(workflow)
    assert result.node_results["n"].attempts == 2
    assert clock.sleeps == [7.0]


@pytest.mark.parametrize("extreme", [-1.0, 1.0])
async def test_jitter_scales_the_delay_by_at_most_the_jitter_fraction(
    extreme: float, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        calls.append((low, high))
        return high if extreme > 0 else low

    monkeypatch.setattr(random, "uniform", uniform)
    workflow = make_workflow(
        [node("n", "fail", retry={"max_retries": 3, "delay": 1.0, "backoff": 2.0, "jitter": 0.25})]
    )
    await WorkflowExecutor(clock=clock).execute(workflow)
    assert calls == [(-0.25, 0.25)] * 3
    factor = 1 + 0.25 * extreme
    assert clock.sleeps == pytest.approx([1.0 * factor, 2.0 * factor, 4.0 * factor])


async def test_jittered_delays_stay_within_bounds_and_vary(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", random.Random(1234).uniform)  # reproducible
    workflow = make_workflow(
        [node("n", "fail", retry={"max_retries": 30, "delay": 1.0, "backoff": 1.0, "jitter": 0.5})]
    )
    await WorkflowExecutor(clock=clock).execute(workflow)
    assert len(clock.sleeps) == 30
    assert all(0.5 <= s <= 1.5 for s in clock.sleeps)
    assert len(set(clock.sleeps)) > 1  # jitter actually applied


async def test_jitter_never_pushes_a_delay_past_max_delay(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    workflow = make_workflow(
        [
            node(
                "n",
                "fail",
                retry={"max_retries": 3, "delay": 4.0, "max_delay": 5.0, "jitter": 0.5},
            )
        ]
    )
    await WorkflowExecutor(clock=clock).execute(workflow)
    assert len(clock.sleeps) == 3
    assert max(clock.sleeps) <= 5.0


@pytest.mark.parametrize(
    ("retry_on", "kind", "retried"),
    [
        (["timeout"], "timeout", True),
        (["timeout"], "execution", False),
        (["timeout", "execution"], "execution", True),
        (None, "execution", True),
        (None, "anything", True),
        (None, "circuit_open", False),  # retrying into an open breaker only fails again
        (None, "config", False),
        (["circuit_open"], "circuit_open", True),
    ],
)
async def test_retry_on_selects_the_error_kinds_retried(
    retry_on: list[str] | None, kind: str, retried: bool, clock: FakeClock, service: Service
) -> None:
    service.down = True
    policy: dict[str, Any] = {"max_retries": 2, "delay": 1.0}
    if retry_on is not None:
        policy["retry_on"] = retry_on
    workflow = make_workflow([svc("n", config={"kind": kind}, retry=policy)])
    result = await WorkflowExecutor(clock=clock).execute(workflow)
    assert failure_kind(result) == kind
    assert service.calls["n"] == (3 if retried else 1)
    assert result.node_results["n"].attempts == service.calls["n"]
    assert len(clock.sleeps) == (2 if retried else 0)


async def test_a_real_node_timeout_is_retried_when_retry_on_names_it(
    clock: FakeClock, probe: Probe, sink: RecordingSink
) -> None:
    # asyncio.timeout() enforces node timeouts in loop time; the backoff is on the fake clock
    spec = probe_node("stuck", block=True)
    spec.update(timeout=0.01, retry={"max_retries": 2, "delay": 3.0, "retry_on": ["timeout"]})
    result = await WorkflowExecutor(clock=clock, event_sinks=[sink]).execute(make_workflow([spec]))
    assert failure_kind(result) == "timeout"
    assert result.node_results["stuck"].attempts == 3
    assert probe.cancelled == ["stuck"] * 3  # every timed-out attempt was cancelled
    assert clock.sleeps == [3.0, 6.0]
    assert {e.data["kind"] for e in sink.of(EventType.NODE_RETRY)} == {"timeout"}


async def test_a_node_that_recovers_mid_retry_stops_retrying(
    clock: FakeClock, service: Service
) -> None:
    service.failures_left = 2
    workflow = make_workflow([svc("n", retry={"max_retries": 10, "delay": 1.0})])
    result = await WorkflowExecutor(clock=clock).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED
    assert service.calls["n"] == 3
    assert clock.sleeps == [1.0, 2.0]


# ----------------------------------------------------------------------------- fallbacks


def with_fallback(primary: dict[str, Any]) -> WorkflowDefinition:
    return make_workflow(
        [
            {**primary, "fallback": "backup"},
            node("backup", "transform", config={"output": {"from": "'backup'"}}),
            node("down", "transform", config={"output": {"saw": "nodes.primary.output.from"}}),
        ],
        [("primary", "down")],
    )


async def test_the_fallback_runs_once_after_the_retries_are_exhausted(
    clock: FakeClock, service: Service, sink: RecordingSink
) -> None:
    service.down = True
    workflow = with_fallback(svc("primary", retry={"max_retries": 2, "delay": 1.0}))
    result = await WorkflowExecutor(clock=clock, event_sinks=[sink]).execute(workflow)

    assert result.status is RunStatus.SUCCEEDED
    assert service.calls["primary"] == 3
    assert result.node_results["down"].output == {"saw": "backup"}
    primary = result.node_results["primary"]
    assert primary.status is NodeStatus.SUCCEEDED
    assert primary.output == {"from": "backup"}
    assert primary.fallback_from == "backup"
    order = [(e.type.value, e.node_id) for e in sink.events if e.node_id in ("primary", "backup")]
    assert order[:5] == [
        ("node.started", "primary"),
        ("node.retry", "primary"),
        ("node.retry", "primary"),
        ("node.failed", "primary"),
        ("node.started", "backup"),
    ]
    assert [n for t, n in order].count("backup") == 2  # started and completed, once


async def test_the_fallback_stands_in_while_the_breaker_is_open(
    clock: FakeClock, service: Service, sink: RecordingSink
) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    workflow = with_fallback(
        svc("primary", circuit_breaker={"failure_threshold": 1, "recovery_timeout": 60})
    )
    executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers, event_sinks=[sink])
    service.down = True
    first = await executor.execute(workflow)
    assert first.node_results["down"].output == {"saw": "backup"}
    assert service.calls["primary"] == 1

    service.down = False  # recovered, but the breaker does not know yet
    second = await executor.execute(workflow)
    assert second.status is RunStatus.SUCCEEDED
    assert service.calls["primary"] == 1  # failed fast: not called
    assert second.node_results["down"].output == {"saw": "backup"}
    failed = [e for e in sink.of(EventType.NODE_FAILED) if e.run_id == second.run_id]
    assert [(e.node_id, e.data["kind"]) for e in failed] == [("primary", "circuit_open")]


# ---------------------------------------------------------------------- circuit breaker


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def breaker_workflow(**policy: Any) -> WorkflowDefinition:
    return make_workflow([svc("call", circuit_breaker=policy)])


async def test_breaker_lifecycle_closed_open_half_open_closed(
    clock: FakeClock, service: Service
) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    workflow = breaker_workflow(failure_threshold=3, recovery_timeout=30)
    service.down = True

    for n in range(1, 4):
        result = await executor.execute(workflow)
        assert failure_kind(result) == "execution"
        assert service.calls["call"] == n
    status = await breakers.status("rb_service")
    assert status.state is BreakerState.OPEN
    opened_at = clock.now()

    # open: fails fast, saying so and when it half-opens
    fast = await executor.execute(workflow)
    assert failure_kind(fast) == "circuit_open"
    assert service.calls["call"] == 3
    assert fast.error is not None
    message = fast.error.message
    assert "'rb_service' is open" in message
    assert f"half-opens at {iso(opened_at + 30)}" in message
    assert "(in 30.0s)" in message
    assert fast.node_results["call"].error_kind == "circuit_open"

    clock.current += 10
    later = await executor.execute(workflow)
    assert later.error is not None
    assert "(in 20.0s)" in later.error.message
    assert service.calls["call"] == 3

    # after recovery_timeout the breaker half-opens and lets a trial call through
    clock.current += 20
    service.down = False
    trial = await executor.execute(workflow)
    assert trial.status is RunStatus.SUCCEEDED
    assert service.calls["call"] == 4
    assert (await breakers.status("rb_service")).state is BreakerState.CLOSED
    assert [(a.value, b.value) for _, a, b in breakers.transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    # closed again: failures count from zero
    service.down = True
    for _ in range(2):
        await executor.execute(workflow)
    assert (await breakers.status("rb_service")).state is BreakerState.CLOSED


async def test_a_failed_trial_call_reopens_the_breaker(clock: FakeClock, service: Service) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    workflow = breaker_workflow(failure_threshold=1, recovery_timeout=5)
    service.down = True
    await executor.execute(workflow)
    clock.current += 5
    trial = await executor.execute(workflow)
    assert failure_kind(trial) == "execution"  # the trial call ran, and failed
    assert service.calls["call"] == 2
    status = await breakers.status("rb_service")
    assert status.state is BreakerState.OPEN
    assert status.opened_at == clock.now()  # the recovery timeout starts over
    fast = await executor.execute(workflow)
    assert failure_kind(fast) == "circuit_open"
    assert fast.error is not None
    assert "(in 5.0s)" in fast.error.message
    assert service.calls["call"] == 2


async def test_success_resets_the_consecutive_failure_count(
    clock: FakeClock, service: Service
) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    workflow = breaker_workflow(failure_threshold=3)
    for down in [True, True, False, True, True]:
        service.down = down
        await executor.execute(workflow)
    assert (await breakers.status("rb_service")).state is BreakerState.CLOSED
    service.down = True
    await executor.execute(workflow)
    assert (await breakers.status("rb_service")).state is BreakerState.OPEN


async def test_half_open_admits_at_most_half_open_max_calls(clock: FakeClock) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    policy = CircuitBreakerPolicy(failure_threshold=1, recovery_timeout=10, half_open_max_calls=2)
    await breakers.acquire("k", policy)
    await breakers.record("k", policy, False)
    with pytest.raises(CircuitOpenError):
        await breakers.acquire("k", policy)
    clock.current += 10
    await breakers.acquire("k", policy)
    await breakers.acquire("k", policy)
    assert (await breakers.status("k")).state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError) as refused:
        await breakers.acquire("k", policy)
    assert refused.value.kind == "circuit_open"
    await breakers.record("k", policy, True)
    assert (await breakers.status("k")).state is BreakerState.CLOSED
    await breakers.acquire("k", policy)  # closed: admitted


async def test_concurrent_calls_in_half_open_beyond_the_limit_fail_fast(
    clock: FakeClock, service: Service
) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    workflow = breaker_workflow(failure_threshold=1, recovery_timeout=5, half_open_max_calls=1)
    service.down = True
    await executor.execute(workflow)
    clock.current += 5
    service.down = False
    service.gate = asyncio.Event()
    service.entered.clear()
    trial = asyncio.create_task(executor.execute(workflow))
    await asyncio.wait_for(service.entered.wait(), HANG_GUARD)
    refused = await executor.execute(workflow)  # while the trial call is in flight
    assert failure_kind(refused) == "circuit_open"
    service.gate.set()
    assert (await trial).status is RunStatus.SUCCEEDED
    assert service.calls["call"] == 2
    assert (await breakers.status("rb_service")).state is BreakerState.CLOSED


async def test_breakers_are_shared_by_executors_given_the_same_store(
    clock: FakeClock, service: Service
) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    first = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    second = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    workflow = breaker_workflow(failure_threshold=2)
    service.down = True
    await first.execute(workflow)
    await second.execute(workflow)  # the second failure, seen through another executor
    result = await first.execute(workflow)
    assert failure_kind(result) == "circuit_open"
    assert failure_kind(await second.execute(workflow)) == "circuit_open"
    assert service.calls["call"] == 2


async def test_executors_share_the_process_breakers_by_default(service: Service) -> None:
    key = f"process-{uuid.uuid4().hex}"  # the process-wide store outlives this test
    workflow = make_workflow(
        [svc("call", circuit_breaker={"key": key, "failure_threshold": 1, "recovery_timeout": 600})]
    )
    service.down = True
    first = await WorkflowExecutor().execute(workflow)
    assert failure_kind(first) == "execution"
    second = await WorkflowExecutor().execute(workflow)
    assert failure_kind(second) == "circuit_open"
    assert service.calls["call"] == 1
    assert process_breakers() is process_breakers()
    assert (await process_breakers().status(key)).state is BreakerState.OPEN


@pytest.mark.parametrize(
    ("specs", "shared"),
    [
        # default key: the node type, so two nodes of one type share a breaker
        ([svc("a"), svc("b")], True),
        # BaseNode.breaker_key(config): this type keys by host
        ([svc("a", config={"host": "x"}), svc("b", config={"host": "y"})], False),
        ([svc("a", config={"host": "x"}), svc("b", config={"host": "x"})], True),
        # an explicit key wins over the type's
        ([svc("a", key_="one"), svc("b", key_="two")], False),
        (
            [svc("a", config={"host": "x"}, key_="k"), svc("b", config={"host": "y"}, key_="k")],
            True,
        ),
    ],
)
async def test_breaker_keys(
    specs: list[dict[str, Any]], shared: bool, clock: FakeClock, service: Service
) -> None:
    for spec in specs:
        key = spec.pop("key_", None)
        policy: dict[str, Any] = {"failure_threshold": 1}
        if key is not None:
            policy["key"] = key
        spec["circuit_breaker"] = policy
    a, b = specs
    breakers = InMemoryCircuitBreakers(clock)
    executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    service.down = True
    await executor.execute(make_workflow([a]))
    service.down = False
    result = await executor.execute(make_workflow([b]))
    if shared:
        assert failure_kind(result) == "circuit_open"
        assert service.calls["b"] == 0
    else:
        assert result.status is RunStatus.SUCCEEDED
        assert service.calls["b"] == 1


async def test_a_node_type_default_breaker_applies_without_a_spec(
    clock: FakeClock, service: Service
) -> None:
    class GuardedService(ServiceNode):
        default_circuit_breaker = CircuitBreakerPolicy(failure_threshold=1)

    NodeRegistry.register("rb_guarded")(GuardedService)
    try:
        breakers = InMemoryCircuitBreakers(clock)
        executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
        workflow = make_workflow([node("g", "rb_guarded")])
        service.down = True
        await executor.execute(workflow)
        assert failure_kind(await executor.execute(workflow)) == "circuit_open"
        assert (await breakers.status("rb_guarded")).state is BreakerState.OPEN
    finally:
        NodeRegistry.unregister("rb_guarded")


async def test_nodes_without_a_breaker_never_touch_the_store(
    clock: FakeClock, service: Service
) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    service.down = True
    for _ in range(10):
        await executor.execute(make_workflow([svc("plain")]))
    assert service.calls["plain"] == 10
    assert list(breakers.transitions) == []


async def test_a_cancelled_trial_call_does_not_wedge_the_breaker(
    clock: FakeClock, service: Service
) -> None:
    breakers = InMemoryCircuitBreakers(clock)
    executor = WorkflowExecutor(clock=clock, circuit_breakers=breakers)
    workflow = breaker_workflow(failure_threshold=1, recovery_timeout=5)
    service.down = True
    await executor.execute(workflow)
    clock.current += 5
    service.down = False
    service.gate = asyncio.Event()
    service.entered.clear()
    trial = asyncio.create_task(executor.execute(workflow))
    await asyncio.wait_for(service.entered.wait(), HANG_GUARD)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    service.gate = None
    clock.current += 60  # well past another recovery timeout
    result = await executor.execute(workflow)
    assert result.status is RunStatus.SUCCEEDED


async def test_in_process_breakers_stay_bounded_whatever_keys_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # keys come from run input (an http node's host): a replica must not keep them all
    monkeypatch.setattr(InMemoryCircuitBreakers, "MAX_KEYS", 100)
    monkeypatch.setattr(InMemoryCircuitBreakers, "MAX_TRANSITIONS", 10)
    breakers = InMemoryCircuitBreakers()
    policy = CircuitBreakerPolicy(failure_threshold=1)
    await breakers.acquire("failing", policy)
    await breakers.record("failing", policy, False)  # opens: kept whatever comes next
    for n in range(1000):
        await breakers.acquire(f"host-{n}", policy)
        await breakers.record(f"host-{n}", policy, True)
    assert len(breakers._breakers) <= 100
    assert (await breakers.status("failing")).state is BreakerState.OPEN
    for n in range(30):
        await breakers.acquire(f"flaky-{n}", policy)
        await breakers.record(f"flaky-{n}", policy, False)
    assert len(breakers.transitions) == 10
    assert breakers.transition_count == 31
