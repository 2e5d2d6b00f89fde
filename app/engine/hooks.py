"""``RunHooks``: what an executor's subclass and callbacks ask of the scheduler, handed
to a run as a value.

The scheduler calls a hook only when the executor's subclass overrides it (an unset hook
costs nothing per node), and it never sees the executor itself: a run depends on these
callables, not on the class that made them.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.engine.dsl import NodeSpec
    from app.engine.node import NodeContext, NodeResult

__all__ = ["RunHooks"]

PreNodeHook = Callable[["NodeSpec", "NodeContext"], Awaitable[None]]
PostNodeHook = Callable[["NodeSpec", "NodeResult"], Awaitable[None]]
ErrorHook = Callable[[BaseException, "NodeSpec", "NodeContext"], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class RunHooks:
    """The per-node hooks of one run (None: not overridden) and its callback objects.

    ``callbacks`` are objects with any of ``on_workflow_start``, ``on_node_start``,
    ``on_node_end`` and ``on_workflow_end``, sync or async.
    """

    pre_node: PreNodeHook | None = None
    post_node: PostNodeHook | None = None
    handle_error: ErrorHook | None = None
    callbacks: tuple[Any, ...] = ()

    async def notify(self, method: str, *args: Any) -> None:
        """Call ``method`` on every callback object that has it (sync or async)."""
        for callback in self.callbacks:
            fn = getattr(callback, method, None)
            if fn is not None:
                outcome = fn(*args)
                if inspect.isawaitable(outcome):
                    await outcome
