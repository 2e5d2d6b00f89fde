"""The replica's one link to Redis: a redis-py asyncio pool of ``redis_pool_size``
connections, a short timeout on every call, and a health state.

Redis is an accelerator here, never the source of truth: every caller gives a fallback.
When a call fails or takes longer than ``timeout`` seconds the link is marked *down*:
from then on calls return their fallback at once (no run waits on a dead or hanging
Redis) while a probe pings every ``retry_seconds``; the first answer marks the link *up*
again and runs the ``on_recover`` callbacks (the event bus re-subscribes its channels).

Errors tree::

    (none raised) — ``call`` returns its ``default`` on RedisError, OSError or timeout
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.observability import metrics

logger = logging.getLogger("flowcore.redis")

T = TypeVar("T")

#: what a failed call can raise; anything else is a bug and propagates
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class RedisLink:
    """A pooled Redis client with short timeouts, a down/up state and a recovery probe."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 50,
        timeout: float = 0.5,
        retry_seconds: float = 1.0,
        prefix: str = "flowcore",
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        #: every key and channel starts with this (several deployments on one Redis)
        self.prefix = prefix
        self.pool = BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=timeout,  # waiting for a free connection counts as a slow call
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
        )
        self.client: Redis = Redis(connection_pool=self.pool)
        self.up = True
        self.last_error: str | None = None
        self.down_since: float | None = None
        self.failures = 0  # calls that failed or timed out, ever
        self.on_recover: list[Callable[[], Awaitable[None]]] = []
        self.on_state_change: list[Callable[[bool], None]] = []
        #: consecutive timed-out calls that mark the link down (a refused connection or
        #: a dropped one marks it down at once)
        self.timeouts_to_down = 2
        self._timeouts = 0
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ----------------------------------------------------------------- calls

    async def call(self, fn: Callable[[Redis], Awaitable[T]], default: T) -> T:
        """``await fn(client)`` within ``timeout``; ``default`` when the link is down or
        the call fails (the link is then marked down)."""
        if not self.up:
            return default
        try:
            async with asyncio.timeout(self.timeout):
                result = await fn(self.client)
        except ResponseError:
            # Redis answered, with an error (a script or command bug): not an outage
            logger.exception("a redis command failed")
            return default
        except (TimeoutError, RedisTimeoutError) as exc:
            # one late answer may be this replica's own loop lagging under load; a Redis
            # that hangs times out every call, so it is down after a few in a row
            self._timeouts += 1
            if self._timeouts >= self.timeouts_to_down:
                self.mark_down(exc)
            else:
                self.failures += 1
                metrics.REDIS_FAILURES.inc()
            return default
        except REDIS_FAILURES as exc:
            self.mark_down(exc)
            return default
        self._timeouts = 0
        return result

    def mark_down(self, exc: BaseException) -> None:
        """Record a failure; the first one of an outage starts the recovery probe."""
        self.failures += 1
        metrics.REDIS_FAILURES.inc()
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self.up or self._closed:
            return
        self.up = False
        self.down_since = time.time()
        logger.warning("redis is unavailable (%s); falling back to in-process", self.last_error)
        metrics.REDIS_UP.set(0)
        for callback in self.on_state_change:
            callback(False)
        with contextlib.suppress(RuntimeError):  # no running loop: the next call probes
            self._probe = asyncio.get_running_loop().create_task(
                self._recover(), name="flowcore-redis-probe"
            )

    async def _recover(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.retry_seconds)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except REDIS_FAILURES as exc:
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            except asyncio.CancelledError:
                raise
            # idle connections from before the outage may be dead (a restarted Redis):
            # drop them now rather than fail the first calls and go down again
            with contextlib.suppress(*REDIS_FAILURES):
                await self.pool.disconnect(inuse_connections=False)
            self.up = True
            self._timeouts = 0
            self.down_since = None
            logger.warning("redis is back")
            metrics.REDIS_UP.set(1)
            for state_callback in self.on_state_change:
                state_callback(True)
            for callback in list(self.on_recover):
                try:
                    await callback()
                except Exception:
                    logger.exception("a redis recovery callback failed")
            return

    # --------------------------------------------------------------- lifecycle

    async def ping(self) -> float | None:
        """Round-trip seconds, or None when Redis does not answer within the timeout."""
        started = time.perf_counter()
        answered = await self.call(lambda client: client.ping(), None)
        return None if answered is None else time.perf_counter() - started

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` reports."""
        if self.up:
            return {"state": "up"}
        return {
            "state": "down",
            "since": self.down_since,
            "error": self.last_error,
            "fallback": "in-process cache and breakers; SSE reads the database log",
        }

    def connections_in_use(self) -> int:
        return len(getattr(self.pool, "_in_use_connections", ()))

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        with contextlib.suppress(*REDIS_FAILURES):
            await self.client.aclose()
        with contextlib.suppress(*REDIS_FAILURES):
            await self.pool.disconnect()
