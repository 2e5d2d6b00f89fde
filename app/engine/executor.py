"""Executors: ``WorkflowExecutor`` and its strategies, all configurations of the one
scheduler in ``scheduler.py``.

=====================  ==========================================================
``WorkflowExecutor``   parallel up to ``config.max_parallel_nodes``; every out-edge
                       whose condition holds is taken
``SequentialExecutor`` one node at a time
``ParallelExecutor``   ``max_workers`` nodes at a time
``ConditionalExecutor`` first-match branching: of a node's conditional out-edges
                       only the first that holds is taken; unconditional edges are
                       the ``else`` branch
=====================  ==========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from app.engine.breaker import CircuitBreakerStore, process_breakers
from app.engine.cache import Cache, InMemoryCache
from app.engine.checkpoint import (
    Checkpoint,
    CheckpointNotFoundError,
    CheckpointStore,
    InMemoryCheckpointStore,
)
from app.engine.config import ExecutionConfig
from app.engine.dsl import NodeSpec, WorkflowDefinition
from app.engine.errors import InputValidationError, RunNotFoundError
from app.engine.events import Event, EventSink, EventType
from app.engine.expressions import Scope
from app.engine.graph import compile_workflow
from app.engine.memory import InMemoryMemoryStore, MemoryStore
from app.engine.metrics import MetricsCollector
from app.engine.node import NodeContext, NodeResult, WorkflowContext
from app.engine.ports import Clock, SystemClock, WorkflowResolver
from app.engine.result import NodeStatus, RunError, RunResult, RunStatus
from app.engine.scheduler import RunHandle, RunShared, Strategy, _notify
from app.engine.schema import check_input
from app.engine.trace import build_trace
from app.engine.validation import Source, create_workflow
from app.engine.values import ValueProblem, inspect_value

logger = logging.getLogger("flowcore.engine")

_UNSET: Any = object()

__all__ = [
    "ConditionalExecutor",
    "DebugExecutor",
    "DebugState",
    "ParallelExecutor",
    "SequentialExecutor",
    "Strategy",
    "WorkflowExecutor",
]


class _QueueSink:
    def __init__(self, queue: asyncio.Queue[Event | None]) -> None:
        self.queue = queue

    def publish(self, event: Event) -> None:
        self.queue.put_nowait(event)


class _LogSink:
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


class _TraceSink:
    """Keeps a run's events for a DEBUG-level execution trace."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


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


class WorkflowExecutor:
    """Runs workflows in-process. One executor can run many workflows concurrently.

    Subclasses may override the async hooks ``pre_workflow_hook``, ``pre_node_hook``,
    ``post_node_hook``, ``post_workflow_hook`` and ``handle_error``; hooks that are not
    overridden cost nothing. ``callbacks`` are objects with any of ``on_workflow_start``,
    ``on_node_start``, ``on_node_end`` and ``on_workflow_end`` (sync or async).
    """

    strategy: Strategy = Strategy()

    def __init__(
        self,
        config: ExecutionConfig | None = None,
        *,
        metrics_collector: MetricsCollector | None = None,
        event_sinks: list[EventSink] | None = None,
        workflows: WorkflowResolver | None = None,
        clock: Clock | None = None,
        checkpoint_store: CheckpointStore | None = None,
        cache: Cache | None = None,
        circuit_breakers: CircuitBreakerStore | None = None,
        callbacks: list[Any] | None = None,
        memory_store: MemoryStore | None = None,
        park_after: float | None = None,
    ) -> None:
        self.config = config if config is not None else ExecutionConfig()
        self.metrics_collector = metrics_collector
        self.event_sinks = list(event_sinks or [])
        self.workflows = workflows
        self.clock = clock or SystemClock()
        self.checkpoint_store = checkpoint_store
        self.cache = cache
        self.circuit_breakers = circuit_breakers
        self.callbacks = list(callbacks or [])
        self.memory_store: MemoryStore = memory_store or InMemoryMemoryStore()
        #: park runs that wait this long on nothing but top-level delays and waits
        #: (needs checkpoints): see ``execute``
        self.park_after = park_after
        self._runs: dict[str, RunShared] = {}
        self._last: RunShared | None = None
        self._early_signals: dict[str, list[tuple[str, Any]]] = {}
        self._early_cancels: set[str] = set()

    # --------------------------------------------------------------------- hooks

    async def pre_workflow_hook(self, workflow: WorkflowDefinition, input_data: Any) -> None:
        """Called before a workflow runs."""

    async def pre_node_hook(self, node: NodeSpec, context: NodeContext) -> None:
        """Called before each node runs."""

    async def post_node_hook(self, node: NodeSpec, result: NodeResult) -> None:
        """Called after each node, with its result."""

    async def post_workflow_hook(self, workflow: WorkflowDefinition, result: RunResult) -> None:
        """Called after a workflow finished, whatever its status."""

    async def handle_error(self, error: BaseException, node: NodeSpec, context: NodeContext) -> Any:
        """Called when a node failed for good (after its retries). Return a NodeResult
        (or an output value) to recover; raise (the default re-raises ``error``) to let
        the failure stand."""
        raise error

    def _overrides(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(WorkflowExecutor, hook)

    # ----------------------------------------------------------------- running

    async def execute(
        self,
        workflow: WorkflowDefinition | Source,
        input_data: Any = None,
        *,
        run_id: str | None = None,
        config: dict[str, Any] | None = None,
        context: WorkflowContext | None = None,
        event_sinks: list[EventSink] | None = None,
    ) -> RunResult:
        """Run ``workflow`` on ``input_data`` to the end and return its result.

        ``config`` overrides knobs for this run only; ``context`` supplies a
        ``WorkflowContext`` (e.g. with memory attached); ``event_sinks`` receive this
        run's events in addition to the executor's own.

        With ``park_after`` set and checkpoints on, a run whose every running node is a
        top-level ``delay`` or ``wait`` for that long (and whose next timer is at least
        that far away) *parks*: its state is checkpointed, its nodes stop, and the
        result is ``WAITING`` with ``parked`` and ``wake_at`` (None: only a signal wakes
        it). ``continue_execution`` from its latest checkpoint goes on from there:
        delays sleep what is left, waits keep their deadline and their signals.
        """
        definition = (
            workflow if isinstance(workflow, WorkflowDefinition) else create_workflow(workflow)
        )
        return await self._run(
            definition, input_data, run_id or uuid.uuid4().hex, config, context, event_sinks, None
        )

    async def resume_from_checkpoint(
        self, checkpoint_id: str, *, event_sinks: list[EventSink] | None = None
    ) -> RunResult:
        """Load a checkpoint from ``checkpoint_store`` and continue its run."""
        checkpoint = await self._checkpoints().load(checkpoint_id)
        return await self.continue_execution(checkpoint, event_sinks=event_sinks)

    async def continue_execution(
        self,
        checkpoint: Checkpoint,
        *,
        event_sinks: list[EventSink] | None = None,
        variables: dict[str, Any] | None = None,
        run_id: str | None = None,
        input_data: Any = _UNSET,
        config: dict[str, Any] | None = None,
        event_seq: int = 0,
    ) -> RunResult:
        """Continue the run a checkpoint belongs to: nodes it recorded as finished are
        not run again; delays sleep only their remaining time; waits wait again.

        ``variables`` patches the variables first. ``run_id`` other than the
        checkpoint's *forks*: a new run starts from the checkpoint's state (its first
        checkpoint holds everything restored), optionally with new ``input_data``.
        ``event_seq`` is a floor for the event sequence (a durable log may hold events
        past the checkpoint's).
        """
        if checkpoint.definition is None:
            raise CheckpointNotFoundError(f"checkpoint {checkpoint.id!r} holds no definition")
        definition = create_workflow(checkpoint.definition)
        fork = run_id is not None and run_id != checkpoint.run_id
        return await self._run(
            definition,
            checkpoint.input if input_data is _UNSET else input_data,
            run_id or checkpoint.run_id,
            config,
            None,
            event_sinks,
            checkpoint,
            variables,
            fork=fork,
            event_seq=event_seq,
        )

    def _checkpoints(self) -> CheckpointStore:
        if self.checkpoint_store is None:
            self.checkpoint_store = InMemoryCheckpointStore()
        return self.checkpoint_store

    async def _run(
        self,
        definition: WorkflowDefinition,
        input_data: Any,
        run_id: str,
        config: dict[str, Any] | None,
        context: WorkflowContext | None,
        event_sinks: list[EventSink] | None,
        restore: Checkpoint | None,
        variables_patch: dict[str, Any] | None = None,
        *,
        fork: bool = False,
        event_seq: int = 0,
    ) -> RunResult:
        compiled = compile_workflow(definition)
        effective = self.config.merged(definition.config).merged(config)
        _check_storable(input_data, "input", effective)
        _check_storable(variables_patch, "vars", effective)
        if definition.input_schema is not None and restore is None:
            problems = check_input(definition.input_schema, input_data)
            if problems:
                raise InputValidationError(problems)
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} is already active in this executor")
        sinks = [*self.event_sinks, *(event_sinks or [])]
        if effective.verbose_logging:
            sinks.append(_LogSink())
        trace_sink: _TraceSink | None = None
        if effective.trace_execution and effective.trace_level == "DEBUG":
            trace_sink = _TraceSink()
            sinks.append(trace_sink)
        shared = RunShared(
            run_id, definition.id, effective, self.strategy, sinks, self.clock, self.workflows, self
        )
        if effective.enable_cache or any(n.spec.cache is not None for n in compiled.nodes):
            if self.cache is None:
                self.cache = InMemoryCache(effective.cache_size, self.clock)
            shared.cache = self.cache
        shared.breakers = self.circuit_breakers or process_breakers()
        shared.memory_store = self.memory_store
        if effective.enable_checkpoints:
            shared.park_after = self.park_after
        wctx = context or WorkflowContext(definition.id)
        wctx.run_id = run_id
        wctx.input = input_data
        variables = wctx.variables
        if restore is not None and fork:
            variables.update(restore.variables)
            shared.restored = dict(restore.completed)
            shared.fork_seed = dict(restore.completed)
            shared.restored_pending = _resumable(restore.pending)
        elif restore is not None:
            variables.update(restore.variables)
            shared.seq = max(restore.event_seq, event_seq)
            shared.checkpoint_sequence = restore.sequence
            if effective.enable_checkpoints:
                # resuming from an earlier checkpoint: new records follow the last one
                # stored, and the first of them continues from `restore`
                infos = await self._checkpoints().list(run_id)
                last = infos[-1].sequence if infos else restore.sequence
                if last != restore.sequence:
                    shared.checkpoint_sequence = last
                    shared.checkpoint_parent = restore.sequence
            shared.restored = dict(restore.completed)
            shared.restored_pending = _resumable(restore.pending)
            for name, payloads in restore.signals.items():
                shared.signals[name] = deque(payloads)
        for key, value in definition.vars.items():
            variables.setdefault(key, value)
        if variables_patch:
            variables.update(variables_patch)
        started = time.time()
        run_info = {"id": run_id, "workflow_id": definition.id, "started_at": started}
        scope = Scope(input_data, variables, {}, run_info)
        handle = RunHandle(shared, compiled, scope, wctx)
        shared.root = handle
        result = RunResult(run_id, definition.id, RunStatus.RUNNING, started_at=started)
        self._runs[run_id] = shared
        for name, payload in self._early_signals.pop(run_id, ()):
            shared.signal(name, payload)
        if run_id in self._early_cancels:  # cancelled before it started: no node runs
            self._early_cancels.discard(run_id)
            handle.cancel()
        if effective.debug_mode:  # kept for get_current_state() after the run ends
            self._last = shared
        try:
            if self._overrides("pre_workflow_hook"):
                await self.pre_workflow_hook(definition, input_data)
            if self.callbacks:
                await _notify(self.callbacks, "on_workflow_start", definition, input_data)
            shared.status = RunStatus.RUNNING
            wctx.status = "running"
            if effective.enable_checkpoints:
                shared.start_checkpoints(
                    self._checkpoints(),
                    {
                        "definition": definition.model_dump(mode="json", exclude_none=True),
                        "input": input_data,
                    },
                )
            if restore is None or fork:
                started_data: dict[str, Any] = {
                    "workflow_id": definition.id,
                    "version": definition.version,
                }
                if restore is not None:
                    started_data["forked_from"] = restore.id
                shared.emit(EventType.RUN_STARTED, None, started_data)
                handle.checkpoint("running")
            else:
                shared.emit(EventType.RUN_RESUMED, None, {"checkpoint_id": restore.id})
            try:
                if effective.timeout_seconds is None:
                    await handle.run()
                else:
                    async with asyncio.timeout(effective.timeout_seconds):
                        await handle.run()
            except TimeoutError:
                handle.error = RunError(
                    f"the run timed out after {effective.timeout_seconds:g}s", "timeout"
                )
                handle.cancelled = False
            except asyncio.CancelledError:
                self._finish(result, handle, shared)
                with contextlib.suppress(Exception):
                    await shared.finish_checkpoints()
                raise
            self._finish(result, handle, shared)
            await shared.finish_checkpoints()
            if shared.checkpoint_error is not None:
                # the run's state could not be stored: it did not durably succeed
                error = shared.checkpoint_error
                result.status = RunStatus.FAILED
                result.output = None
                # the store's own words stay in the log: they may quote the data and
                # name its internals, neither of which belongs in a run's error
                logger.warning("run %s: checkpoints could not be written", run_id, exc_info=error)
                result.error = RunError(
                    "checkpoints could not be written: the checkpoint store refused the "
                    f"run's state ({type(error).__name__})",
                    "checkpoint",
                )
            if effective.trace_execution:
                result.execution_trace = build_trace(
                    result, effective.trace_level, trace_sink.events if trace_sink else None
                )
                if effective.trace_output:
                    await asyncio.to_thread(result.execution_trace.write, effective.trace_output)
            if effective.collect_metrics and self.metrics_collector is None:
                self.metrics_collector = MetricsCollector()
            if self.metrics_collector is not None:
                self.metrics_collector.record_run(result)
            if self._overrides("post_workflow_hook"):
                await self.post_workflow_hook(definition, result)
            if self.callbacks:
                await _notify(self.callbacks, "on_workflow_end", definition, result)
            return result
        finally:
            del self._runs[run_id]

    def _finish(self, result: RunResult, handle: RunHandle, shared: RunShared) -> None:
        result.finished_at = time.time()
        result.node_results = {record.node_id: record for record in handle.records}
        result.errors = handle.errors
        result.variables = handle.scope.vars
        if shared.parked and handle.error is None and not handle.cancelled:
            result.status = RunStatus.WAITING
            result.parked = True
            result.wake_at = shared.wake_at
            handle.checkpoint("waiting")
        elif handle.breakpoint is not None:
            result.status = RunStatus.WAITING
            result.error = handle.breakpoint
            shared.emit(
                EventType.RUN_WAITING,
                handle.breakpoint.node_id,
                {"reason": "break_on_error", "error": handle.breakpoint.to_dict()},
            )
            handle.checkpoint("waiting", handle.breakpoint)
        elif handle.error is not None:
            result.status = RunStatus.FAILED
            result.error = handle.error
            shared.emit(EventType.RUN_FAILED, None, {"error": handle.error.to_dict()})
            handle.checkpoint("failed", handle.error)
        elif handle.cancelled:
            result.status = RunStatus.CANCELLED
            result.error = RunError("the run was cancelled", "cancelled")
            shared.emit(EventType.RUN_CANCELLED, None, {})
            handle.checkpoint("cancelled", result.error)
        else:
            result.status = RunStatus.SUCCEEDED
            result.output = handle.output
            shared.emit(EventType.RUN_SUCCEEDED, None, {"output": handle.output})
            handle.checkpoint("succeeded")
        if result.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            for record in handle.records:
                if record.status in (NodeStatus.PENDING, NodeStatus.QUEUED):
                    record.status = NodeStatus.CANCELLED
        shared.status = result.status
        handle.context.status = result.status.value
        result.events = shared.seq

    async def stream(
        self,
        workflow: WorkflowDefinition | Source,
        input_data: Any = None,
        *,
        run_id: str | None = None,
        config: dict[str, Any] | None = None,
        context: WorkflowContext | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Run ``workflow`` and yield its events as they happen, ending with the
        terminal event. Leaving the loop early cancels the run."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(
            self.execute(
                workflow,
                input_data,
                run_id=run_id,
                config=config,
                context=context,
                event_sinks=[_QueueSink(queue)],
            )
        )
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                yield event
            await task  # surface an error raised before the run started
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    # ----------------------------------------------------------------- control

    def cancel(self, run_id: str, *, early: bool = False) -> None:
        """Cancel a live run: its running nodes are cancelled, it ends ``cancelled``.
        With ``early``, a run that has not started yet is cancelled as it starts (no
        node runs) instead of raising RunNotFoundError."""
        if early and run_id not in self._runs:
            self._early_cancels.add(run_id)
            return
        shared = self._shared(run_id)
        assert shared.root is not None
        shared.root.cancel()

    def signal(self, run_id: str, name: str, payload: Any = None, *, early: bool = False) -> bool:
        """Deliver ``payload`` to the run's ``wait`` node waiting for ``name`` (or keep it
        for the first one that will). With ``early``, a signal for a run that has not
        started yet is kept for it instead of raising RunNotFoundError. False: the run
        has parked and did not take it (deliver it to the run's next execution)."""
        shared = self._runs.get(run_id)
        if shared is None and early:
            self._early_signals.setdefault(run_id, []).append((name, payload))
            return True
        return self._shared(run_id).signal(name, payload)

    def status(self, run_id: str) -> RunStatus:
        return self._shared(run_id).status

    def active_runs(self) -> list[str]:
        return list(self._runs)

    def get_current_state(self, run_id: str | None = None) -> DebugState:
        """The state of a run (default: the latest one): the nodes running now, the
        context, what completed. Node tracking needs ``debug_mode``."""
        if run_id:
            shared = self._runs.get(run_id)
        elif self._last is not None:
            shared = self._last
        else:  # the most recent active run
            shared = next(reversed(self._runs.values()), None)
        if shared is None or shared.root is None:
            return DebugState(None, "idle", None, [], {})
        root = shared.root
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

    def _shared(self, run_id: str) -> RunShared:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFoundError(f"no active run {run_id!r}") from None


def _check_storable(value: Any, field: str, config: ExecutionConfig) -> None:
    """Input and variables no store can hold (too deep, a NUL, a NaN) are refused before
    the run starts: the expression runtime would even cut a string at a NUL."""
    try:
        inspect_value(value, max_depth=config.max_value_depth)
    except ValueProblem as problem:
        raise InputValidationError([f"{field}{problem.path}: {problem.reason}"]) from None


def _resumable(pending: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pending delays and waits a resumed run continues (not breakpoints)."""
    return {k: v for k, v in pending.items() if v.get("kind") in ("delay", "wait")}


class SequentialExecutor(WorkflowExecutor):
    """Runs one node at a time, in a topological order."""

    strategy = Strategy(max_parallel=1)


class ParallelExecutor(WorkflowExecutor):
    """Runs up to ``max_workers`` ready nodes at once."""

    def __init__(
        self, max_workers: int = 10, config: ExecutionConfig | None = None, **kwargs: Any
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        super().__init__(config, **kwargs)
        self.max_workers = max_workers
        self.strategy = Strategy(max_parallel=max_workers)


class ConditionalExecutor(WorkflowExecutor):
    """First-match branching: a node's conditional out-edges form an if/elif chain in
    edge order, and its unconditional out-edges are the else branch."""

    strategy = Strategy(branching="first")


class DebugExecutor(WorkflowExecutor):
    """A ``WorkflowExecutor`` with ``debug_mode`` on, usable as an async context manager;
    ``get_current_state()`` shows the running nodes and the context at any point."""

    def __init__(self, config: ExecutionConfig | None = None, **kwargs: Any) -> None:
        config = (config or ExecutionConfig()).model_copy()
        config.debug_mode = True
        super().__init__(config, **kwargs)

    async def __aenter__(self) -> DebugExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for run_id in self.active_runs():
            self.cancel(run_id)
