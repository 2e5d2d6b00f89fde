"""The execution trace of a run: its duration and each node's timing, attempts and
cache hits, built from the run's node records when the run ends (so tracing costs
nothing per node while the run executes)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.result import RunResult

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


@dataclass(slots=True)
class NodeTiming:
    """One node in the trace. Times are milliseconds; ``start_ms`` is from the run start."""

    node_id: str
    type: str
    status: str
    duration_ms: float | None
    start_ms: float | None
    attempts: int
    cache_hit: bool = False
    error: str | None = None
    fallback_from: str | None = None


@dataclass(slots=True)
class ExecutionTrace:
    """``duration`` is the run's wall time in milliseconds."""

    run_id: str
    workflow_id: str
    status: str
    duration: float
    level: str = "INFO"
    node_timings: dict[str, NodeTiming] = field(default_factory=dict)
    #: the run's events (only at trace_level DEBUG), kept as Event objects and turned
    #: into dicts only when read, so tracing at DEBUG costs little while the run executes
    raw_events: list[Any] = field(default_factory=list, repr=False)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event.to_dict() for event in self.raw_events]

    @property
    def attempts(self) -> int:
        return sum(t.attempts for t in self.node_timings.values())

    @property
    def cache_hits(self) -> int:
        return sum(1 for t in self.node_timings.values() if t.cache_hit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "status": self.status,
            "duration": self.duration,
            "level": self.level,
            "attempts": self.attempts,
            "cache_hits": self.cache_hits,
            "node_timings": {k: asdict(v) for k, v in self.node_timings.items()},
            "events": self.events,
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")


def build_trace(
    result: RunResult, level: str = "INFO", events: list[Any] | None = None
) -> ExecutionTrace:
    """The trace of a finished run. Below INFO (DEBUG) it carries the events too; at
    WARNING and above, only nodes that did not succeed."""
    threshold = _LEVELS.get(level, 20)
    timings: dict[str, NodeTiming] = {}
    for node_id, record in result.node_results.items():
        if threshold >= 30 and record.status.value in ("succeeded", "skipped", "pending"):
            continue
        timings[node_id] = NodeTiming(
            node_id=node_id,
            type=record.type,
            status=record.status.value,
            duration_ms=record.duration_ms,
            start_ms=(record.started_at - result.started_at) * 1000.0
            if record.started_at is not None
            else None,
            attempts=record.attempts,
            cache_hit=bool(record.metadata and record.metadata.get("cache_hit")),
            error=record.error,
            fallback_from=record.fallback_from,
        )
    return ExecutionTrace(
        run_id=result.run_id,
        workflow_id=result.workflow_id,
        status=result.status.value,
        duration=result.duration_ms,
        level=level,
        node_timings=timings,
        raw_events=list(events or []) if threshold <= 10 else [],
    )
