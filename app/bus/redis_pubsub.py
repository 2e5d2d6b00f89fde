"""The pub/sub connection of a replica's :class:`~app.bus.redis_bus.RedisEventBus`: ONE
connection per replica, a writer task that alone sends (SUBSCRIBE/UNSUBSCRIBE to match
the channels wanted, PING after silence) and a reader task that alone reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from redis.asyncio.client import PubSub

logger = logging.getLogger("flowcore.bus")


class PubSubSession:
    """One pub/sub connection with its reader and writer tasks.

    The writer alone sends (SUBSCRIBE/UNSUBSCRIBE to match ``wanted()``, and PING after
    ``health_seconds`` of silence); the reader alone reads. Replies are counted per
    channel, so a channel is *confirmed* only once every SUBSCRIBE/UNSUBSCRIBE sent for it
    has been answered and the last one was a SUBSCRIBE.
    """

    def __init__(
        self,
        pubsub: PubSub,
        *,
        wanted: Callable[[], set[str]],
        on_message: Callable[[str, bytes], None],
        on_failure: Callable[[PubSubSession, BaseException], None],
        timeout: float,
        health_seconds: float,
    ) -> None:
        self.pubsub = pubsub
        self.wanted = wanted
        self.on_message = on_message
        self.on_failure = on_failure
        self.timeout = timeout
        self.health_seconds = health_seconds
        self.sent: set[str] = set()  # SUBSCRIBEd (as far as we asked) on this connection
        self.confirmed: set[str] = set()  # ... and answered: messages flow
        self.replies_due: dict[str, int] = {}
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.dirty = asyncio.Event()
        self.heard = asyncio.Event()
        self.last_heard = asyncio.get_running_loop().time()
        self.stopped = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_loop(), name="flowcore-bus-reader"),
            loop.create_task(self._write_loop(), name="flowcore-bus-writer"),
        ]
        self.dirty.set()

    async def wait_live(self, channels: Iterable[str]) -> bool:
        """Wait (at most ``timeout``) until ``channels`` are confirmed; False if not."""
        pending = [self._waiter(c) for c in channels if c not in self.confirmed]
        if not pending or self.stopped:
            return not self.stopped
        self.dirty.set()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(asyncio.gather(*pending))
        except TimeoutError:
            return False
        return not self.stopped

    def _waiter(self, channel: str) -> asyncio.Future[None]:
        waiter = self.waiters.get(channel)
        if waiter is None:
            waiter = self.waiters[channel] = asyncio.get_running_loop().create_future()
        return waiter

    def release(self, channel: str) -> None:
        """Stop waiting for ``channel`` (it is no longer wanted)."""
        waiter = self.waiters.pop(channel, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stop(self) -> None:
        """Cancel the tasks and release every waiter (``aclose`` frees the connection)."""
        self.stopped = True
        for task in self._tasks:
            task.cancel()
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    async def aclose(self) -> None:
        self.stop()
        for task in self._tasks:
            await settle(task, self.timeout + self.health_seconds)
        await close_pubsub(self.pubsub, self.timeout)

    # ------------------------------------------------------------------- writer

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.stopped:
                idle = False
                try:
                    async with asyncio.timeout(self.health_seconds):
                        await self.dirty.wait()
                except TimeoutError:
                    idle = True
                if self.dirty.is_set():
                    self.dirty.clear()
                    await self._reconcile()
                elif idle and loop.time() - self.last_heard >= self.health_seconds:
                    await self._ping()
        except Exception as exc:
            self._failed(exc)

    async def _reconcile(self) -> None:
        wanted = self.wanted()
        subscribe = sorted(wanted - self.sent)
        unsubscribe = sorted(self.sent - wanted)
        # the bookkeeping comes first: the reader may see a reply before we resume
        async with asyncio.timeout(self.timeout):
            if subscribe:
                self.sent.update(subscribe)
                self._expect_replies(subscribe)
                await self.pubsub.subscribe(*subscribe)
            if unsubscribe:
                self.sent.difference_update(unsubscribe)
                self.confirmed.difference_update(unsubscribe)
                self._expect_replies(unsubscribe)
                await self.pubsub.unsubscribe(*unsubscribe)

    def _expect_replies(self, channels: list[str]) -> None:
        for channel in channels:
            self.replies_due[channel] = self.replies_due.get(channel, 0) + 1

    async def _ping(self) -> None:
        """A silent connection may be a hung server: PING, and expect an answer."""
        self.heard.clear()
        try:
            async with asyncio.timeout(self.timeout):
                await self.pubsub.ping()
                await self.heard.wait()
        except TimeoutError:
            raise TimeoutError("no answer to PING on the pub/sub connection") from None

    # ------------------------------------------------------------------- reader

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.stopped:
                message = await self.pubsub.get_message(timeout=self.health_seconds)
                if message is None:
                    continue
                self.last_heard = loop.time()
                self.heard.set()
                kind = message["type"]
                if kind == "message":
                    self.on_message(as_text(message["channel"]), message["data"])
                elif kind in ("subscribe", "unsubscribe"):
                    self._replied(as_text(message["channel"]))
        except Exception as exc:
            self._failed(exc)

    def _replied(self, channel: str) -> None:
        due = self.replies_due.get(channel, 0) - 1
        if due > 0:
            self.replies_due[channel] = due
            return
        self.replies_due.pop(channel, None)
        if channel in self.sent:
            self.confirmed.add(channel)
            waiter = self.waiters.pop(channel, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _failed(self, exc: BaseException) -> None:
        if not self.stopped:
            self.on_failure(self, exc)


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def settle(task: asyncio.Task[None], grace: float) -> None:
    """Wait (at most ``grace`` seconds) for a task told to stop. Our loops also check a
    flag: on Python 3.11 a cancellation can be lost inside ``asyncio.wait_for``, which
    redis-py uses for every send."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        async with asyncio.timeout(grace):
            await task


async def close_pubsub(pubsub: PubSub, timeout: float) -> None:
    """Disconnect and give the connection back to the pool; never raises or hangs."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
