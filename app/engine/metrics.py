"""``MetricsCollector``: counts and latency percentiles across runs, in-process.

Fed once per finished run from its node records (no per-node work while a run
executes). ``get_statistics()`` returns plain numbers, times in milliseconds.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.result import RunResult

#: latency samples kept per node type for percentiles (a sliding window)
WINDOW = 2048


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = q * (len(sorted_values) - 1)
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(slots=True)
class _TypeStats:
    count: int = 0
    errors: int = 0
    retries: int = 0
    cache_hits: int = 0
    total_ms: float = 0.0
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))


class MetricsCollector:
    """Collects workflow and node statistics; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total_workflows = 0
        self.workflows_by_status: Counter[str] = Counter()
        self.workflow_ms_total = 0.0
        self._types: dict[str, _TypeStats] = {}

    def record_run(self, result: RunResult) -> None:
        with self._lock:
            self.total_workflows += 1
            self.workflows_by_status[result.status.value] += 1
            self.workflow_ms_total += result.duration_ms
            for record in result.node_results.values():
                if record.attempts == 0 and not (
                    record.metadata and record.metadata.get("cache_hit")
                ):
                    continue  # never ran (skipped, pending, cancelled before start)
                stats = self._types.get(record.type)
                if stats is None:
                    stats = self._types[record.type] = _TypeStats()
                stats.count += 1
                if record.status.value == "failed":
                    stats.errors += 1
                stats.retries += max(record.attempts - 1, 0)
                if record.metadata and record.metadata.get("cache_hit"):
                    stats.cache_hits += 1
                duration = record.duration_ms
                if duration is not None:
                    stats.total_ms += duration
                    stats.samples.append(duration)

    def get_statistics(self) -> dict[str, Any]:
        with self._lock:
            nodes = sum(s.count for s in self._types.values())
            total_ms = sum(s.total_ms for s in self._types.values())
            per_type: dict[str, dict[str, float]] = {}
            for name, s in sorted(self._types.items()):
                ordered = sorted(s.samples)
                per_type[name] = {
                    "count": s.count,
                    "errors": s.errors,
                    "retries": s.retries,
                    "cache_hits": s.cache_hits,
                    "avg_ms": s.total_ms / s.count if s.count else 0.0,
                    "p50_ms": _percentile(ordered, 0.50),
                    "p95_ms": _percentile(ordered, 0.95),
                }
            return {
                "total_workflows": self.total_workflows,
                "workflows_by_status": dict(self.workflows_by_status),
                "avg_workflow_time": (
                    self.workflow_ms_total / self.total_workflows if self.total_workflows else 0.0
                ),
                "total_nodes": nodes,
                "avg_node_time": total_ms / nodes if nodes else 0.0,
                "errors": sum(s.errors for s in self._types.values()),
                "retries": sum(s.retries for s in self._types.values()),
                "cache_hits": sum(s.cache_hits for s in self._types.values()),
                "node_types": per_type,
            }

    def reset(self) -> None:
        with self._lock:
            self.total_workflows = 0
            self.workflows_by_status.clear()
            self.workflow_ms_total = 0.0
            self._types.clear()
