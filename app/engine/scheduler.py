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
import inspect
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from app.engine.breaker import CircuitBreakerStore, CircuitOpenError
from app.engine.budget import BudgetExceededError, RunBudget
from app.engine.cache import Cache, cache_key
from app.engine.checkpoint import CheckpointRecord, CheckpointStore, NodeCheckpoint
from app.engine.config import ExecutionConfig
from app.engine.dsl import RetryPolicy, WorkflowDefinition
from app.engine.errors import (
    FlowcoreError,
    NodeExecutionError,
    NodeTimeoutError,
)
from app.engine.events import Event, EventSink, EventType
from app.engine.expressions import Scope, compile_template
from app.engine.graph import CompiledNode, CompiledWorkflow, compile_workflow
from app.engine.memory import MemoryStore
from app.engine.node import NodeContext, NodeResult, WorkflowContext
from app.engine.ports import Clock, WorkflowResolver
from app.engine.result import NodeRun, NodeStatus, RunError, RunStatus
from app.engine.values import UnstorableValueError, ValueProblem, clean_text, inspect_value

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
        self.hook_handle_error = executor is not None and executor._overrides("handle_error")
        self.callbacks: list[Any] = list(executor.callbacks) if executor is not None else []
        self.cache: Cache | None = None
        self.breakers: CircuitBreakerStore | None = None
        self.memory_store: MemoryStore | None = None
        # checkpointing (root graph only)
        self.checkpoints: CheckpointStore | None = None
        self.checkpoint_sequence = 0
        #: the sequence the next record continues from, when not the one before it
        self.checkpoint_parent: int | None = None
        self.checkpoint_header: dict[str, Any] | None = None
        self._checkpoint_queue: list[CheckpointRecord] = []
        self._checkpoint_wake: asyncio.Event | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._checkpoint_closing = False
        self.checkpoint_error: BaseException | None = None
        #: node id -> pending delay/wait (what a checkpoint keeps to resume them)
        self.pending: dict[str, dict[str, Any]] = {}
        #: state restored from a checkpoint: node id -> finished node, and pending items
        self.restored: dict[str, NodeCheckpoint] = {}
        self.restored_pending: dict[str, dict[str, Any]] = {}
        #: a fork's restored nodes, written into its first checkpoint record
        self.fork_seed: dict[str, NodeCheckpoint] | None = None
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
            self.root._fail(RunError(str(error), error.kind, node_id))

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

    # ------------------------------------------------------------------ checkpoints

    def start_checkpoints(self, store: CheckpointStore, header: dict[str, Any]) -> None:
        self.checkpoints = store
        self.checkpoint_header = header
        self._checkpoint_wake = asyncio.Event()
        self._checkpoint_task = asyncio.get_running_loop().create_task(self._write_checkpoints())

    def queue_checkpoint(self, record: CheckpointRecord) -> None:
        self._checkpoint_queue.append(record)
        assert self._checkpoint_wake is not None
        self._checkpoint_wake.set()

    async def _write_checkpoints(self) -> None:
        """Writes queued records in order, batching whatever piled up meanwhile."""
        assert self._checkpoint_wake is not None
        assert self.checkpoints is not None
        while True:
            await self._checkpoint_wake.wait()
            self._checkpoint_wake.clear()
            batch, self._checkpoint_queue = self._checkpoint_queue, []
            if batch:
                try:
                    await self.checkpoints.append(batch)
                except Exception as exc:  # surfaced by finish_checkpoints
                    self.checkpoint_error = exc
                    return
            if self._checkpoint_closing and not self._checkpoint_queue:
                return

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

    async def finish_checkpoints(self) -> None:
        """Write everything queued, then stop the writer."""
        task = self._checkpoint_task
        if task is None:
            return
        self._checkpoint_task = None
        self._checkpoint_closing = True
        assert self._checkpoint_wake is not None
        self._checkpoint_wake.set()
        await asyncio.shield(task)


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
        self._ready: deque[int] = deque(compiled.roots)
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
        self.is_root = depth == 0
        #: set when break_on_error stopped the run at a failed node
        self.breakpoint: RunError | None = None
        self._delta: dict[str, NodeCheckpoint] = {}
        self._since = 0

    # ----------------------------------------------------------------- running a graph

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        self._pump()
        try:
            await self._finished
        except asyncio.CancelledError:
            # the caller cancelled us (or an enclosing asyncio.timeout() expired)
            self.cancelled = True
            await self._drain()
            raise
        if (
            self.error is None
            and not self.cancelled
            and self.breakpoint is None
            and not self.shared.parked
        ):
            self._evaluate_output()

    def cancel(self) -> None:
        """Cancel every running node; the run ends ``cancelled``."""
        self.cancelled = True
        self._stop()

    def park(self) -> None:
        """Stop every running node (all of them delays and waits) for parking: their
        pending wake times and deadlines stay in the checkpoint."""
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
            # once only: a second cancel would interrupt the task while it waits for
            # its own body runs to stop, and they would outlive it (emitting events
            # after the run's terminal one)
            if not task.cancelling():
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
        ready = self._ready
        restored = self.shared.restored if self.is_root else None
        while ready and len(tasks) < limit and not self._stopping:
            index = ready.popleft()
            if restored:
                saved = restored.pop(self.records[index].node_id, None)
                if saved is not None:
                    self._restore(index, saved)
                    continue
            self._start(index, index)
        self._maybe_finish()

    def _restore(self, index: int, saved: NodeCheckpoint) -> None:
        """Complete a node from a checkpoint without running it again."""
        record = self.records[index]
        record.attempts = saved.attempts
        record.metadata = {"restored": True}
        if saved.status == NodeStatus.SUCCEEDED.value:
            record.status = NodeStatus.SUCCEEDED
            record.output = saved.output
            self.scope.nodes[record.node_id] = saved.output
            self.context.node_outputs[record.node_id] = saved.output
            self._release(index, True)
        else:
            record.status = NodeStatus.FAILED
            record.error = saved.error
            record.error_kind = saved.error_kind
            self.errors.append(
                RunError(
                    saved.error or "node failed", saved.error_kind or "execution", record.node_id
                )
            )
            self._release(index, False)

    def _start(self, index: int, runner: int) -> None:
        """Run node ``runner``'s code for node ``index`` (they differ for a fallback)."""
        exceeded = self.shared.budget.add_execution()
        if exceeded is not None:
            self._over_budget(exceeded, self.compiled.nodes[index].id)
            return
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
        """Run one node to a NodeResult: cache, breaker, timeout, retries, error hooks.
        Never raises, except CancelledError."""
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
        shared.busy += 1
        if shared.park_after is not None:
            shared.parking_changed()
        if shared.debug:
            shared.current[event_id] = record.started_at
            shared.last_node = event_id
        if shared.sinks:
            shared.emit(EventType.NODE_STARTED, event_id, {"type": cn.spec.type})
        else:  # nobody listens: keep the sequence, skip building the payload
            shared.seq += 1
        try:
            try:
                config = cn.config.render(self.scope)
            except FlowcoreError as exc:
                return _failure(exc)
            ctx = NodeContext(cn.spec, config, node_input, self.scope, self)
            if shared.hook_pre_node:
                assert shared.executor is not None
                await shared.executor.pre_node_hook(cn.spec, ctx)
            if shared.callbacks:
                await _notify(shared.callbacks, "on_node_start", cn.spec, ctx)
            key = self._cache_key(cn, config, node_input) if shared.cache is not None else None
            if key is not None:
                assert shared.cache is not None
                hit = await shared.cache.get(key)
                if hit is not None:
                    record.attempts = 0
                    result = NodeResult(output=hit.value, metadata={"cache_hit": True})
                    await self._after(cn, result)
                    return result
            result = await self._attempts(cn, ctx, record, event_id, config)
            if not result.success:
                result = await self._handle_failure(cn, ctx, result)
            elif key is not None:
                assert shared.cache is not None
                ttl = cn.spec.cache.ttl if cn.spec.cache and cn.spec.cache.ttl else None
                await shared.cache.set(key, result.output, ttl or shared.config.cache_ttl)
            await self._after(cn, result)
            return result
        finally:
            shared.busy -= 1
            if shared.park_after is not None:
                shared.parking_changed()
            if shared.debug:
                shared.current.pop(event_id, None)

    async def _after(self, cn: CompiledNode, result: NodeResult) -> None:
        shared = self.shared
        if shared.hook_post_node:
            assert shared.executor is not None
            await shared.executor.post_node_hook(cn.spec, result)
        if shared.callbacks:
            await _notify(shared.callbacks, "on_node_end", cn.spec, result)

    def _cache_key(self, cn: CompiledNode, config: Any, node_input: Any) -> str | None:
        policy = cn.spec.cache
        if policy is None and not self.shared.config.enable_cache:
            return None
        if not cn.node.cacheable:
            return None
        if policy is None and not cn.node.cacheable_call(config):
            return None
        if policy is not None and policy.key is not None:
            rendered = compile_template(policy.key)
            text = rendered if isinstance(rendered, str) else rendered.render(self.scope)
            return f"{cn.spec.type}:key:{text}"
        # templates are resolved into `config` already; raw CEL fields (a transform's
        # outputs, a map's items) also read the input, vars and the nodes they name
        reads: dict[str, Any] = {"parents": node_input}
        if cn.has_expressions:
            scope = self.scope
            reads["input"] = scope.input
            reads["vars"] = scope.vars
            names = cn.expression_reads if cn.expression_reads is not None else scope.nodes
            reads["nodes"] = {name: scope.nodes.get(name) for name in names}
        return cache_key(cn.spec.type, config, reads)

    async def _attempts(
        self, cn: CompiledNode, ctx: NodeContext, record: NodeRun, event_id: str, config: Any
    ) -> NodeResult:
        shared = self.shared
        timeout = cn.spec.timeout or shared.config.node_timeout
        policy = self._retry_policy(cn)
        breaker = cn.spec.circuit_breaker or cn.node.default_circuit_breaker
        breakers = shared.breakers if breaker is not None else None
        breaker_key = ""
        if breakers is not None:
            assert breaker is not None
            breaker_key = breaker.key or cn.node.breaker_key(config)
        attempt = 0
        while True:
            attempt += 1
            ctx.attempt = attempt
            record.attempts = attempt
            if breakers is not None:
                assert breaker is not None
                try:
                    await breakers.acquire(breaker_key, breaker)
                except CircuitOpenError as exc:
                    result = _failure(exc)
                else:
                    result = await self._attempt(cn, ctx, timeout)
                    await breakers.record(breaker_key, breaker, result.success)
            else:
                result = await self._attempt(cn, ctx, timeout)
            if result.success or policy is None or result.error_kind == "budget":
                return result
            retries = (
                policy.max_retries if policy.max_retries is not None else shared.config.max_retries
            )
            if attempt > retries:
                return result
            kind = result.error_kind or "execution"
            if policy.retry_on is not None:
                if kind not in policy.retry_on:
                    return result
            elif kind in _NOT_RETRIED:
                return result  # the same call fails the same way; retrying only delays
            delay = _backoff(policy, shared.config.retry_delay, attempt)
            shared.emit(
                EventType.NODE_RETRY,
                event_id,
                {"attempt": attempt + 1, "delay": delay, "error": result.error, "kind": kind},
            )
            if delay > 0:
                await shared.clock.sleep(delay)

    async def _handle_failure(
        self, cn: CompiledNode, ctx: NodeContext, result: NodeResult
    ) -> NodeResult:
        """Give ``handle_error`` (subclass hook) and ``error_handler`` (config callback) a
        chance to recover: a returned NodeResult (or value) replaces the failure."""
        shared = self.shared
        handler = shared.config.error_handler
        if not shared.hook_handle_error and handler is None:
            return result
        error = result.exception or NodeExecutionError(result.error or "node failed")
        recovered: Any = None
        try:
            if shared.hook_handle_error:
                assert shared.executor is not None
                recovered = await shared.executor.handle_error(error, cn.spec, ctx)
            elif handler is not None:
                recovered = handler(error, cn.spec, ctx)
                if inspect.isawaitable(recovered):
                    recovered = await recovered
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if exc is error:
                return result
            return _failure(exc)
        if recovered is None:
            return result
        if isinstance(recovered, NodeResult):
            return recovered
        return NodeResult(output=recovered, metadata={"recovered": True})

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
        if result.success:
            result = self._check_output(result, cn.id)
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
                data: dict[str, Any] = {"output": result.output, "attempts": runner_record.attempts}
                if result.metadata and result.metadata.get("cache_hit"):
                    data["cached"] = True
                shared.emit(EventType.NODE_COMPLETED, self.path + runner_record.node_id, data)
                if runner != index:  # the rescued node completes too, through its fallback
                    shared.emit(
                        EventType.NODE_COMPLETED,
                        self.path + cn.id,
                        {**data, "fallback_from": runner_record.node_id},
                    )
            else:
                shared.seq += 1 if runner == index else 2
            if self.is_root and shared.checkpoints is not None:
                self._note_checkpoint(
                    cn.id,
                    NodeCheckpoint(
                        "succeeded",
                        result.output,
                        None,
                        None,
                        record.attempts,
                        record.started_at,
                        record.finished_at,
                    ),
                )
            self._release(index, True)
            self._maybe_checkpoint()
            return
        # failure
        error = clean_text(result.error or "node failed")
        kind = result.error_kind or "execution"
        runner_record.error = error
        runner_record.error_kind = kind
        shared.emit(
            EventType.NODE_FAILED,
            self.path + runner_record.node_id,
            {"error": error, "kind": kind, "attempts": runner_record.attempts},
        )
        if kind == "budget":  # the operator's bound: no fallback, continue or breakpoint
            record.status = NodeStatus.FAILED
            record.finished_at = now
            record.error = error
            record.error_kind = kind
            self._fail(RunError(error, kind, self.path + cn.id))
            return
        next_fallback = self.compiled.nodes[runner].fallback
        if next_fallback is not None and next_fallback != index and not self._stopping:
            # the fallback's output stands in for this node's downstream; a failing
            # fallback hands over to its own fallback (validation rules out loops)
            self._start(index, next_fallback)
            return
        record.status = NodeStatus.FAILED
        record.finished_at = now
        record.error = error
        record.error_kind = kind
        run_error = RunError(error, kind, self.path + cn.id)
        if shared.config.break_on_error and self.is_root:
            # stop here, resumably: the failed node runs again when the run is resumed
            self.breakpoint = run_error
            shared.pending[cn.id] = {"kind": "break", "error": error, "error_kind": kind}
            self._stop()
            return
        on_error = cn.spec.on_error or self._on_error
        if on_error == "continue":
            self.errors.append(run_error)
            if self.is_root and shared.checkpoints is not None:
                self._note_checkpoint(
                    cn.id,
                    NodeCheckpoint(
                        "failed",
                        None,
                        error,
                        kind,
                        record.attempts,
                        record.started_at,
                        record.finished_at,
                    ),
                )
            if self._max_errors is not None and len(self.errors) >= self._max_errors:
                self._fail(
                    RunError(f"{len(self.errors)} node errors reached max_errors", "max_errors")
                )
                return
            self._release(index, False)
            self._maybe_checkpoint()
            return
        self._fail(run_error)

    def _check_output(self, result: NodeResult, node_id: str) -> NodeResult:
        """``result``, or a failure if what it holds cannot be stored (kind ``output``) or
        crosses the run's output budgets (kind ``budget``, failing the run)."""
        shared = self.shared
        depth = shared.config.max_value_depth
        try:
            size = inspect_value(result.output, max_depth=depth)
            if result.variables:
                size += inspect_value(result.variables, max_depth=depth + 1)
        except ValueProblem as problem:
            where = f" at {problem.path}" if problem.path else ""
            return _failure(
                UnstorableValueError(f"the output cannot be stored{where}: {problem.reason}")
            )
        exceeded = shared.budget.add_output(size)
        if exceeded is not None:
            self._over_budget(exceeded, node_id)
            return _failure(exceeded)
        return result

    def _over_budget(self, exceeded: BudgetExceededError, node_id: str) -> None:
        """Fail this graph and the whole run: node ``node_id`` crossed a budget."""
        self._fail(RunError(str(exceeded), exceeded.kind, self.path + node_id))
        self.shared.over_budget(exceeded, self.path + node_id)

    # -------------------------------------------------------------------- checkpoints

    def _note_checkpoint(self, node_id: str, state: NodeCheckpoint) -> None:
        self._delta[node_id] = state
        self._since += 1

    def _maybe_checkpoint(self) -> None:
        """After a node's out-edges were released, so the frontier is up to date."""
        if self._since and self._since >= self.shared.config.checkpoint_interval:
            self.checkpoint("running")

    def checkpoint(self, status: str, error: RunError | None = None) -> None:
        """Queue an incremental checkpoint of the root graph (no-op when disabled)."""
        shared = self.shared
        if shared.checkpoints is None or not self.is_root:
            return
        shared.checkpoint_sequence += 1
        header = shared.checkpoint_header if shared.checkpoint_sequence == 1 else None
        if shared.fork_seed is not None:  # a fork's chain starts with all it inherited
            self._delta = {**shared.fork_seed, **self._delta}
            shared.fork_seed = None
        parent, shared.checkpoint_parent = shared.checkpoint_parent, None
        # the running nodes and the next queued ones: bounded by the parallelism, so a
        # record does not grow with a wide fan-out (resume recomputes the queue anyway)
        frontier = [self.records[index].node_id for index, _ in self._tasks.values()]
        limit = shared.max_parallel
        frontier += [self.records[i].node_id for n, i in enumerate(self._ready) if n < limit]
        record = CheckpointRecord(
            run_id=shared.run_id,
            sequence=shared.checkpoint_sequence,
            created_at=shared.clock.now(),
            event_seq=shared.seq,
            status=status,
            completed=self._delta,
            variables=dict(self.scope.vars),
            frontier=frontier,
            pending={k: dict(v) for k, v in shared.pending.items()},
            signals={name: list(kept) for name, kept in shared.signals.items() if kept},
            workflow_id=shared.workflow_id,
            definition=header["definition"] if header else None,
            input=header["input"] if header else None,
            error=error.to_dict() if error else None,
            parent=parent,
        )
        self._delta = {}
        self._since = 0
        shared.queue_checkpoint(record)

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
                self.error = RunError(clean_text(f"workflow output: {exc}"), "expression")
                return
            try:  # expressions can build what no node output holds (a NaN, depth)
                inspect_value(self.output, max_depth=self.shared.config.max_value_depth + 1)
            except ValueProblem as problem:
                self.output = None
                self.error = RunError(f"workflow output cannot be stored: {problem}", "output")
            return
        self.output = {
            self.records[i].node_id: self.records[i].output
            for i in compiled.leaves
            if self.records[i].status is NodeStatus.SUCCEEDED
        }

    # ----------------------------------------------- services offered to NodeContext

    def emit(self, type: EventType, node_id: str, data: dict[str, Any]) -> None:
        self.shared.emit(type, node_id, data)

    async def sleep(self, node_id: str, seconds: float) -> None:
        shared = self.shared
        if not self.is_root or shared.checkpoints is None:
            await shared.clock.sleep(seconds)
            return
        now = shared.clock.now()
        saved = shared.restored_pending.pop(node_id, None)
        if saved is not None and saved.get("kind") == "delay":
            wake_at = float(saved["wake_at"])  # resumed: sleep only what is left
        else:
            wake_at = now + seconds
        shared.pending[node_id] = {"kind": "delay", "wake_at": wake_at}
        self.checkpoint("running")
        shared.blocked[node_id] = wake_at
        shared.parking_changed()
        try:
            await shared.clock.sleep(max(wake_at - now, 0.0))
        except asyncio.CancelledError:
            if not self._stopping:  # a stopping run's last checkpoint keeps the wake time
                shared.pending.pop(node_id, None)
            raise
        finally:
            del shared.blocked[node_id]
            shared.parking_changed()
        shared.pending.pop(node_id, None)

    async def wait_for_signal(self, node_id: str, name: str, timeout: float | None) -> Any:
        shared = self.shared
        buffered = shared.signals.get(name)
        if buffered:
            return buffered.popleft()
        now = shared.clock.now()
        deadline = now + timeout if timeout is not None else None
        durable = self.is_root and shared.checkpoints is not None
        if durable:
            saved = shared.restored_pending.pop(node_id, None)
            if saved is not None and saved.get("kind") == "wait":
                # resumed (after parking or a crash): the first wait's deadline stands
                restored = saved.get("deadline")
                deadline = float(restored) if restored is not None else None
        if deadline is not None and deadline <= now:
            raise NodeTimeoutError(f"no signal {name!r} within {timeout or 0:g}s")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        shared.waiters.setdefault(name, deque()).append(future)
        index = self.compiled.by_id[node_id]
        self.records[index].status = NodeStatus.WAITING
        shared.waiting += 1
        if self.is_root:
            item: dict[str, Any] = {"kind": "wait", "signal": name}
            if deadline is not None:
                item["deadline"] = deadline
            shared.pending[node_id] = item
        if shared.waiting == 1:
            shared.status = RunStatus.WAITING
            shared.emit(EventType.RUN_WAITING, self.path + node_id, {"signal": name})
        if self.is_root:
            self.checkpoint("waiting")
        if durable:
            shared.blocked[node_id] = deadline
            shared.parking_changed()
        try:
            if deadline is None:
                return await future
            try:
                async with asyncio.timeout(deadline - now):
                    return await future
            except TimeoutError:
                raise NodeTimeoutError(f"no signal {name!r} within {timeout or 0:g}s") from None
        finally:
            # resumed only by a delivered signal, not by a timeout or a cancel
            delivered = future.done() and not future.cancelled()
            if not future.done():
                future.cancel()
            if durable:
                del shared.blocked[node_id]
                shared.parking_changed()
            self.records[index].status = NodeStatus.RUNNING
            if not shared.parked:  # a parked run's checkpoint keeps the wait pending
                shared.pending.pop(node_id, None)
            shared.waiting -= 1
            if shared.waiting == 0 and shared.status is RunStatus.WAITING:
                shared.status = RunStatus.RUNNING
                if delivered:
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
        exceeded = self.shared.budget.add_subrun()
        if exceeded is not None:
            self._over_budget(exceeded, ctx.node_id)
            raise exceeded
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
#: error kinds not retried unless a policy's ``retry_on`` names them
_NOT_RETRIED = frozenset({"circuit_open", "config", "forbidden_target", "input", "output"})


def _backoff(policy: RetryPolicy, default_delay: float, attempt: int) -> float:
    base = policy.delay if policy.delay is not None else default_delay
    delay = base * policy.backoff ** (attempt - 1)
    if policy.jitter:
        delay *= 1 + random.uniform(-policy.jitter, policy.jitter)
    return max(min(delay, policy.max_delay), 0.0)


def _failure(exc: BaseException) -> NodeResult:
    kind = str(getattr(exc, "kind", None) or "execution")[:64]
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, FlowcoreError):
        message = f"{type(exc).__name__}: {message}"
    return NodeResult(success=False, error=clean_text(message), error_kind=kind, exception=exc)


async def _notify(callbacks: list[Any], method: str, *args: Any) -> None:
    """Call ``method`` on every callback object that has it (sync or async)."""
    for callback in callbacks:
        fn = getattr(callback, method, None)
        if fn is not None:
            outcome = fn(*args)
            if inspect.isawaitable(outcome):
                await outcome
