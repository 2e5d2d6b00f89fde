"""The one scheduler every executor configures.

A run is a set of node records and two counters per node: edges still unresolved and
edges taken. When a node finishes, its out-edges are resolved (conditions evaluated) in
the task's done-callback, synchronously, and newly ready nodes are started right there:
there is no polling loop and no ``asyncio.wait`` over the running set, so the per-node
cost is one task plus a few dict operations.

Rules:
- a node is ready when all its incoming edges are resolved and at least one is taken;
  with ``join: "any"`` it is ready on the first taken edge;
- a node none of whose edges is taken is skipped, and skipping propagates;
- never more than ``max_parallel`` nodes of one graph run at once;
- ``branching="first"`` (the ConditionalExecutor) takes only the first true
  conditional out-edge of a node, and its unconditional edges only when no
  condition holds (an if / elif / else chain in edge order).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from app.engine.config import ExecutionConfig
from app.engine.dsl import RetryPolicy, WorkflowDefinition
from app.engine.errors import (
    FlowcoreError,
    NodeExecutionError,
    NodeTimeoutError,
)
from app.engine.events import Event, EventSink, EventType
from app.engine.expressions import Scope
from app.engine.graph import CompiledNode, CompiledWorkflow, compile_workflow
from app.engine.node import NodeContext, NodeResult, WorkflowContext
from app.engine.ports import Clock, WorkflowResolver
from app.engine.result import NodeRun, NodeStatus, RunError, RunStatus

if TYPE_CHECKING:
    from app.engine.executor import WorkflowExecutor

Branching = Literal["all", "first"]


@dataclass(frozen=True, slots=True)
class Strategy:
    """How an executor drives the scheduler.

    ``max_parallel``: nodes of one graph at once (None: ``config.max_parallel_nodes``).
    ``branching``: ``"all"`` takes every out-edge whose condition holds; ``"first"``
    takes the first (see the module docstring).
    """

    max_parallel: int | None = None
    branching: Branching = "all"


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
        executor: WorkflowExecutor | None,
    ) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.config = config
        self.strategy = strategy
        self.max_parallel = strategy.max_parallel or config.max_parallel_nodes
        self.sinks = sinks
        self.clock = clock
        self.resolver = resolver
        self.executor = executor
        self.seq = 0
        self.status = RunStatus.PENDING
        self.signals: dict[str, deque[Any]] = {}
        self.waiters: dict[str, deque[asyncio.Future[Any]]] = {}
        self.waiting = 0
        self.root: RunHandle | None = None
        self.hook_pre_node = executor is not None and executor._overrides("pre_node_hook")
        self.hook_post_node = executor is not None and executor._overrides("post_node_hook")

    def emit(self, type: EventType, node_id: str | None, data: dict[str, Any]) -> None:
        self.seq += 1
        if self.sinks:
            event = Event(self.seq, type, self.run_id, node_id, data)
            for sink in self.sinks:
                sink.publish(event)

    def signal(self, name: str, payload: Any) -> None:
        waiters = self.waiters.get(name)
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(payload)
                return
        self.signals.setdefault(name, deque()).append(payload)


class RunHandle:
    """One execution of one compiled graph: the root run, or a body run inside a node."""

    def __init__(
        self,
        shared: RunShared,
        compiled: CompiledWorkflow,
        scope: Scope,
        context: WorkflowContext,
        path: str = "",
        depth: int = 0,
    ) -> None:
        self.shared = shared
        self.run_id = shared.run_id
        self.compiled = compiled
        self.scope = scope
        self.context = context
        self.path = path
        self.depth = depth
        n = len(compiled.nodes)
        self.records = [NodeRun(cn.id, cn.spec.type) for cn in compiled.nodes]
        self._remaining = [cn.in_degree for cn in compiled.nodes]
        self._taken = [0] * n
        self._ready: deque[int] = deque()
        self._tasks: dict[asyncio.Task[NodeResult], tuple[int, int]] = {}
        self._finished: asyncio.Future[None] | None = None
        self._stopping = False
        self.cancelled = False
        self.error: RunError | None = None
        self.errors: list[RunError] = []
        self.output: Any = None
        self._on_error = shared.config.on_error
        self._max_errors = shared.config.max_errors
        self._first = shared.strategy.branching == "first"

    # ----------------------------------------------------------------- running a graph

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        self._ready.extend(self.compiled.roots)
        self._pump()
        try:
            await self._finished
        except asyncio.CancelledError:
            # the caller cancelled us (or an enclosing asyncio.timeout() expired)
            self.cancelled = True
            await self._drain()
            raise
        if self.error is None and not self.cancelled:
            self._evaluate_output()

    def cancel(self) -> None:
        """Cancel every running node; the run ends ``cancelled``."""
        self.cancelled = True
        self._stop()

    async def _drain(self) -> None:
        self._stop()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks)

    def _stop(self) -> None:
        self._stopping = True
        self._ready.clear()
        for task in list(self._tasks):
            task.cancel()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._tasks and (self._stopping or not self._ready):
            finished = self._finished
            if finished is not None and not finished.done():
                finished.set_result(None)

    def _pump(self) -> None:
        limit = self.shared.max_parallel
        tasks = self._tasks
        while self._ready and len(tasks) < limit and not self._stopping:
            index = self._ready.popleft()
            self._start(index, index)
        self._maybe_finish()

    def _start(self, index: int, runner: int) -> None:
        """Run node ``runner``'s code for node ``index`` (they differ for a fallback)."""
        record = self.records[index]
        record.status = NodeStatus.RUNNING
        task = asyncio.get_running_loop().create_task(
            self._execute(self.compiled.nodes[runner], self.records[runner], index)
        )
        self._tasks[task] = (index, runner)
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[NodeResult]) -> None:
        index, runner = self._tasks.pop(task)
        try:
            if task.cancelled():
                for i in {index, runner}:
                    record = self.records[i]
                    if record.status in (NodeStatus.RUNNING, NodeStatus.WAITING):
                        record.status = NodeStatus.CANCELLED
                        record.finished_at = time.time()
            else:
                self._complete(index, runner, task.result())
            self._pump()
        except BaseException as exc:  # a bug in the scheduler must end the run, not hang it
            finished = self._finished
            if finished is not None and not finished.done():
                finished.set_exception(exc)

    # -------------------------------------------------------------- executing a node

    async def _execute(self, cn: CompiledNode, record: NodeRun, for_index: int) -> NodeResult:
        """Run one node to a NodeResult, with its timeout and retries. Never raises,
        except CancelledError."""
        shared = self.shared
        records = self.records
        parents = self.compiled.nodes[for_index].parents
        outputs = self.scope.nodes
        node_input = {
            records[p].node_id: outputs[records[p].node_id]
            for p in parents
            if records[p].status is NodeStatus.SUCCEEDED
        }
        record.started_at = time.time()
        record.status = NodeStatus.RUNNING
        event_id = self.path + cn.id
        if shared.sinks:
            shared.emit(EventType.NODE_STARTED, event_id, {"type": cn.spec.type})
        else:  # nobody listens: keep the sequence, skip building the payload
            shared.seq += 1
        try:
            config = cn.config.render(self.scope)
        except FlowcoreError as exc:
            return _failure(exc)
        ctx = NodeContext(cn.spec, config, node_input, self.scope, self)
        if shared.hook_pre_node:
            assert shared.executor is not None
            await shared.executor.pre_node_hook(cn.spec, ctx)
        timeout = cn.spec.timeout or shared.config.node_timeout
        policy = self._retry_policy(cn)
        attempt = 0
        while True:
            attempt += 1
            ctx.attempt = attempt
            record.attempts = attempt
            result = await self._attempt(cn, ctx, timeout)
            if result.success or policy is None:
                break
            retries = (
                policy.max_retries if policy.max_retries is not None else shared.config.max_retries
            )
            if attempt > retries:
                break
            if (
                policy.retry_on is not None
                and (result.error_kind or "execution") not in policy.retry_on
            ):
                break
            delay = _backoff(policy, shared.config.retry_delay, attempt)
            shared.emit(
                EventType.NODE_RETRY,
                event_id,
                {"attempt": attempt + 1, "delay": delay, "error": result.error},
            )
            if delay > 0:
                await shared.clock.sleep(delay)
        if shared.hook_post_node:
            assert shared.executor is not None
            await shared.executor.post_node_hook(cn.spec, result)
        return result

    async def _attempt(
        self, cn: CompiledNode, ctx: NodeContext, timeout: float | None
    ) -> NodeResult:
        try:
            if timeout is None:
                result = await cn.node.execute(ctx, self.context)
            else:
                try:
                    async with asyncio.timeout(timeout):
                        result = await cn.node.execute(ctx, self.context)
                except TimeoutError:
                    return _failure(NodeTimeoutError(f"timed out after {timeout:g}s"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _failure(exc)
        if not isinstance(result, NodeResult):  # a plain return value is the output
            return NodeResult(output=result)  # type: ignore[unreachable]
        if not result.success and result.error_kind is None:
            result.error_kind = "execution"
        return result

    def _retry_policy(self, cn: CompiledNode) -> RetryPolicy | None:
        if cn.spec.retry is not None:
            return cn.spec.retry
        on_error = cn.spec.on_error or self._on_error
        if self.shared.config.retry_failed_nodes or on_error == "retry":
            return _DEFAULT_RETRY
        return None

    # ------------------------------------------------------------ completing a node

    def _complete(self, index: int, runner: int, result: NodeResult) -> None:
        record = self.records[index]
        runner_record = self.records[runner]
        shared = self.shared
        now = time.time()
        runner_record.finished_at = now
        cn = self.compiled.nodes[index]
        if runner != index:  # a fallback finished on behalf of `index`
            runner_record.status = NodeStatus.SUCCEEDED if result.success else NodeStatus.FAILED
        if result.success:
            record.status = NodeStatus.SUCCEEDED
            record.finished_at = now
            record.output = result.output
            if runner != index:
                record.fallback_from = runner_record.node_id
                runner_record.output = result.output
                self.scope.nodes[runner_record.node_id] = result.output
            if result.metadata:
                record.metadata = result.metadata
            self.scope.nodes[cn.id] = result.output
            self.context.node_outputs[cn.id] = result.output
            if result.variables:
                self.scope.vars.update(result.variables)
            if shared.sinks:
                shared.emit(
                    EventType.NODE_COMPLETED,
                    self.path + runner_record.node_id,
                    {"output": result.output, "attempts": runner_record.attempts},
                )
            else:
                shared.seq += 1
            self._release(index, True)
            return
        # failure
        error = result.error or "node failed"
        kind = result.error_kind or "execution"
        runner_record.error = error
        runner_record.error_kind = kind
        shared.emit(
            EventType.NODE_FAILED,
            self.path + runner_record.node_id,
            {"error": error, "kind": kind, "attempts": runner_record.attempts},
        )
        if runner == index and cn.fallback is not None and not self._stopping:
            # the fallback's output stands in for this node's downstream
            self._start(index, cn.fallback)
            return
        record.status = NodeStatus.FAILED
        record.finished_at = now
        record.error = error
        record.error_kind = kind
        run_error = RunError(error, kind, self.path + cn.id)
        on_error = cn.spec.on_error or self._on_error
        if on_error == "continue":
            self.errors.append(run_error)
            if self._max_errors is not None and len(self.errors) >= self._max_errors:
                self._fail(
                    RunError(f"{len(self.errors)} node errors reached max_errors", "max_errors")
                )
                return
            self._release(index, False)
            return
        self._fail(run_error)

    def _fail(self, error: RunError) -> None:
        if self.error is None:
            self.error = error
        self._stop()

    def _release(self, index: int, ok: bool) -> None:
        """Resolve node ``index``'s out-edges (none taken unless ``ok``); queue the nodes
        that became ready; skip, transitively, the ones that can no longer run."""
        nodes = self.compiled.nodes
        records = self.records
        remaining = self._remaining
        taken_count = self._taken
        work = [(index, ok)]
        while work:
            j, j_ok = work.pop()
            edges = nodes[j].out_edges
            if not edges:
                continue
            flags = self._branch(j) if j_ok else None
            if flags is None and j_ok:
                return  # a condition failed; the run is failing
            for k, edge in enumerate(edges):
                t = edge.target
                remaining[t] -= 1
                record = records[t]
                if record.status is not NodeStatus.PENDING:
                    continue
                if flags is not None and flags[k]:
                    taken_count[t] += 1
                    if nodes[t].join_any:
                        record.status = NodeStatus.QUEUED
                        self._ready.append(t)
                        continue
                if remaining[t] == 0:
                    if taken_count[t]:
                        record.status = NodeStatus.QUEUED
                        self._ready.append(t)
                    else:
                        record.status = NodeStatus.SKIPPED
                        self.shared.emit(EventType.NODE_SKIPPED, self.path + record.node_id, {})
                        work.append((t, False))

    def _branch(self, index: int) -> list[bool] | None:
        edges = self.compiled.nodes[index].out_edges
        flags: list[bool] = []
        matched = False
        for edge in edges:
            if edge.condition is None:
                flags.append(True)
                continue
            if self._first and matched:
                flags.append(False)
                continue
            try:
                value = bool(edge.condition.evaluate(self.scope))
            except FlowcoreError as exc:
                self._fail(
                    RunError(
                        f"edge {edge.label} condition: {exc}", "expression", self.path + edge.label
                    )
                )
                return None
            matched = matched or value
            flags.append(value)
        if self._first and matched:
            flags = [
                flag and edge.condition is not None for flag, edge in zip(flags, edges, strict=True)
            ]
        return flags

    def _evaluate_output(self) -> None:
        compiled = self.compiled
        if compiled.output is not None:
            try:
                self.output = {
                    name: expr.evaluate(self.scope) for name, expr in compiled.output.items()
                }
            except FlowcoreError as exc:
                self.error = RunError(f"workflow output: {exc}", "expression")
            return
        self.output = {
            self.records[i].node_id: self.records[i].output
            for i in compiled.leaves
            if self.records[i].status is NodeStatus.SUCCEEDED
        }

    # ----------------------------------------------- services offered to NodeContext

    def emit(self, type: EventType, node_id: str, data: dict[str, Any]) -> None:
        self.shared.emit(type, node_id, data)

    async def wait_for_signal(self, node_id: str, name: str, timeout: float | None) -> Any:
        shared = self.shared
        buffered = shared.signals.get(name)
        if buffered:
            return buffered.popleft()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        shared.waiters.setdefault(name, deque()).append(future)
        index = self.compiled.by_id[node_id]
        self.records[index].status = NodeStatus.WAITING
        shared.waiting += 1
        if shared.waiting == 1:
            shared.status = RunStatus.WAITING
            shared.emit(EventType.RUN_WAITING, self.path + node_id, {"signal": name})
        try:
            if timeout is None:
                return await future
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise NodeTimeoutError(f"no signal {name!r} within {timeout:g}s") from None
        finally:
            if not future.done():
                future.cancel()
            self.records[index].status = NodeStatus.RUNNING
            shared.waiting -= 1
            if shared.waiting == 0 and shared.status is RunStatus.WAITING:
                shared.status = RunStatus.RUNNING
                shared.emit(EventType.RUN_RESUMED, self.path + node_id, {"signal": name})

    async def run_body(
        self,
        ctx: NodeContext,
        body: WorkflowDefinition,
        input: Any,
        extra: Mapping[str, Any] | None,
        label: str,
    ) -> Any:
        scope = ctx.scope.child(input, extra)
        return await self._run_child(ctx, compile_workflow(body), scope, label)

    async def run_subworkflow(
        self, ctx: NodeContext, workflow_id: str, version: int | None, input: Any
    ) -> Any:
        resolver = self.shared.resolver
        if resolver is None:
            raise NodeExecutionError("no workflow resolver is configured for subworkflows")
        definition = await resolver.get_workflow(workflow_id, version)
        scope = Scope(input, dict(definition.vars), {}, self.scope.run)
        return await self._run_child(ctx, compile_workflow(definition), scope, workflow_id)

    async def _run_child(
        self, ctx: NodeContext, compiled: CompiledWorkflow, scope: Scope, label: str
    ) -> Any:
        depth = self.depth + 1
        if depth >= self.shared.config.max_nesting_depth:
            limit = self.shared.config.max_nesting_depth
            raise NodeExecutionError(f"body runs nest deeper than max_nesting_depth={limit}")
        context = WorkflowContext(compiled.definition.id, self.run_id, scope.input, scope.vars)
        context.memory = self.context.memory
        child = RunHandle(
            self.shared, compiled, scope, context, f"{self.path}{ctx.node_id}[{label}]/", depth
        )
        await child.run()
        if child.error is not None:
            raise NodeExecutionError(f"body {label!r} failed: {child.error}")
        return child.output


_DEFAULT_RETRY = RetryPolicy()


def _backoff(policy: RetryPolicy, default_delay: float, attempt: int) -> float:
    base = policy.delay if policy.delay is not None else default_delay
    delay = min(base * policy.backoff ** (attempt - 1), policy.max_delay)
    if policy.jitter:
        delay *= 1 + random.uniform(-policy.jitter, policy.jitter)
    return max(delay, 0.0)


def _failure(exc: BaseException) -> NodeResult:
    kind = getattr(exc, "kind", None) or "execution"
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, FlowcoreError):
        message = f"{type(exc).__name__}: {message}"
    return NodeResult(success=False, error=message, error_kind=kind)
