"""``RedisWakeups``: dispatcher wake-ups across replicas over Redis, the alternative to
Postgres ``LISTEN/NOTIFY`` (and the only one with SQLite or a pooler that drops it).

After a commit the store hands payloads such as ``run:<id>``, ``ctl:<id>`` or
``done:<id>`` to its ``broadcasters``; this one queues them for the channel
``<prefix>:wake`` on the bus's outbox (never waiting), and hands what other replicas
send there to ``store.dispatch_notification``. It shares the bus's one pub/sub
connection. A lost wake-up costs at most one dispatcher poll interval; a duplicate costs
nothing (a wake-up sets an ``asyncio.Event``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from app.bus.redis_bus import RedisEventBus


class NotificationHub(Protocol):
    """The part of the store that notifications go through (``Store`` is one)."""

    #: called with every payload this process commits
    broadcasters: list[Callable[[str], None]]

    def dispatch_notification(self, payload: str) -> None:
        """Hand a payload from elsewhere to this process's listeners."""
        ...


class RedisWakeups:
    """Carries one replica's store notifications to the others, and theirs to it."""

    def __init__(self, bus: RedisEventBus, store: NotificationHub) -> None:
        self.bus = bus
        self.store = store
        self.channel = bus.link.key("wake")

    async def start(self) -> None:
        """Broadcast this store's payloads; returns once the channel is subscribed (at
        once when Redis is down). Call after ``bus.start()``."""
        self.store.broadcasters.append(self._broadcast)
        await self.bus.listen(self.channel, self.store.dispatch_notification)

    async def close(self) -> None:
        """Stop both directions; call before ``bus.close()``."""
        with contextlib.suppress(ValueError):
            self.store.broadcasters.remove(self._broadcast)
        self.bus.unlisten(self.channel)

    def _broadcast(self, payload: str) -> None:
        self.bus.send(self.channel, payload)
