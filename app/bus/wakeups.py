"""``RedisWakeups``: dispatcher wake-ups across replicas over Redis, the alternative to
Postgres ``LISTEN/NOTIFY`` (and the only one with SQLite or a pooler that drops it).

After a commit the store's notifier hands the wire text of each notification (see
``app.store.notifications``) to its relays; this one queues it for the channel
``<prefix>:wake`` on the bus's outbox (never waiting), and delivers what other replicas
send there to the notifier. It shares the bus's one pub/sub
connection. A lost wake-up costs at most one dispatcher poll interval; a duplicate costs
nothing (a wake-up sets an ``asyncio.Event``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.bus.redis_bus import RedisEventBus


class NotificationHub(Protocol):
    """Where notifications go through in a process (the store's ``Notifier``)."""

    def add_relay(self, relay: Callable[[str], None]) -> None:
        """``relay`` gets the wire text of every notification this process commits."""
        ...

    def remove_relay(self, relay: Callable[[str], None]) -> None: ...

    def deliver(self, text: str) -> None:
        """Hand a notification from elsewhere to this process's listeners."""
        ...


class RedisWakeups:
    """Carries one replica's store notifications to the others, and theirs to it."""

    def __init__(self, bus: RedisEventBus, notifier: NotificationHub) -> None:
        self.bus = bus
        self.notifier = notifier
        self.channel = bus.link.key("wake")

    async def start(self) -> None:
        """Relay this process's notifications; returns once the channel is subscribed
        (at once when Redis is down). Call after ``bus.start()``."""
        self.notifier.add_relay(self._broadcast)
        await self.bus.listen(self.channel, self.notifier.deliver)

    async def close(self) -> None:
        """Stop both directions; call before ``bus.close()``."""
        self.notifier.remove_relay(self._broadcast)
        self.bus.unlisten(self.channel)

    def _broadcast(self, payload: str) -> None:
        self.bus.send(self.channel, payload)
