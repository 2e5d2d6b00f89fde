"""Circuit breakers: closed → open → half-open → closed, per breaker key.

A breaker opens after ``failure_threshold`` consecutive failures; while open, calls fail
fast with :class:`CircuitOpenError` naming when it will half-open; after
``recovery_timeout`` seconds it lets ``half_open_max_calls`` trial calls through: a
success closes it, a failure opens it again. Breakers live behind the
``CircuitBreakerStore`` port so that every run in a process (and, with a shared
implementation, every replica) sees the same state.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from app.engine.dsl import CircuitBreakerPolicy
from app.engine.errors import NodeError
from app.engine.ports import Clock, SystemClock


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(NodeError):
    """A call was refused because its circuit breaker is open."""

    kind = "circuit_open"

    def __init__(self, key: str, retry_at: float, now: float) -> None:
        self.key = key
        self.retry_at = retry_at
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(retry_at))
        super().__init__(
            f"circuit breaker {key!r} is open; it half-opens at {when} "
            f"(in {max(retry_at - now, 0.0):.1f}s)"
        )


@dataclass(slots=True)
class BreakerStatus:
    key: str
    state: BreakerState
    failures: int
    opened_at: float | None
    half_open_calls: int
    half_opened_at: float | None = None


class CircuitBreakerStore(Protocol):
    """Shared breaker state. ``acquire`` raises CircuitOpenError or admits the call;
    ``record`` reports the admitted call's outcome."""

    async def acquire(self, key: str, policy: CircuitBreakerPolicy) -> None: ...

    async def record(self, key: str, policy: CircuitBreakerPolicy, success: bool) -> None: ...

    async def status(self, key: str) -> BreakerStatus: ...


class InMemoryCircuitBreakers:
    """Breakers for one process, on the given clock."""

    #: breakers kept before the ones that say nothing (closed, no failures) are dropped
    MAX_KEYS = 10_000
    #: transitions kept, newest last
    MAX_TRANSITIONS = 1_000

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._breakers: dict[str, BreakerStatus] = {}
        #: (key, from_state, to_state) transitions, newest last (for metrics and tests)
        self.transitions: deque[tuple[str, BreakerState, BreakerState]] = deque(
            maxlen=self.MAX_TRANSITIONS
        )
        #: transitions ever made (``transitions`` keeps the last MAX_TRANSITIONS)
        self.transition_count = 0

    def _get(self, key: str) -> BreakerStatus:
        status = self._breakers.get(key)
        if status is None:
            if len(self._breakers) >= self.MAX_KEYS:
                # keys come from run input (an http node's target host): a closed breaker
                # with no failures is what a new one would be, so it need not be kept
                self._breakers = {
                    k: b
                    for k, b in self._breakers.items()
                    if b.state is not BreakerState.CLOSED or b.failures
                }
            status = self._breakers[key] = BreakerStatus(key, BreakerState.CLOSED, 0, None, 0)
        return status

    def _move(self, status: BreakerStatus, to: BreakerState) -> None:
        if status.state is not to:
            self.transitions.append((status.key, status.state, to))
            self.transition_count += 1
            status.state = to

    async def acquire(self, key: str, policy: CircuitBreakerPolicy) -> None:
        status = self._get(key)
        now = self.clock.now()
        if status.state is BreakerState.OPEN:
            assert status.opened_at is not None
            retry_at = status.opened_at + policy.recovery_timeout
            if now < retry_at:
                raise CircuitOpenError(key, retry_at, now)
            self._move(status, BreakerState.HALF_OPEN)
            status.half_open_calls = 0
            status.half_opened_at = now
        if status.state is BreakerState.HALF_OPEN:
            if status.half_open_calls >= policy.half_open_max_calls:
                assert status.half_opened_at is not None
                retry_at = status.half_opened_at + policy.recovery_timeout
                if now < retry_at:
                    raise CircuitOpenError(key, retry_at, now)
                # trial calls that never reported back (cancelled, lost) free their slots
                status.half_open_calls = 0
                status.half_opened_at = now
            status.half_open_calls += 1

    async def record(self, key: str, policy: CircuitBreakerPolicy, success: bool) -> None:
        status = self._get(key)
        if success:
            status.failures = 0
            if status.state is BreakerState.HALF_OPEN:
                self._move(status, BreakerState.CLOSED)
            return
        status.failures += 1
        if status.state is BreakerState.HALF_OPEN or status.failures >= policy.failure_threshold:
            self._move(status, BreakerState.OPEN)
            status.opened_at = self.clock.now()
            status.half_open_calls = 0

    async def status(self, key: str) -> BreakerStatus:
        return self._get(key)


_process_breakers: InMemoryCircuitBreakers | None = None


def process_breakers() -> InMemoryCircuitBreakers:
    """The process-wide breakers every executor uses unless given its own store."""
    global _process_breakers
    if _process_breakers is None:
        _process_breakers = InMemoryCircuitBreakers()
    return _process_breakers
