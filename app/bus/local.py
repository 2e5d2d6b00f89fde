"""The in-process live event bus: runs publish, SSE streams subscribe.

Every subscription has a bounded queue; a subscriber that falls behind is marked
``overflowed`` and loses live events (it reads them back from the durable log), so a
slow or vanished client never slows a run or grows memory without bound.

:class:`LocalEventBus` is the whole bus of a single replica, and the local fan-out inside
:class:`app.bus.redis_bus.RedisEventBus`, which learns through ``on_first`` and
``on_last`` when a run gains its first subscriber and loses its last one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.engine import Event


class Subscription:
    """One subscriber's view of one run's live events.

    ``overflowed`` is set when live events were lost (a full queue, or a Redis outage);
    the reader clears it after reading the durable log again.
    """

    def __init__(self, run_id: str, maxsize: int, on_close: Callable[[Subscription], None]) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.overflowed = False
        self.closed = False
        self._on_close = on_close

    def offer(self, event: Event) -> None:
        """Queue ``event`` without waiting; on a full queue drop it and flag the loss."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    async def get(self, timeout: float) -> Event | None:
        """The next live event, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def get_nowait(self) -> Event | None:
        """The next live event if one is queued, else None."""
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        """Stop receiving; idempotent."""
        if not self.closed:
            self.closed = True
            self._on_close(self)


class LocalEventBus:
    """Fan-out of events to the subscribers of their run, within one process."""

    def __init__(
        self,
        queue_size: int = 1000,
        *,
        on_first: Callable[[str], None] | None = None,
        on_last: Callable[[str], None] | None = None,
    ) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = {}
        self._on_first = on_first
        self._on_last = on_last

    def publish(self, run_id: str, event: Event) -> None:
        """Offer ``event`` to every subscriber of ``run_id``; never blocks."""
        for subscription in self._subscribers.get(run_id, ()):
            subscription.offer(event)

    def subscribe(self, run_id: str) -> Subscription:
        """A new subscription to ``run_id``, live at once."""
        subscription = Subscription(run_id, self.queue_size, self._unsubscribe)
        subscribers = self._subscribers.get(run_id)
        if subscribers is None:
            subscribers = self._subscribers[run_id] = set()
            if self._on_first is not None:
                self._on_first(run_id)
        subscribers.add(subscription)
        return subscription

    async def open(self, run_id: str) -> Subscription:
        """:meth:`subscribe` (in one process a subscription is live at once)."""
        return self.subscribe(run_id)

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.run_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[subscription.run_id]
            if self._on_last is not None:
                self._on_last(subscription.run_id)

    def has_subscribers(self, run_id: str) -> bool:
        return run_id in self._subscribers

    def run_ids(self) -> list[str]:
        """The runs that have at least one subscriber."""
        return list(self._subscribers)

    def mark_overflowed(self, run_id: str | None = None) -> None:
        """Flag the subscriptions of ``run_id`` (of every run by default) as having lost
        live events: their streams re-read the log."""
        if run_id is None:
            groups = list(self._subscribers.values())
        else:
            groups = [self._subscribers.get(run_id, set())]
        for subscribers in groups:
            for subscription in subscribers:
                subscription.overflowed = True

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def claimed(self, run_id: str) -> None:
        """In one process every run executes here: nothing to do."""

    def released(self, run_id: str) -> None:
        """In one process every run executes here: nothing to do."""

    async def start(self) -> None:
        """Nothing to start in one process."""

    async def close(self) -> None:
        """Nothing to release in one process: subscriptions close with their streams."""
