"""The executor's own event sinks: a queue for ``stream``, the DEBUG log for
``verbose_logging`` and the event list a DEBUG-level execution trace is built from."""

from __future__ import annotations

import asyncio
import logging

from app.engine.events import Event
from app.engine.secrets import SecretResolver

__all__ = ["LogSink", "QueueSink", "TraceSink"]

logger = logging.getLogger("flowcore.engine")


class QueueSink:
    """Puts every event on the queue ``WorkflowExecutor.stream`` reads."""

    def __init__(self, queue: asyncio.Queue[Event | None]) -> None:
        self.queue = queue

    def publish(self, event: Event) -> None:
        self.queue.put_nowait(event)


class LogSink:
    """``verbose_logging``: every event to the ``flowcore.engine`` logger at DEBUG, with
    the secrets the run resolved masked."""

    def __init__(self, secrets: SecretResolver | None = None) -> None:
        self.secrets = secrets

    def publish(self, event: Event) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return
        data = event.data if self.secrets is None else self.secrets.mask(event.data)
        logger.debug(
            "run %s #%d %s %s %s",
            event.run_id,
            event.seq,
            event.type.value,
            event.node_id or "-",
            data,
        )


class TraceSink:
    """Keeps a run's events for a DEBUG-level execution trace (the secrets the run
    resolved masked: a trace may be written to a file)."""

    def __init__(self, secrets: SecretResolver | None = None) -> None:
        self.events: list[Event] = []
        self.secrets = secrets

    def publish(self, event: Event) -> None:
        if self.secrets is not None and event.data:
            masked = self.secrets.mask(event.data)
            if masked is not event.data:
                event = Event(
                    event.seq, event.type, event.run_id, event.node_id, masked, event.timestamp
                )
        self.events.append(event)
