"""``RedisEventBus``: live events across replicas over Redis pub/sub.

A run's events are published on the replica that executes it. Subscribers on that
replica get them at once from the in-process fan-out; every event is also queued in a
bounded *outbox* that a background task sends to the channel ``<prefix>:events:<run>``,
pipelining whatever accumulated while the previous batch was in flight (one round trip
per batch). Messages are ``<origin replica id>\\n<json>``, so a replica skips its own.

Each replica holds ONE pub/sub connection (a :class:`PubSubSession`): it SUBSCRIBEs a
run's channel when the run gets its first local subscriber and UNSUBSCRIBEs when the
last one leaves; a reader task turns messages into :class:`Event` objects for the local
subscriptions. Other channels (the wake-ups of :mod:`app.bus.wakeups`) share it.

A run that executes on this replica (between the dispatcher's :meth:`claimed` and
:meth:`released`) needs no channel: its subscribers here get everything from
:meth:`publish`, so its channel is not SUBSCRIBEd (or is UNSUBSCRIBEd once it is claimed
here) and its messages do not come back to us. A run that finished here keeps it so
until its last subscriber leaves; a run released unfinished (taken over elsewhere, given
back at shutdown) gets its channel again, and its streams re-read the log for whatever
another replica published before the SUBSCRIBE took effect.

Redis is an accelerator, never the source of truth. Nothing here blocks a run: a full
outbox or a link that is down drops remote delivery (readers on other replicas poll the
durable log). Every Redis await is bounded by ``link.timeout``; a hung server is caught
by a PING on the pub/sub connection after ``health_seconds`` of silence. On a failure
the session is dropped and the link marked down; when the link recovers a new session
re-subscribes every channel in use and flags every subscription ``overflowed`` so that
its stream re-reads the log for what it missed.

Errors tree::

    (none raised) — Redis failures mark the link down; delivery degrades to local only
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from app.bus.local import LocalEventBus, Subscription
from app.bus.redis_pubsub import PubSubSession, close_pubsub, settle
from app.engine import TERMINAL_EVENTS, Event, EventType
from app.observability import metrics
from app.redis_link import REDIS_FAILURES, RedisLink

logger = logging.getLogger("flowcore.bus")

#: called with the body of a message another replica sent on a listened channel
ChannelHandler = Callable[[str], None]


def encode_event(event: Event) -> str:
    """The wire form of an event (``Event.to_dict`` as compact JSON)."""
    return json.dumps(event.to_dict(), separators=(",", ":"), default=str)


def encode_events(events: list[Event]) -> str:
    """Several events of one run as one message: a JSON array of their wire forms."""
    return json.dumps([e.to_dict() for e in events], separators=(",", ":"), default=str)


def decode_events(body: bytes | str) -> list[Event]:
    """The events of a message from :func:`encode_event` or :func:`encode_events`;
    raises ValueError, KeyError or TypeError."""
    wire: Any = json.loads(body)
    if isinstance(wire, list):
        return [_event(item) for item in wire]
    return [_event(wire)]


def decode_event(body: bytes | str) -> Event:
    """The inverse of :func:`encode_event`; raises ValueError, KeyError or TypeError."""
    return _event(json.loads(body))


def _event(wire: dict[str, Any]) -> Event:
    return Event(
        seq=int(wire["seq"]),
        type=EventType(wire["type"]),
        run_id=str(wire["run_id"]),
        node_id=wire.get("node_id"),
        data=wire.get("data") or {},
        timestamp=float(wire["timestamp"]),
    )


class RedisEventBus:
    """The event bus of a replica among several: local fan-out plus Redis pub/sub.

    ``queue_size`` bounds each subscription, ``outbox_size`` the messages waiting to be
    sent to Redis, ``batch_size`` one pipelined round trip; ``health_seconds`` of silence
    on the pub/sub connection trigger a PING.
    """

    def __init__(
        self,
        link: RedisLink,
        replica_id: str,
        queue_size: int = 1000,
        *,
        outbox_size: int = 10_000,
        batch_size: int = 500,
        health_seconds: float = 1.0,
    ) -> None:
        if "\n" in replica_id:
            raise ValueError("a replica id cannot contain a newline")
        self.link = link
        self.replica_id = replica_id
        self.outbox_size = outbox_size
        self.batch_size = batch_size
        self.health_seconds = health_seconds
        #: messages that did not reach Redis (outbox full, link down, failed batch)
        self.dropped = 0
        self._local = LocalEventBus(queue_size, on_first=self._changed, on_last=self._emptied)
        #: runs executing here -> whether this replica published their terminal event
        self._here: dict[str, bool] = {}
        #: runs that finished here and still have subscribers here
        self._ending: set[str] = set()
        self._origin = replica_id.encode() + b"\n"
        self._events_prefix = link.key("events", "")
        self._handlers: dict[str, ChannelHandler] = {}
        self._outbox: deque[tuple[str, Event | str]] = deque()
        self._outbox_ready = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._session: PubSubSession | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._running = False

    # ---------------------------------------------------------------- EventBus

    def _drop(self, count: int) -> None:
        """Messages that will not reach other replicas (their clients read the log)."""
        self.dropped += count
        metrics.RELAY_DROPPED.inc(count)

    def publish(self, run_id: str, event: Event) -> None:
        """Deliver to local subscribers now and queue for the other replicas."""
        self._local.publish(run_id, event)
        if event.type in TERMINAL_EVENTS and run_id in self._here:
            self._here[run_id] = True
        self.send(self._events_prefix + run_id, event)

    async def open(self, run_id: str) -> Subscription:
        """A subscription to ``run_id``, returned once its channel is SUBSCRIBEd (at
        once when the run executes here, or when the link is down: the stream then
        relies on the log)."""
        subscription = self._local.subscribe(run_id)
        if self._is_here(run_id):
            return subscription
        try:
            await self._await_live([self._events_prefix + run_id])
        except BaseException:
            subscription.close()
            raise
        return subscription

    def claimed(self, run_id: str) -> None:
        """``run_id`` executes here from now on: its channel is not needed."""
        self._here[run_id] = False
        self._ending.discard(run_id)
        if self._local.has_subscribers(run_id):
            session = self._session
            if session is not None:
                session.release(self._events_prefix + run_id)
            self._changed(run_id)

    def released(self, run_id: str) -> None:
        """``run_id`` no longer executes here. Finished: its subscribers here already have
        every event. Otherwise they need its channel again, and the log for whatever was
        published elsewhere before the channel is live."""
        finished = self._here.pop(run_id, None)
        if not self._local.has_subscribers(run_id):
            return
        if finished:
            self._ending.add(run_id)
            return
        self._local.mark_overflowed(run_id)
        self._changed(run_id)

    def _is_here(self, run_id: str) -> bool:
        return run_id in self._here or run_id in self._ending

    def _emptied(self, run_id: str) -> None:
        self._ending.discard(run_id)
        self._changed(run_id)

    def subscriber_count(self) -> int:
        return self._local.subscriber_count()

    async def start(self) -> None:
        """Start the publisher and, when Redis answers, the pub/sub session."""
        if self._running:
            return
        self._running = True
        self.link.on_recover.append(self._recovered)
        self.link.on_state_change.append(self._state_changed)
        self._publisher = asyncio.get_running_loop().create_task(
            self._publish_loop(), name="flowcore-bus-publisher"
        )
        await self._open_session()

    async def close(self) -> None:
        """Send what the outbox holds (within the timeout), then stop and disconnect."""
        if not self._running:
            return
        self._running = False
        with contextlib.suppress(ValueError):
            self.link.on_recover.remove(self._recovered)
        with contextlib.suppress(ValueError):
            self.link.on_state_change.remove(self._state_changed)
        if self._publisher is not None:
            # it sends what the outbox holds and returns; past the grace, whatever is
            # left is dropped
            self._outbox_ready.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(max(1.0, 4 * self.link.timeout)):
                    await asyncio.shield(self._publisher)
            await settle(self._publisher, self.link.timeout)
            self._publisher = None
        self._drop(len(self._outbox))
        self._outbox.clear()
        session, self._session = self._session, None
        if session is not None:
            await session.aclose()
        for task in list(self._closing):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------- channels (wake-ups)

    def send(self, channel: str, message: Event | str) -> None:
        """Queue ``message`` for ``channel`` without waiting; dropped when the outbox is
        full or the link is down."""
        if not self._running or not self.link.up or len(self._outbox) >= self.outbox_size:
            self._drop(1)
            return
        self._outbox.append((channel, message))
        self._outbox_ready.set()

    async def listen(self, channel: str, handler: ChannelHandler) -> None:
        """Call ``handler(body)`` for every message other replicas send on ``channel``;
        returns once the channel is SUBSCRIBEd (at once when the link is down)."""
        self._handlers[channel] = handler
        await self._await_live([channel])

    def unlisten(self, channel: str) -> None:
        self._handlers.pop(channel, None)
        self._changed(channel)

    def live_channels(self) -> set[str]:
        """The channels whose messages reach this replica right now."""
        session = self._session
        return set(session.confirmed) if session is not None else set()

    # ------------------------------------------------------------------- outbox

    async def _publish_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                try:
                    await self._send_batch()
                except Exception:  # a bug must not stop every later message
                    logger.exception("publishing to redis failed")
            if not self._running:
                return  # closing, and the outbox is empty

    async def _send_batch(self) -> None:
        count = min(len(self._outbox), self.batch_size)
        batch = [self._outbox.popleft() for _ in range(count)]
        if not self.link.up:
            self._drop(count)
            return
        pipe = self.link.client.pipeline(transaction=False)
        # a run's events that are waiting together (a commit's worth, usually) go as ONE
        # message, a JSON array: one PUBLISH, one echo and one decode instead of N
        grouped: dict[str, list[Event]] = {}
        for channel, message in batch:
            if isinstance(message, str):
                pipe.publish(channel, self._origin + message.encode())
            else:
                grouped.setdefault(channel, []).append(message)
        for channel, events in grouped.items():
            body = encode_event(events[0]) if len(events) == 1 else encode_events(events)
            pipe.publish(channel, self._origin + body.encode())
        answered = await self.link.call(lambda _client: pipe.execute(), None)
        if answered is None:
            self._drop(count)

    # ------------------------------------------------------------------ session

    def _wanted(self) -> set[str]:
        channels = {
            self._events_prefix + run_id
            for run_id in self._local.run_ids()
            if not self._is_here(run_id)
        }
        channels.update(self._handlers)
        return channels

    def _changed(self, _name: str) -> None:
        if self._session is not None:
            self._session.dirty.set()

    async def _await_live(self, channels: list[str]) -> None:
        session = self._session
        if session is None or not self.link.up:
            return
        if not await session.wait_live(channels) and session is self._session:
            # not proof of an outage: an overloaded replica's own event loop can be late
            # (the session's PING catches a Redis that really hangs); meanwhile the stream
            # reads the log, as when Redis is down
            logger.info("no answer to SUBSCRIBE within %.2fs", self.link.timeout)

    async def _open_session(self) -> PubSubSession | None:
        if not self._running or not self.link.up or self._session is not None:
            return self._session
        pubsub = self.link.client.pubsub()
        try:
            async with asyncio.timeout(self.link.timeout):
                await pubsub.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
        except REDIS_FAILURES as exc:
            await close_pubsub(pubsub, self.link.timeout)
            self.link.mark_down(exc)
            return None
        session = PubSubSession(
            pubsub,
            wanted=self._wanted,
            on_message=self._on_message,
            on_failure=self._failed,
            timeout=self.link.timeout,
            health_seconds=self.health_seconds,
        )
        self._session = session
        session.start()
        return session

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        session.stop()
        task = asyncio.get_running_loop().create_task(
            session.aclose(), name="flowcore-bus-disconnect"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _failed(self, session: PubSubSession, exc: BaseException) -> None:
        if session is not self._session:
            return
        logger.warning("redis pub/sub failed (%s: %s)", type(exc).__name__, exc)
        self._drop_session()
        self.link.mark_down(exc)

    def _state_changed(self, up: bool) -> None:
        if not up:  # whatever failed, the pub/sub connection is suspect: start afresh
            self._drop_session()

    async def _recovered(self) -> None:
        session = await self._open_session()
        if session is None:
            return
        if not await session.wait_live(self._wanted()) and session is self._session:
            self._failed(session, TimeoutError("no answer to SUBSCRIBE after recovery"))
        # events sent while the link was down never arrive: streams re-read the log
        self._local.mark_overflowed()

    def _on_message(self, channel: str, data: bytes) -> None:
        if data.startswith(self._origin):
            return  # our own: local subscribers had it straight from publish()
        _origin, newline, body = data.partition(b"\n")
        if not newline:
            return
        handler = self._handlers.get(channel)
        try:
            if handler is not None:
                handler(body.decode())
            elif channel.startswith(self._events_prefix):
                run_id = channel[len(self._events_prefix) :]
                if self._local.has_subscribers(run_id):
                    for event in decode_events(body):
                        self._local.publish(run_id, event)
        except Exception:
            logger.exception("a message on %s could not be delivered", channel)
