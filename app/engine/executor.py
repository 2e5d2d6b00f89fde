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
from collections.abc import AsyncGenerator
from typing import Any

from app.engine.breaker import CircuitBreakerStore, process_breakers
from app.engine.cache import Cache, InMemoryCache
from app.engine.checkpoint import (
    Checkpoint,
    CheckpointNotFoundError,
    CheckpointStore,
    InMemoryCheckpointStore,
)
from app.engine.checkpointing import CheckpointWriter
from app.engine.config import ExecutionConfig
from app.engine.debug import DebugState, debug_state
from app.engine.dsl import NodeSpec, WorkflowDefinition
from app.engine.errors import InputValidationError, RunNotFoundError
from app.engine.events import Event, EventSink, EventType
from app.engine.expressions import Scope
from app.engine.graph import compile_workflow
from app.engine.hooks import RunHooks
from app.engine.memory import InMemoryMemoryStore, MemoryStore
from app.engine.metrics import MetricsCollector
from app.engine.node import NodeContext, NodeResult, WorkflowContext
from app.engine.ports import Clock, SystemClock, WorkflowResolver
from app.engine.result import RunError, RunResult, RunStatus
from app.engine.scheduler import RunHandle
from app.engine.schema import check_input
from app.engine.secrets import SecretResolver
from app.engine.shared import RunShared, Strategy
from app.engine.sinks import LogSink, QueueSink, TraceSink
from app.engine.trace import build_trace
from app.engine.validation import Source, create_workflow
from app.engine.values import check_storable

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
        secrets: SecretResolver | None = None,
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
        #: what ``{{ secrets.NAME }}`` references resolve to (None: no secrets)
        self.secrets = secrets
        #: park runs that wait this long on nothing but top-level delays and waits
        #: (needs checkpoints): see ``execute``
        self.park_after = park_after
        #: run id -> the root graph of each active run
        self._runs: dict[str, RunHandle] = {}
        self._last: RunHandle | None = None
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

    def _hooks(self) -> RunHooks:
        """The per-node hooks this executor's class overrides, and its callbacks."""
        return RunHooks(
            pre_node=self.pre_node_hook if self._overrides("pre_node_hook") else None,
            post_node=self.post_node_hook if self._overrides("post_node_hook") else None,
            handle_error=self.handle_error if self._overrides("handle_error") else None,
            callbacks=tuple(self.callbacks),
        )

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
        check_storable(input_data, "input", max_depth=effective.max_value_depth)
        check_storable(variables_patch, "vars", max_depth=effective.max_value_depth)
        if definition.input_schema is not None and restore is None:
            problems = check_input(definition.input_schema, input_data)
            if problems:
                raise InputValidationError(problems)
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} is already active in this executor")
        sinks = [*self.event_sinks, *(event_sinks or [])]
        if effective.verbose_logging:
            sinks.append(LogSink(self.secrets))
        trace_sink: TraceSink | None = None
        if effective.trace_execution and effective.trace_level == "DEBUG":
            trace_sink = TraceSink(self.secrets)
            sinks.append(trace_sink)
        hooks = self._hooks()
        shared = RunShared(
            run_id,
            definition.id,
            effective,
            self.strategy,
            sinks,
            self.clock,
            self.workflows,
            hooks,
        )
        if effective.enable_cache or any(n.spec.cache is not None for n in compiled.nodes):
            if self.cache is None:
                self.cache = InMemoryCache(effective.cache_size, self.clock)
            shared.cache = self.cache
        shared.breakers = self.circuit_breakers or process_breakers()
        shared.memory_store = self.memory_store
        shared.secrets = self.secrets
        if effective.enable_checkpoints:
            shared.park_after = self.park_after
        wctx = context or WorkflowContext(definition.id)
        wctx.run_id = run_id
        wctx.input = input_data
        variables = wctx.variables
        # where the checkpoint chain goes on (see CheckpointWriter)
        sequence, parent, seed = 0, None, None
        if restore is not None:
            variables.update(restore.variables)
            shared.restore(restore, fork=fork, event_seq=event_seq)
            if fork:
                seed = dict(restore.completed)
            elif effective.enable_checkpoints:
                # new records follow the last one stored, and the first of them
                # continues from `restore` when that is an earlier checkpoint
                infos = await self._checkpoints().list(run_id)
                sequence = infos[-1].sequence if infos else restore.sequence
                if sequence != restore.sequence:
                    parent = restore.sequence
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
        self._runs[run_id] = handle
        for name, payload in self._early_signals.pop(run_id, ()):
            shared.signal(name, payload)
        if run_id in self._early_cancels:  # cancelled before it started: no node runs
            self._early_cancels.discard(run_id)
            handle.cancel()
        if effective.debug_mode:  # kept for get_current_state() after the run ends
            self._last = handle
        try:
            if self._overrides("pre_workflow_hook"):
                await self.pre_workflow_hook(definition, input_data)
            if hooks.callbacks:
                await hooks.notify("on_workflow_start", definition, input_data)
            shared.status = RunStatus.RUNNING
            wctx.status = "running"
            if effective.enable_checkpoints:
                shared.checkpoints = CheckpointWriter(
                    self._checkpoints(),
                    run_id,
                    definition,
                    input_data,
                    self.clock,
                    sequence=sequence,
                    parent=parent,
                    seed=seed,
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
                handle.settle(result)
                with contextlib.suppress(Exception):
                    await shared.finish_checkpoints()
                raise
            await handle.finish(result)
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
            if hooks.callbacks:
                await hooks.notify("on_workflow_end", definition, result)
            return result
        finally:
            del self._runs[run_id]

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
                event_sinks=[QueueSink(queue)],
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
        self._root(run_id).cancel()

    def signal(self, run_id: str, name: str, payload: Any = None, *, early: bool = False) -> bool:
        """Deliver ``payload`` to the run's ``wait`` node waiting for ``name`` (or keep it
        for the first one that will). With ``early``, a signal for a run that has not
        started yet is kept for it instead of raising RunNotFoundError. False: the run
        has parked and did not take it (deliver it to the run's next execution)."""
        if early and run_id not in self._runs:
            self._early_signals.setdefault(run_id, []).append((name, payload))
            return True
        return self._root(run_id).shared.signal(name, payload)

    def status(self, run_id: str) -> RunStatus:
        return self._root(run_id).shared.status

    def active_runs(self) -> list[str]:
        return list(self._runs)

    def get_current_state(self, run_id: str | None = None) -> DebugState:
        """The state of a run (default: the latest one): the nodes running now, the
        context, what completed. Node tracking needs ``debug_mode``."""
        if run_id:
            root = self._runs.get(run_id)
        elif self._last is not None:
            root = self._last
        else:  # the most recent active run
            root = next(reversed(self._runs.values()), None)
        return debug_state(root)

    def _root(self, run_id: str) -> RunHandle:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFoundError(f"no active run {run_id!r}") from None


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
