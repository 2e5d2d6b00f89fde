"""``DebugState``: a snapshot of a run for ``DebugExecutor.get_current_state()`` (which
nodes run now, the context, what completed), read off the run's root graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.engine.result import NodeStatus, RunError
from app.engine.scheduler import RunHandle

__all__ = ["DebugState", "debug_state"]


@dataclass(slots=True)
class DebugState:
    """What ``DebugExecutor.get_current_state()`` shows."""

    run_id: str | None
    status: str
    #: the node started most recently (the one running now, in a sequential run)
    current_node: str | None
    #: every node running right now
    current_nodes: list[str]
    context: dict[str, Any]
    completed: list[str] = field(default_factory=list)
    error: RunError | None = None


def debug_state(root: RunHandle | None) -> DebugState:
    """The state of the run ``root`` is the root graph of (None: idle). The running
    nodes are tracked only in ``debug_mode``."""
    if root is None:
        return DebugState(None, "idle", None, [], {})
    shared = root.shared
    current = list(shared.current)
    return DebugState(
        run_id=shared.run_id,
        status=shared.status.value,
        current_node=current[-1] if current else shared.last_node,
        current_nodes=current,
        context={
            "workflow_id": root.context.workflow_id,
            "run_id": shared.run_id,
            "input": root.scope.input,
            "variables": dict(root.scope.vars),
            "node_outputs": dict(root.scope.nodes),
        },
        completed=[r.node_id for r in root.records if r.status is NodeStatus.SUCCEEDED],
        error=root.error or root.breakpoint,
    )
