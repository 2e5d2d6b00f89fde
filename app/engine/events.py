"""Typed run events. Every event carries its run's sequence number (1, 2, 3, ...).

Events are slotted dataclasses rather than pydantic models: a run emits several per
node, and the hot path must stay cheap. ``to_dict()`` is the wire form.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class EventType(StrEnum):
    RUN_STARTED = "run.started"
    RUN_WAITING = "run.waiting"
    RUN_RESUMED = "run.resumed"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    NODE_STARTED = "node.started"
    NODE_COMPLETED = "node.completed"
    NODE_FAILED = "node.failed"
    NODE_SKIPPED = "node.skipped"
    NODE_RETRY = "node.retry"
    NODE_TOKEN = "node.token"
    NODE_CUSTOM = "node.custom"


TERMINAL_EVENTS = frozenset(
    {EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_CANCELLED}
)


@dataclass(slots=True, frozen=True)
class Event:
    """One thing that happened in a run."""

    seq: int
    type: EventType
    run_id: str
    node_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type.value,
            "run_id": self.run_id,
            "node_id": self.node_id,
            "timestamp": self.timestamp,
            "data": self.data,
        }


class EventSink(Protocol):
    """Where a run's events go (a stream, a durable log, a bus). Called in order."""

    def publish(self, event: Event) -> None: ...
