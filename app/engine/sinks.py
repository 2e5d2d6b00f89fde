"""The executor's own event sinks: a queue for ``stream``, the DEBUG log for
``verbose_logging`` and the event list a DEBUG-level execution trace is built from."""

from __future__ import annotations

import asyncio
import logging

from app.engine.events import Event

__all__ = ["LogSink", "QueueSink", "TraceSink"]

logger = logging.getLogger("flowcore.engine")


class QueueSink:
    """Puts every event on the queue ``WorkflowExecutor.stream`` reads."""

    def __init__(self, queue: asyncio.Queue[Event | None]) -> None:
        self.queue = queue

    def publish(self, event: Event) -> None:
        self.queue.put_nowait(event)


class LogSink:
    """``verbose_logging``: every event to the ``flowcore.engine`` logger at DEBUG."""

    def publish(self, event: Event) -> None:
        logger.debug(
            "run %s #%d %s %s %s",
            event.run_id,
            event.seq,
            event.type.value,
            event.node_id or "-",
            event.data,
        )


class TraceSink:
    """Keeps a run's events for a DEBUG-level execution trace."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)
