"""``NodeRuntime``: everything a node may ask of the run it is part of.

``NodeContext`` offers these to node code through its own methods and holds a
``NodeRuntime``, never the scheduler: a node type depends on this protocol alone, and the
scheduler is free to change how it keeps a run (``scheduler.RunHandle`` implements it, for
the root graph and for every body run nested in it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.engine.budget import BudgetExceededError
    from app.engine.config import ExecutionConfig
    from app.engine.dsl import WorkflowDefinition
    from app.engine.events import EventType
    from app.engine.expressions import Scope
    from app.engine.memory import MemoryStore
    from app.engine.secrets import SecretResolver

__all__ = ["NodeRuntime"]


class NodeRuntime(Protocol):
    """The run as a node may use it. ``node_id`` arguments are the calling node's own id
    within its graph; the runtime knows where that graph sits in the run (``path``)."""

    @property
    def run_id(self) -> str: ...

    @property
    def path(self) -> str:
        """The graph's place in the run: ``""`` for the root graph, ``"map[3]/"`` and
        deeper for body runs; event node ids and idempotency keys start with it."""
        ...

    @property
    def config(self) -> ExecutionConfig:
        """The run's effective ExecutionConfig."""
        ...

    @property
    def memory_store(self) -> MemoryStore | None: ...

    @property
    def secrets(self) -> SecretResolver | None:
        """The run's secrets (None: the executor has none)."""
        ...

    def emit(self, type: EventType, node_id: str, data: dict[str, Any]) -> None:
        """Publish an event of this node (``node.custom``, ``node.token``)."""
        ...

    def over_budget(self, exceeded: BudgetExceededError, node_id: str) -> None:
        """Fail the whole run: node ``node_id`` crossed a budget."""
        ...

    def take_workers(self, wanted: int) -> int:
        """Reserve up to ``wanted`` concurrent body runs (at least one); how many."""
        ...

    def give_workers(self, count: int) -> None: ...

    async def sleep(self, node_id: str, seconds: float) -> None:
        """Sleep on the run's clock; durable (checkpointed, resumable) at the top level."""
        ...

    async def wait_for_signal(self, node_id: str, name: str, timeout: float | None) -> Any:
        """Wait for the run's signal ``name`` and return its payload."""
        ...

    async def run_body(
        self,
        node_id: str,
        scope: Scope,
        body: WorkflowDefinition,
        input: Any,
        extra: Mapping[str, Any] | None,
        label: str,
    ) -> Any:
        """Run a nested workflow in a child of ``scope``; its output."""
        ...

    async def run_workflow(
        self, node_id: str, workflow_id: str, version: int | None, input: Any
    ) -> Any:
        """Run a registered workflow as a child of this run; its output."""
        ...
