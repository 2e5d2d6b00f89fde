"""The in-process live event bus: runs publish, SSE streams subscribe.

Every subscription has a bounded queue; a subscriber that falls behind is marked
``overflowed`` and loses live events (it reads them back from the durable log), so a
slow or vanished client never slows a run or grows memory without bound.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from app.engine import Event


class Subscription:
    """One subscriber's view of one run's live events."""

    def __init__(self, bus: LocalEventBus, run_id: str, maxsize: int) -> None:
        self.bus = bus
        self.run_id = run_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, event: Event) -> None:
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

    def close(self) -> None:
        self.bus._unsubscribe(self)


class LocalEventBus:
    """Fan-out of events to the subscribers of their run, within one process."""

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)

    def publish(self, run_id: str, event: Event) -> None:
        for subscription in self._subscribers.get(run_id, ()):
            subscription.offer(event)

    def subscribe(self, run_id: str) -> Subscription:
        subscription = Subscription(self, run_id, self.queue_size)
        self._subscribers[run_id].add(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.run_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.run_id]

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
