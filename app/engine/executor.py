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
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from app.engine.config import ExecutionConfig
from app.engine.dsl import NodeSpec, WorkflowDefinition
from app.engine.errors import InputValidationError, RunNotFoundError
from app.engine.events import Event, EventSink, EventType
from app.engine.expressions import Scope
from app.engine.graph import compile_workflow
from app.engine.node import NodeContext, NodeResult, WorkflowContext
from app.engine.ports import Clock, SystemClock, WorkflowResolver
from app.engine.result import NodeStatus, RunError, RunResult, RunStatus
from app.engine.scheduler import RunHandle, RunShared, Strategy
from app.engine.schema import check_input
from app.engine.validation import Source, create_workflow

__all__ = [
    "ConditionalExecutor",
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


class WorkflowExecutor:
    """Runs workflows in-process. One executor can run many workflows concurrently.

    Subclasses may override the async hooks ``pre_workflow_hook``, ``pre_node_hook``,
    ``post_node_hook`` and ``post_workflow_hook``; hooks that are not overridden cost
    nothing.
    """

    strategy: Strategy = Strategy()

    def __init__(
        self,
        config: ExecutionConfig | None = None,
        *,
        metrics_collector: Any = None,
        event_sinks: list[EventSink] | None = None,
        workflows: WorkflowResolver | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config if config is not None else ExecutionConfig()
        self.metrics_collector = metrics_collector
        self.event_sinks = list(event_sinks or [])
        self.workflows = workflows
        self.clock = clock or SystemClock()
        self._runs: dict[str, RunShared] = {}

    # --------------------------------------------------------------------- hooks

    async def pre_workflow_hook(self, workflow: WorkflowDefinition, input_data: Any) -> None:
        """Called before a workflow runs."""

    async def pre_node_hook(self, node: NodeSpec, context: NodeContext) -> None:
        """Called before each node runs."""

    async def post_node_hook(self, node: NodeSpec, result: NodeResult) -> None:
        """Called after each node, with its result."""

    async def post_workflow_hook(self, workflow: WorkflowDefinition, result: RunResult) -> None:
        """Called after a workflow finished, whatever its status."""

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
        """
        definition = (
            workflow if isinstance(workflow, WorkflowDefinition) else create_workflow(workflow)
        )
        compiled = compile_workflow(definition)
        effective = self.config.merged(definition.config).merged(config)
        if definition.input_schema is not None:
            problems = check_input(definition.input_schema, input_data)
            if problems:
                raise InputValidationError(problems)
        run_id = run_id or uuid.uuid4().hex
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} is already active in this executor")
        strategy = self.strategy
        sinks = [*self.event_sinks, *(event_sinks or [])]
        shared = RunShared(
            run_id, definition.id, effective, strategy, sinks, self.clock, self.workflows, self
        )
        wctx = context or WorkflowContext(definition.id)
        wctx.run_id = run_id
        wctx.input = input_data
        variables = wctx.variables
        for key, value in definition.vars.items():
            variables.setdefault(key, value)
        started = time.time()
        run_info = {"id": run_id, "workflow_id": definition.id, "started_at": started}
        scope = Scope(input_data, variables, {}, run_info)
        handle = RunHandle(shared, compiled, scope, wctx)
        shared.root = handle
        result = RunResult(run_id, definition.id, RunStatus.RUNNING, started_at=started)
        self._runs[run_id] = shared
        try:
            if self._overrides("pre_workflow_hook"):
                await self.pre_workflow_hook(definition, input_data)
            shared.status = RunStatus.RUNNING
            wctx.status = "running"
            shared.emit(
                EventType.RUN_STARTED,
                None,
                {"workflow_id": definition.id, "version": definition.version},
            )
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
                raise
            self._finish(result, handle, shared)
            if self._overrides("post_workflow_hook"):
                await self.post_workflow_hook(definition, result)
            return result
        finally:
            del self._runs[run_id]

    def _finish(self, result: RunResult, handle: RunHandle, shared: RunShared) -> None:
        result.finished_at = time.time()
        result.node_results = {record.node_id: record for record in handle.records}
        result.errors = handle.errors
        result.variables = handle.scope.vars
        if handle.error is not None:
            result.status = RunStatus.FAILED
            result.error = handle.error
            shared.emit(EventType.RUN_FAILED, None, {"error": handle.error.to_dict()})
        elif handle.cancelled:
            result.status = RunStatus.CANCELLED
            result.error = RunError("the run was cancelled", "cancelled")
            shared.emit(EventType.RUN_CANCELLED, None, {})
        else:
            result.status = RunStatus.SUCCEEDED
            result.output = handle.output
            shared.emit(EventType.RUN_SUCCEEDED, None, {"output": handle.output})
        for record in handle.records:
            if (
                record.status in (NodeStatus.PENDING, NodeStatus.QUEUED)
                and handle.error is not None
            ):
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
    ) -> AsyncIterator[Event]:
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

    def cancel(self, run_id: str) -> None:
        """Cancel a live run: its running nodes are cancelled, it ends ``cancelled``."""
        shared = self._shared(run_id)
        assert shared.root is not None
        shared.root.cancel()

    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Deliver ``payload`` to the run's ``wait`` node waiting for ``name`` (or keep it
        for the first one that will)."""
        self._shared(run_id).signal(name, payload)

    def status(self, run_id: str) -> RunStatus:
        return self._shared(run_id).status

    def active_runs(self) -> list[str]:
        return list(self._runs)

    def _shared(self, run_id: str) -> RunShared:
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
