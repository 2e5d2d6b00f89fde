"""Live event fan-out: the in-process bus, and the Redis one that spans replicas.

The durable event log is the source of truth; a bus only makes events arrive sooner.
Whatever a bus drops (a full queue, a Redis outage) a reader finds again in the log, so
every operation here is best-effort and none of them blocks a run.
"""

from __future__ import annotations

from typing import Protocol

from app.bus.local import LocalEventBus, Subscription
from app.bus.redis_bus import RedisEventBus
from app.bus.wakeups import NotificationHub, RedisWakeups
from app.engine import Event


class EventBus(Protocol):
    """What runs publish to and SSE streams subscribe to."""

    def publish(self, run_id: str, event: Event) -> None:
        """Deliver ``event`` to the run's subscribers; synchronous, never blocks."""
        ...

    async def open(self, run_id: str) -> Subscription:
        """A subscription to ``run_id``, returned once it is live (or at once when the
        bus cannot make it live: then only the log carries the stream)."""
        ...

    def subscriber_count(self) -> int:
        """Open subscriptions of this replica."""
        ...

    def claimed(self, run_id: str) -> None:
        """``run_id`` now executes on this replica: its events will come from
        :meth:`publish` here, so its subscribers need nothing from elsewhere."""
        ...

    def released(self, run_id: str) -> None:
        """``run_id`` stopped executing here (finished, taken over, given back at
        shutdown): unless it finished here, its next events may come from another
        replica."""
        ...

    async def start(self) -> None:
        """Start background work (connections, tasks)."""
        ...

    async def close(self) -> None:
        """Stop background work and release connections."""
        ...


__all__ = [
    "EventBus",
    "LocalEventBus",
    "NotificationHub",
    "RedisEventBus",
    "RedisWakeups",
    "Subscription",
]
