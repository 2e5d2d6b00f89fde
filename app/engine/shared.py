"""``RunShared``: the state one run shares with every body run nested in it (ids,
config, the event sequence, signals, waiting and parking bookkeeping, budgets), and
``Strategy``, how an executor drives the scheduler.

It knows the run's root graph only as a ``RootGraph`` (what parking and budgets ask of
it) and the executor not at all: hooks come in as a ``RunHooks`` value.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from app.engine.breaker import CircuitBreakerStore
from app.engine.budget import BudgetExceededError, RunBudget
from app.engine.cache import Cache
from app.engine.checkpoint import Checkpoint, NodeCheckpoint
from app.engine.checkpointing import CheckpointWriter
from app.engine.config import ExecutionConfig
from app.engine.events import Event, EventSink, EventType
from app.engine.hooks import RunHooks
from app.engine.memory import MemoryStore
from app.engine.ports import Clock, WorkflowResolver
from app.engine.result import RunError, RunStatus
from app.engine.secrets import SecretResolver

__all__ = ["Branching", "RootGraph", "RunShared", "Strategy"]

Branching = Literal["all", "first"]


@dataclass(frozen=True, slots=True)
class Strategy:
    """How an executor drives the scheduler.

    ``max_parallel``: nodes of one graph at once (None: ``config.max_parallel_nodes``).
    ``branching``: ``"all"`` takes every out-edge whose condition holds; ``"first"``
    takes the first true conditional out-edge, and the unconditional ones only when no
    condition holds (an if / elif / else chain in edge order).
    """

    max_parallel: int | None = None
    branching: Branching = "all"


class RootGraph(Protocol):
    """What the run asks of its root graph: to fail (a budget was crossed at any depth)
    and to stop its nodes for parking."""

    def fail(self, error: RunError) -> None: ...

    def park(self) -> None: ...


class RunShared:
    """State shared by a run and the body runs nested in it: ids, config, the event
    sequence, signals, waiting bookkeeping."""

    def __init__(
        self,
        run_id: str,
        workflow_id: str,
        config: ExecutionConfig,
        strategy: Strategy,
        sinks: list[EventSink],
        clock: Clock,
        resolver: WorkflowResolver | None,
        hooks: RunHooks,
    ) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.config = config
        self.strategy = strategy
        self.max_parallel = strategy.max_parallel or config.max_parallel_nodes
        self.sinks = sinks
        self.clock = clock
        self.resolver = resolver
        self.hooks = hooks
        self.seq = 0
        self.status = RunStatus.PENDING
        self.signals: dict[str, deque[Any]] = {}
        self.waiters: dict[str, deque[asyncio.Future[Any]]] = {}
        self.waiting = 0
        self.root: RootGraph | None = None
        self.cache: Cache | None = None
        self.breakers: CircuitBreakerStore | None = None
        self.memory_store: MemoryStore | None = None
        self.secrets: SecretResolver | None = None
        #: the root graph's checkpoint writer (None: checkpoints are off)
        self.checkpoints: CheckpointWriter | None = None
        #: node id -> pending delay/wait (what a checkpoint keeps to resume them)
        self.pending: dict[str, dict[str, Any]] = {}
        #: state restored from a checkpoint: node id -> finished node, and pending items
        self.restored: dict[str, NodeCheckpoint] = {}
        self.restored_pending: dict[str, dict[str, Any]] = {}
        #: the node ids running right now (tracked only in debug mode)
        self.debug = config.debug_mode
        self.current: dict[str, float] = {}
        self.last_node: str | None = None
        #: the run's work and data against its budgets (body runs included)
        self.budget = RunBudget(config)
        #: workers of map nodes running now, at every depth (see ``take_workers``)
        self.workers = 0
        # parking (see ``park``): node executions in flight at any depth, and the
        # top-level delays and waits among them with their wake-up times
        self.park_after: float | None = None
        self.busy = 0
        self.blocked: dict[str, float | None] = {}
        self.parked = False
        self.wake_at: float | None = None
        self._park_timer: asyncio.TimerHandle | None = None

    def restore(self, checkpoint: Checkpoint, *, fork: bool, event_seq: int) -> None:
        """Take over what ``checkpoint`` holds: the nodes it finished and its pending
        delays and waits (not its breakpoints); continuing the same run (not a fork),
        also its event sequence (at least ``event_seq``) and its kept signals."""
        self.restored = dict(checkpoint.completed)
        self.restored_pending = {
            k: v for k, v in checkpoint.pending.items() if v.get("kind") in ("delay", "wait")
        }
        if not fork:
            self.seq = max(checkpoint.event_seq, event_seq)
            for name, payloads in checkpoint.signals.items():
                self.signals[name] = deque(payloads)

    # --------------------------------------------------------------- concurrency

    def take_workers(self, wanted: int) -> int:
        """How many body runs a map may run at once: its share of the run's
        ``max_concurrent_tasks``, shared by the maps at every depth, and never less
        than one. Nested maps would otherwise multiply their concurrency (100 x 100
        bodies at once), and a loop iteration with that many ready tasks keeps every
        other run and request on the replica waiting."""
        free = self.config.max_concurrent_tasks - self.workers
        granted = max(1, min(wanted, free))
        self.workers += granted
        return granted

    def give_workers(self, count: int) -> None:
        self.workers -= count

    # ------------------------------------------------------------------ budgets

    def over_budget(self, error: BudgetExceededError, node_id: str | None) -> None:
        """Fail the whole run (its body runs are cancelled with it)."""
        if self.root is not None:
            self.root.fail(RunError(str(error), error.kind, node_id))

    # ------------------------------------------------------------------ parking

    def parking_changed(self) -> None:
        """Called when ``busy`` or ``blocked`` changed: once every node in flight is a
        top-level delay or wait, arm the park timer (any change disarms it)."""
        if self.park_after is None:
            return
        timer = self._park_timer
        if timer is not None:
            timer.cancel()
            self._park_timer = None
        if self.busy and len(self.blocked) == self.busy and not self.parked:
            loop = asyncio.get_running_loop()
            self._park_timer = loop.call_later(self.park_after, self._park)

    def _park(self) -> None:
        """Leave the process: the run has waited ``park_after`` seconds on nothing but
        timers and signals, and its next timer is at least that far away. Its nodes are
        stopped (their wake times and deadlines stay pending), the last checkpoint says
        ``waiting`` and the executor returns the run as parked, with ``wake_at``."""
        self._park_timer = None
        park_after = self.park_after
        if self.parked or park_after is None or self.root is None:
            return
        if not (self.busy and len(self.blocked) == self.busy):
            return
        wakes = [t for t in self.blocked.values() if t is not None]
        wake_at = min(wakes) if wakes else None
        if wake_at is not None and wake_at - self.clock.now() < park_after:
            return  # it wakes soon anyway: the change that follows looks again
        if self.status is not RunStatus.WAITING:  # only timers: say why nothing happens
            data: dict[str, Any] = {"reason": "timer", "wake_at": wake_at}
            self.emit(EventType.RUN_WAITING, None, data)
        self.parked = True
        self.wake_at = wake_at
        self.root.park()

    # ------------------------------------------------------------ events, signals

    def emit(self, type: EventType, node_id: str | None, data: dict[str, Any]) -> None:
        self.seq += 1
        if self.sinks:
            event = Event(self.seq, type, self.run_id, node_id, data)
            for sink in self.sinks:
                sink.publish(event)

    def signal(self, name: str, payload: Any) -> bool:
        """Deliver a signal to a waiting node or keep it for the first one that waits;
        False (not taken) once the run has parked."""
        if self.parked:
            return False
        waiters = self.waiters.get(name)
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(payload)
                return True
        self.signals.setdefault(name, deque()).append(payload)
        return True

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_error(self) -> BaseException | None:
        """What the checkpoint store raised, if it did."""
        return self.checkpoints.error if self.checkpoints is not None else None

    async def finish_checkpoints(self) -> None:
        """Write every queued record, then stop the writer (no-op when off)."""
        if self.checkpoints is not None:
            await self.checkpoints.finish()
