"""Circuit breakers for the service: shared by every replica in Redis, or per process
with metrics.

``RedisCircuitBreakers`` keeps each breaker in a Redis hash and moves it with Lua
scripts, so a transition is atomic across replicas (two replicas cannot both take the
last half-open slot) and reads the time from the Redis server (``TIME`` in the script),
so replicas with skewed clocks agree on when a breaker half-opens. The semantics are
exactly those of :class:`app.engine.breaker.InMemoryCircuitBreakers`.

While the link is down each replica falls back to its own in-process breakers. When
Redis answers again the shared state counts again, and the breakers that opened here
during the outage are merged into it: one still open here opens the shared one (unless
that opened, or half-opened, more recently), keeping the time it opened, so every replica
refuses the failing dependency again. Then the process's breakers start afresh for the
next outage. What else the process saw (failures below the threshold, trial calls) is
not merged.

``MeteredBreakers`` is the in-process store the service uses without Redis: the engine's
breakers, plus the same metrics. Both update ``BREAKER_STATE`` (1 for the breaker's
current state, 0 for the others) and ``BREAKER_TRANSITIONS``.

Errors tree::

    NodeError
    └── CircuitOpenError   (from app.engine.breaker: ``acquire`` on an open breaker)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from app.engine import (
    BreakerState,
    BreakerStatus,
    CircuitBreakerPolicy,
    CircuitOpenError,
    InMemoryCircuitBreakers,
)
from app.observability.metrics import BREAKER_LABELS, BREAKER_STATE, BREAKER_TRANSITIONS
from app.redis_link import RedisLink

__all__ = ["MeteredBreakers", "RedisCircuitBreakers"]

Transition = tuple[str, BreakerState, BreakerState]

#: how many transitions ``transitions`` keeps (newest last) in a long-lived process
TRANSITIONS_KEPT: Final = 1000

# Shared by both scripts: the hash's fields, the server's time, and numbers carried as
# strings (a Lua number returned to Redis is truncated to an integer).
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at',
                     'half_open_calls', 'half_opened_at')
local state = h[1] or 'closed'
local from = state
local failures = tonumber(h[2]) or 0
local opened_at = tonumber(h[3])
local calls = tonumber(h[4]) or 0
local half_opened_at = tonumber(h[5])
local function num(x) return string.format('%.6f', x) end
"""

# ARGV: recovery_timeout, half_open_max_calls.
# Returns {verdict, from, to, retry_at, now}; verdict is 'admitted' or 'refused'.
_ACQUIRE = (
    _PRELUDE
    + """
local recovery = tonumber(ARGV[1])
local max_calls = tonumber(ARGV[2])
if state == 'open' then
  local retry_at = opened_at + recovery
  if now < retry_at then
    return {'refused', from, state, num(retry_at), num(now)}
  end
  state = 'half_open'
  calls = 0
  half_opened_at = now
end
if state == 'half_open' then
  if calls >= max_calls then
    local retry_at = half_opened_at + recovery
    if now < retry_at then
      return {'refused', from, state, num(retry_at), num(now)}
    end
    -- trial calls that never reported back (cancelled, lost) free their slots
    calls = 0
    half_opened_at = now
  end
  calls = calls + 1
  redis.call('HSET', KEYS[1], 'state', state, 'half_open_calls', calls,
             'half_opened_at', num(half_opened_at))
end
return {'admitted', from, state, '', num(now)}
"""
)

# ARGV: failure_threshold, success (1 or 0). Returns {from, to}.
_RECORD = (
    _PRELUDE
    + """
local threshold = tonumber(ARGV[1])
if ARGV[2] == '1' then
  if state == 'half_open' then state = 'closed' end
  redis.call('HSET', KEYS[1], 'state', state, 'failures', 0)
  return {from, state}
end
failures = failures + 1
if state == 'half_open' or failures >= threshold then
  state = 'open'
  redis.call('HSET', KEYS[1], 'state', state, 'failures', failures,
             'opened_at', num(now), 'half_open_calls', 0)
else
  redis.call('HSET', KEYS[1], 'failures', failures)
end
return {from, state}
"""
)

# ARGV: age (seconds since the breaker opened on the replica), failures.
# Returns {from, to}. An open breaker from a replica's outage: it opens the shared one,
# unless that opened (or half-opened) after it.
_MERGE = (
    _PRELUDE
    + """
local opened = now - tonumber(ARGV[1])
if state == 'open' and opened_at and opened_at >= opened then return {from, state} end
if state == 'half_open' and half_opened_at and half_opened_at >= opened then
  return {from, state}
end
redis.call('HSET', KEYS[1], 'state', 'open', 'failures',
           math.max(failures, tonumber(ARGV[2])), 'opened_at', num(opened),
           'half_open_calls', 0)
return {from, 'open'}
"""
)

#: what ``link.call`` returns instead of an answer while Redis is unavailable
_UNAVAILABLE: Any = object()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: Any) -> float | None:
    return None if value is None or value == b"" else float(value)


class _BreakerMetrics:
    """Publishes what a replica sees of its breakers: transitions, and the current state
    of each (also the first time a breaker is seen, so dashboards show closed ones)."""

    def __init__(self) -> None:
        self.transitions: deque[Transition] = deque(maxlen=TRANSITIONS_KEPT)
        self._shown: dict[str, BreakerState] = {}

    def transition(self, key: str, from_state: BreakerState, to_state: BreakerState) -> None:
        self.transitions.append((key, from_state, to_state))
        BREAKER_TRANSITIONS.labels(
            BREAKER_LABELS.label(key), from_state.value, to_state.value
        ).inc()
        self.state(key, to_state)

    def state(self, key: str, state: BreakerState) -> None:
        label = BREAKER_LABELS.label(key)
        if label == key:  # remembered only for breakers with a label of their own
            if self._shown.get(key) is state:
                return
            self._shown[key] = state
        for candidate in BreakerState:
            BREAKER_STATE.labels(label, candidate.value).set(1 if candidate is state else 0)


class MeteredBreakers:
    """The engine's in-process breakers (``inner``) with the service's breaker metrics;
    the ``CircuitBreakerStore`` the service uses when Redis is not configured."""

    def __init__(self, inner: InMemoryCircuitBreakers | None = None) -> None:
        self.inner = inner if inner is not None else InMemoryCircuitBreakers()
        self._metrics = _BreakerMetrics()

    @property
    def transitions(self) -> deque[Transition]:
        return self._metrics.transitions

    async def acquire(self, key: str, policy: CircuitBreakerPolicy) -> None:
        await _observed(self.inner, self._metrics, key, self.inner.acquire(key, policy))

    async def record(self, key: str, policy: CircuitBreakerPolicy, success: bool) -> None:
        await _observed(self.inner, self._metrics, key, self.inner.record(key, policy, success))

    async def status(self, key: str) -> BreakerStatus:
        return await self.inner.status(key)


async def _observed(
    inner: InMemoryCircuitBreakers, metrics: _BreakerMetrics, key: str, call: Awaitable[None]
) -> None:
    """Await ``call`` on ``inner`` and publish the transitions it made (also when it
    raises CircuitOpenError). The in-process methods never yield to the event loop, so
    the transitions appended meanwhile are this call's."""
    seen = inner.transition_count
    try:
        await call
    finally:
        made = inner.transition_count - seen
        for key_, from_state, to_state in list(inner.transitions)[-made:] if made else ():
            metrics.transition(key_, from_state, to_state)
        metrics.state(key, (await inner.status(key)).state)


class RedisCircuitBreakers:
    """The ``CircuitBreakerStore`` port in Redis: one hash per breaker under
    ``link.key("breaker", key)``, shared by every replica; ``fallback`` (a fresh
    in-process store by default) serves while the link is down."""

    def __init__(self, link: RedisLink, fallback: InMemoryCircuitBreakers | None = None) -> None:
        self.link = link
        self.fallback = fallback if fallback is not None else InMemoryCircuitBreakers()
        self._metrics = _BreakerMetrics()
        # EVALSHA, loading the script again on NOSCRIPT (a restarted or flushed Redis)
        self._acquire = link.client.register_script(_ACQUIRE)
        self._record = link.client.register_script(_RECORD)
        self._merge = link.client.register_script(_MERGE)
        #: breakers the fallback served during the current outage
        self._offline: set[str] = set()
        link.on_recover.append(self.merge_outage)

    @property
    def transitions(self) -> deque[Transition]:
        """(key, from_state, to_state) transitions this replica made, newest last."""
        return self._metrics.transitions

    def redis_key(self, key: str) -> str:
        return self.link.key("breaker", key)

    async def acquire(self, key: str, policy: CircuitBreakerPolicy) -> None:
        args: list[str | int] = [repr(float(policy.recovery_timeout)), policy.half_open_max_calls]
        name = self.redis_key(key)
        reply = await self.link.call(
            lambda client: self._acquire(keys=[name], args=args, client=client), _UNAVAILABLE
        )
        if reply is _UNAVAILABLE:
            self._offline.add(key)
            await _observed(self.fallback, self._metrics, key, self.fallback.acquire(key, policy))
            return
        verdict, from_state, to_state, retry_at, now = reply
        self._moved(key, from_state, to_state)
        if _text(verdict) == "refused":
            raise CircuitOpenError(key, float(retry_at), float(now))

    async def record(self, key: str, policy: CircuitBreakerPolicy, success: bool) -> None:
        args = [policy.failure_threshold, 1 if success else 0]
        name = self.redis_key(key)
        reply = await self.link.call(
            lambda client: self._record(keys=[name], args=args, client=client), _UNAVAILABLE
        )
        if reply is _UNAVAILABLE:
            self._offline.add(key)
            call = self.fallback.record(key, policy, success)
            await _observed(self.fallback, self._metrics, key, call)
            return
        from_state, to_state = reply
        self._moved(key, from_state, to_state)

    async def status(self, key: str) -> BreakerStatus:
        fields = ("state", "failures", "opened_at", "half_open_calls", "half_opened_at")
        name = self.redis_key(key)
        reply = await self.link.call(lambda client: client.hmget(name, fields), _UNAVAILABLE)
        if reply is _UNAVAILABLE:
            return await self.fallback.status(key)
        state, failures, opened_at, calls, half_opened_at = reply
        return BreakerStatus(
            key,
            BreakerState(_text(state)) if state is not None else BreakerState.CLOSED,
            int(failures or 0),
            _number(opened_at),
            int(calls or 0),
            _number(half_opened_at),
        )

    async def merge_outage(self) -> None:
        """Carry the breakers that opened in this process while Redis was down into the
        shared state, then start the process's breakers afresh (the link's recovery
        callback; on a failure it stops, dropping the rest)."""
        offline, self._offline = self._offline, set()
        fallback = self.fallback
        self.fallback = InMemoryCircuitBreakers(fallback.clock)
        now = fallback.clock.now()
        for key in sorted(offline):
            status = await fallback.status(key)
            if status.state is not BreakerState.OPEN or status.opened_at is None:
                continue
            reply = await self.link.call(
                self._merge_call(key, max(0.0, now - status.opened_at), status.failures),
                _UNAVAILABLE,
            )
            if reply is _UNAVAILABLE:
                return  # down again: the rest is dropped, the shared state stays as it is
            from_state, to_state = reply
            self._moved(key, from_state, to_state)

    def _merge_call(self, key: str, age: float, failures: int) -> Callable[[Any], Awaitable[Any]]:
        keys = [self.redis_key(key)]
        args: list[str | int] = [repr(age), failures]
        return lambda client: self._merge(keys=keys, args=args, client=client)

    def _moved(self, key: str, from_value: Any, to_value: Any) -> None:
        from_state, to_state = BreakerState(_text(from_value)), BreakerState(_text(to_value))
        if from_state is not to_state:
            self._metrics.transition(key, from_state, to_state)
        else:
            # another replica may have moved it: show the state this replica now sees
            self._metrics.state(key, to_state)
