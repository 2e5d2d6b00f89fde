"""The ``CircuitBreakerStore`` port's contract, run against the engine's in-process
breakers (the reference semantics, on a fake clock), the service's ``MeteredBreakers``
around them, and ``RedisCircuitBreakers`` — then Redis breakers across replicas and with
a Redis that stops or hangs.

Redis time is real: waiting for a breaker to half-open polls with a deadline (the fake
clock is advanced instead for the in-process ones), never a sleep-based assertion.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from app.cache import MeteredBreakers, RedisCircuitBreakers
from app.engine.breaker import (
    BreakerState,
    CircuitBreakerStore,
    CircuitOpenError,
    InMemoryCircuitBreakers,
)
from app.engine.dsl import CircuitBreakerPolicy
from app.redis_link import RedisLink
from tests.redis_support import RedisServer, bounded, require_redis, unique_prefix

HANG_GUARD = 10.0
#: long enough (in real time, for Redis) that a breaker opened a moment ago is still open
RECOVERY = 1.0
POLICY = CircuitBreakerPolicy(failure_threshold=3, recovery_timeout=RECOVERY, half_open_max_calls=2)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.current = 1_000_000.0

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.current += seconds
        await asyncio.sleep(0)


#: the implementations under test (each keeps the transitions it made)
Breakers = InMemoryCircuitBreakers | MeteredBreakers | RedisCircuitBreakers


@dataclass
class Backend:
    """One implementation: ``store`` on this replica, ``other`` another replica sharing
    its state (the same store in process), ``tick`` lets time pass."""

    name: str
    store: Breakers
    other: Breakers
    tick: Callable[[], Awaitable[None]]
    links: list[RedisLink] = field(default_factory=list)

    def transitions(self) -> list[tuple[str, BreakerState, BreakerState]]:
        return list(self.store.transitions)


def breaker_key() -> str:
    return f"svc-{uuid.uuid4().hex[:12]}"


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def real_tick() -> None:
    await asyncio.sleep(0.05)


@pytest.fixture(params=["engine", "metered", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param != "redis":
        clock = FakeClock()
        inner = InMemoryCircuitBreakers(clock)
        store: Breakers = inner if request.param == "engine" else MeteredBreakers(inner)

        async def fake_tick() -> None:
            clock.current += 0.05

        yield Backend(request.param, store, store, fake_tick)
        return
    url, prefix = require_redis(), unique_prefix()
    links = [RedisLink(url, prefix=prefix, timeout=2.0) for _ in range(2)]
    try:
        yield Backend(
            "redis",
            RedisCircuitBreakers(links[0]),
            RedisCircuitBreakers(links[1]),
            real_tick,
            links,
        )
        assert all(link.up for link in links), "the shared Redis failed during the test"
    finally:
        for link in links:
            await link.close()


async def fail(
    store: CircuitBreakerStore, key: str, times: int, policy: CircuitBreakerPolicy = POLICY
) -> None:
    for _ in range(times):
        await store.acquire(key, policy)
        await store.record(key, policy, success=False)


async def until_admitted(backend: Backend, key: str) -> None:
    """Acquire as soon as the breaker lets a call through."""
    give_up = time.monotonic() + HANG_GUARD
    while True:
        try:
            await backend.store.acquire(key, POLICY)
            return
        except CircuitOpenError:
            assert time.monotonic() < give_up, f"{key} never half-opened"
            await backend.tick()


async def refusal(store: CircuitBreakerStore, key: str) -> CircuitOpenError:
    with pytest.raises(CircuitOpenError) as caught:
        await store.acquire(key, POLICY)
    return caught.value


# ------------------------------------------------------------------ the port contract


async def test_a_breaker_nobody_used_is_closed(backend: Backend) -> None:
    key = breaker_key()
    status = await backend.store.status(key)
    assert (status.key, status.state, status.failures, status.opened_at) == (key, CLOSED, 0, None)
    assert status.half_open_calls == 0


async def test_it_opens_after_failure_threshold_consecutive_failures(backend: Backend) -> None:
    key = breaker_key()
    await fail(backend.store, key, POLICY.failure_threshold - 1)
    assert (await backend.store.status(key)).state is CLOSED
    await backend.store.acquire(key, POLICY)  # still admits
    await backend.store.record(key, POLICY, success=False)
    status = await backend.store.status(key)
    assert status.state is OPEN
    assert status.failures == POLICY.failure_threshold
    assert status.opened_at is not None
    assert backend.transitions() == [(key, CLOSED, OPEN)]


async def test_a_success_resets_the_failure_count(backend: Backend) -> None:
    key = breaker_key()
    await fail(backend.store, key, POLICY.failure_threshold - 1)
    await backend.store.acquire(key, POLICY)
    await backend.store.record(key, POLICY, success=True)
    assert (await backend.store.status(key)).failures == 0
    await fail(backend.store, key, POLICY.failure_threshold - 1)
    assert (await backend.store.status(key)).state is CLOSED
    assert backend.transitions() == []


async def test_an_open_breaker_refuses_at_once_naming_when_it_half_opens(
    backend: Backend,
) -> None:
    key = breaker_key()
    await fail(backend.store, key, POLICY.failure_threshold)
    opened_at = (await backend.store.status(key)).opened_at
    assert opened_at is not None
    error = await refusal(backend.store, key)
    assert error.key == key
    assert error.kind == "circuit_open"
    assert error.retry_at == pytest.approx(opened_at + RECOVERY, abs=1e-3)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(error.retry_at))
    pattern = rf"circuit breaker '{key}' is open; it half-opens at {when} \(in (\d+\.\d)s\)"
    match = re.fullmatch(pattern, str(error))
    assert match is not None, str(error)
    assert 0.0 <= float(match[1]) <= RECOVERY
    assert (await backend.store.status(key)).state is OPEN  # refusing changes nothing


async def test_half_open_admits_exactly_half_open_max_calls(backend: Backend) -> None:
    key = breaker_key()
    await fail(backend.store, key, POLICY.failure_threshold)
    await until_admitted(backend, key)
    await backend.store.acquire(key, POLICY)  # the second trial call
    error = await refusal(backend.store, key)
    status = await backend.store.status(key)
    assert status.state is HALF_OPEN
    assert status.half_open_calls == POLICY.half_open_max_calls
    assert status.half_opened_at is not None
    assert error.retry_at == pytest.approx(status.half_opened_at + RECOVERY, abs=1e-3)
    assert backend.transitions() == [(key, CLOSED, OPEN), (key, OPEN, HALF_OPEN)]


async def test_a_trial_success_closes_it(backend: Backend) -> None:
    key = breaker_key()
    await fail(backend.store, key, POLICY.failure_threshold)
    await until_admitted(backend, key)
    await backend.store.record(key, POLICY, success=True)
    status = await backend.store.status(key)
    assert (status.state, status.failures) == (CLOSED, 0)
    await backend.store.acquire(key, POLICY)
    await backend.store.acquire(key, POLICY)
    await backend.store.acquire(key, POLICY)  # closed: no limit
    assert backend.transitions() == [
        (key, CLOSED, OPEN),
        (key, OPEN, HALF_OPEN),
        (key, HALF_OPEN, CLOSED),
    ]


async def test_a_trial_failure_opens_it_again(backend: Backend) -> None:
    key = breaker_key()
    await fail(backend.store, key, POLICY.failure_threshold)
    first_opened_at = (await backend.store.status(key)).opened_at
    assert first_opened_at is not None
    await until_admitted(backend, key)
    await backend.store.record(key, POLICY, success=False)
    status = await backend.store.status(key)
    assert status.state is OPEN
    assert status.opened_at is not None
    assert status.opened_at > first_opened_at
    error = await refusal(backend.store, key)
    assert error.retry_at == pytest.approx(status.opened_at + RECOVERY, abs=1e-3)
    assert backend.transitions() == [
        (key, CLOSED, OPEN),
        (key, OPEN, HALF_OPEN),
        (key, HALF_OPEN, OPEN),
    ]


async def test_a_late_success_while_open_neither_closes_it_nor_spares_the_trial(
    backend: Backend,
) -> None:
    key = breaker_key()
    await backend.store.acquire(key, POLICY)  # a slow call, admitted while closed
    await fail(backend.store, key, POLICY.failure_threshold)
    await backend.store.record(key, POLICY, success=True)  # the slow call reports late
    status = await backend.store.status(key)
    assert (status.state, status.failures) == (OPEN, 0)
    await refusal(backend.store, key)
    await until_admitted(backend, key)
    await backend.store.record(key, POLICY, success=False)  # one failed trial is enough
    assert (await backend.store.status(key)).state is OPEN


async def test_trial_slots_never_reported_are_freed_after_the_recovery_timeout(
    backend: Backend,
) -> None:
    key = breaker_key()
    await fail(backend.store, key, POLICY.failure_threshold)
    await until_admitted(backend, key)
    await backend.store.acquire(key, POLICY)
    first_half_opened_at = (await backend.store.status(key)).half_opened_at
    assert first_half_opened_at is not None
    # both trial calls vanished without a record(): the slots come back in time
    await until_admitted(backend, key)
    status = await backend.store.status(key)
    assert (status.state, status.half_open_calls) == (HALF_OPEN, 1)
    assert status.half_opened_at is not None
    assert status.half_opened_at > first_half_opened_at


async def test_breakers_are_independent(backend: Backend) -> None:
    broken, healthy = breaker_key(), breaker_key()
    await fail(backend.store, broken, POLICY.failure_threshold)
    await backend.store.acquire(healthy, POLICY)
    assert (await backend.store.status(healthy)).state is CLOSED


async def test_concurrent_trial_calls_take_exactly_the_free_slots(backend: Backend) -> None:
    key = breaker_key()
    await fail(backend.store, key, POLICY.failure_threshold)
    await until_admitted(backend, key)  # one slot taken; one left, for many contenders

    async def attempt(store: CircuitBreakerStore) -> bool:
        try:
            await store.acquire(key, POLICY)
        except CircuitOpenError:
            return False
        return True

    stores = [backend.store, backend.other] * 10
    admitted = await asyncio.gather(*(attempt(store) for store in stores))
    assert sum(admitted) == POLICY.half_open_max_calls - 1


# ------------------------------------------------------------------ metrics


@pytest.mark.parametrize("name", ["metered", "redis"])
async def test_transitions_update_the_breaker_metrics(name: str) -> None:
    if name == "metered":
        clock = FakeClock()
        store: CircuitBreakerStore = MeteredBreakers(InMemoryCircuitBreakers(clock))
        links: list[RedisLink] = []
    else:
        links = [RedisLink(require_redis(), prefix=unique_prefix(), timeout=2.0)]
        store = RedisCircuitBreakers(links[0])
    key = breaker_key()

    def state_gauge() -> dict[str, float | None]:
        return {
            s.value: metric("flowcore_circuit_breaker_state", breaker=key, state=s.value)
            for s in BreakerState
        }

    try:
        await store.acquire(key, POLICY)
        assert state_gauge() == {"closed": 1.0, "open": 0.0, "half_open": 0.0}
        await fail(store, key, POLICY.failure_threshold)
        with pytest.raises(CircuitOpenError):
            await store.acquire(key, POLICY)
        assert state_gauge() == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
        transitions = metric(
            "flowcore_circuit_breaker_transitions_total",
            breaker=key,
            from_state="closed",
            to_state="open",
        )
        assert transitions == 1.0
    finally:
        for link in links:
            await link.close()


# ------------------------------------------------------------------ Redis specifics


@pytest.fixture
async def shared_links() -> AsyncIterator[list[RedisLink]]:
    url, prefix = require_redis(), unique_prefix()
    links = [RedisLink(url, prefix=prefix, timeout=2.0) for _ in range(2)]
    try:
        yield links
    finally:
        for link in links:
            await link.close()


async def test_a_breaker_opened_on_one_replica_is_open_on_every_replica(
    shared_links: list[RedisLink],
) -> None:
    replica_a, replica_b = (RedisCircuitBreakers(link) for link in shared_links)
    key = breaker_key()
    await fail(replica_a, key, POLICY.failure_threshold - 1)
    await fail(replica_b, key, 1)  # failures add up across replicas
    error_a, error_b = await refusal(replica_a, key), await refusal(replica_b, key)
    assert error_a.retry_at == error_b.retry_at
    assert (await replica_a.status(key)) == (await replica_b.status(key))
    assert list(replica_b.transitions) == [(key, CLOSED, OPEN)]
    assert list(replica_a.transitions) == []


async def test_the_scripts_are_loaded_again_after_a_script_flush(
    shared_links: list[RedisLink],
) -> None:
    breakers, key = RedisCircuitBreakers(shared_links[0]), breaker_key()
    await fail(breakers, key, 1)
    await shared_links[0].client.script_flush()  # what a restarted Redis looks like
    await fail(breakers, key, POLICY.failure_threshold - 1)
    assert (await breakers.status(key)).state is OPEN
    assert shared_links[0].up


async def test_the_state_is_one_hash_per_breaker_under_the_prefix(
    shared_links: list[RedisLink],
) -> None:
    link = shared_links[0]
    key = breaker_key()
    await fail(RedisCircuitBreakers(link), key, POLICY.failure_threshold)
    stored = await link.client.hgetall(link.key("breaker", key))
    assert stored[b"state"] == b"open"
    assert int(stored[b"failures"]) == POLICY.failure_threshold


# --------------------------------------------------------- a Redis that fails


async def until(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < give_up, f"{what} did not happen"
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stopped", "paused"])
async def test_a_failing_redis_degrades_to_process_breakers_then_recovers(
    redis_server: RedisServer, private_links: list[RedisLink], outage: str
) -> None:
    link_a, link_b = private_links
    policy = CircuitBreakerPolicy(failure_threshold=2, recovery_timeout=600.0)
    replica_a = RedisCircuitBreakers(link_a, InMemoryCircuitBreakers(FakeClock()))
    replica_b = RedisCircuitBreakers(link_b)
    open_in_redis, opened_during = breaker_key(), breaker_key()
    for _ in range(policy.failure_threshold):
        await replica_a.record(open_in_redis, policy, success=False)

    if outage == "stopped":
        redis_server.stop()
    else:
        redis_server.pause()
    try:
        # the process's own breakers take over: this one has seen no failure here (a
        # refused connection marks the link down at once, a hang after two timeouts)
        await bounded(replica_a.acquire(open_in_redis, policy))
        await bounded(replica_a.acquire(open_in_redis, policy))
        assert not link_a.up
        # and they work: failures open them, an open one refuses, nothing else raises
        for _ in range(policy.failure_threshold):
            await bounded(replica_a.acquire(opened_during, policy))
            await bounded(replica_a.record(opened_during, policy, success=False))
        with pytest.raises(CircuitOpenError):
            await bounded(replica_a.acquire(opened_during, policy))
        assert (await bounded(replica_a.status(opened_during))).state is OPEN
        assert (opened_during, CLOSED, OPEN) in replica_a.transitions
    finally:
        if outage == "stopped":
            redis_server.start()  # same port, empty, no scripts loaded
        else:
            redis_server.resume()

    await until(lambda: link_a.up, "the link's recovery")
    # back on Redis, and the breaker that opened on A meanwhile is merged into it: now
    # B, which saw none of its failures, refuses too
    await until_open(replica_b, opened_during)
    with pytest.raises(CircuitOpenError):
        await replica_b.acquire(opened_during, policy)
    with pytest.raises(CircuitOpenError):
        await replica_a.acquire(opened_during, policy)
    if outage == "paused":
        with pytest.raises(CircuitOpenError):  # kept in Redis through the freeze
            await replica_a.acquire(open_in_redis, policy)
    # the process's own breakers start afresh for the next outage
    assert (await replica_a.fallback.status(opened_during)).state is CLOSED
    # and it is shared again
    shared = breaker_key()
    for _ in range(policy.failure_threshold):
        await replica_a.record(shared, policy, success=False)
    with pytest.raises(CircuitOpenError):
        await replica_b.acquire(shared, policy)


async def until_open(breakers: RedisCircuitBreakers, key: str) -> None:
    give_up = time.monotonic() + HANG_GUARD
    while True:
        if (await breakers.status(key)).state is OPEN:
            return
        assert time.monotonic() < give_up, f"{key} did not open"
        await asyncio.sleep(0.02)


async def outage_on(link: RedisLink) -> None:
    """Make ``link`` count Redis as down (Redis itself stays up, so its probe brings the
    link back after ``retry_seconds``)."""
    link.mark_down(ConnectionError("a test outage"))
    assert not link.up


async def test_an_outage_merges_only_breakers_opened_after_the_shared_state_moved(
    shared_links: list[RedisLink],
) -> None:
    """Per breaker, at recovery: opened here during the outage and closed in Redis ->
    open, from when it opened here; opened here but open in Redis since later -> Redis's
    stands; opened here, then half-opened here (a trial) -> not merged; only failures
    below the threshold here -> not merged."""
    link_a, link_b = shared_links
    link_a.retry_seconds = 0.1
    policy = CircuitBreakerPolicy(failure_threshold=2, recovery_timeout=600.0)
    clock = FakeClock()
    replica_a = RedisCircuitBreakers(link_a, InMemoryCircuitBreakers(clock))
    replica_b = RedisCircuitBreakers(link_b)
    closed_shared, opened_later, trial, below = (breaker_key() for _ in range(4))

    await outage_on(link_a)
    for key in (closed_shared, opened_later, trial):
        await fail(replica_a, key, policy.failure_threshold, policy)
    await fail(replica_a, below, policy.failure_threshold - 1, policy)
    clock.current += 60.0  # a minute later, still during the outage
    # meanwhile on B (Redis is fine there): opened_later opens, a minute after A's
    await fail(replica_b, opened_later, policy.failure_threshold, policy)
    shared_before = await replica_b.status(opened_later)
    # and A's trial breaker half-opens on A, its recovery timeout having passed
    clock.current += policy.recovery_timeout
    await replica_a.acquire(trial, policy)
    assert (await replica_a.fallback.status(trial)).state is HALF_OPEN

    await until(lambda: link_a.up, "the link's recovery")
    await until_open(replica_b, closed_shared)
    merged = await replica_b.status(closed_shared)
    # it opened a minute plus the recovery timeout ago, by the Redis clock
    age = time.time() - (merged.opened_at or 0.0)
    assert 60.0 + policy.recovery_timeout - 5 < age < 60.0 + policy.recovery_timeout + 5
    assert merged.failures == policy.failure_threshold
    assert await replica_b.status(opened_later) == shared_before
    assert (await replica_b.status(trial)).state is CLOSED
    assert (await replica_b.status(below)).state is CLOSED
    assert (await replica_b.status(below)).failures == 0
