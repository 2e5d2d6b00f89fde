"""The ports the engine needs from the outside world, as Protocols, with the
in-process implementations the engine ships. Other layers (store, cache, bus) provide
durable or shared implementations of the same Protocols."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from app.engine.dsl import WorkflowDefinition
from app.engine.errors import WorkflowNotFoundError
from app.engine.events import Event, EventSink

__all__ = [
    "Clock",
    "Event",
    "EventSink",
    "InMemoryWorkflowRepository",
    "ListEventSink",
    "SystemClock",
    "WorkflowResolver",
]


class Clock(Protocol):
    """Time as the engine sees it (a fake clock in tests of timing logic)."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock ``now`` (epoch seconds) and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class WorkflowResolver(Protocol):
    """Finds workflow definitions by id and version (for ``subworkflow`` nodes)."""

    async def get_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> WorkflowDefinition: ...


class InMemoryWorkflowRepository:
    """Workflow versions in a dict: ``add`` assigns version n+1 for an existing id."""

    def __init__(self) -> None:
        self._versions: dict[str, list[WorkflowDefinition]] = {}

    def add(self, definition: WorkflowDefinition) -> WorkflowDefinition:
        versions = self._versions.setdefault(definition.id, [])
        stored = definition.model_copy(update={"version": len(versions) + 1})
        versions.append(stored)
        return stored

    async def get_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> WorkflowDefinition:
        versions = self._versions.get(workflow_id)
        if not versions:
            raise WorkflowNotFoundError(f"no workflow {workflow_id!r}")
        if version is None:
            return versions[-1]
        if not 1 <= version <= len(versions):
            raise WorkflowNotFoundError(f"workflow {workflow_id!r} has no version {version}")
        return versions[version - 1]


class ListEventSink:
    """Collects events in a list (handy in tests and scripts)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)
