"""``Frontier``: one graph run's nodes and which of them run next (the ready frontier).

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

What happens to one node is the business of the classes built on this one:
``attempts.NodeAttempts`` runs it (``_execute``), ``completion.Completion`` books its
result (``_complete``) or restores it from a checkpoint (``_restore``), and
``scheduler.RunHandle`` adds what nodes may call while they run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from app.engine.budget import BudgetExceededError
from app.engine.checkpoint import NodeCheckpoint
from app.engine.errors import FlowcoreError
from app.engine.events import EventType
from app.engine.expressions import Scope
from app.engine.graph import CompiledNode, CompiledWorkflow
from app.engine.node import NodeResult, WorkflowContext
from app.engine.result import NodeRun, NodeStatus, RunError
from app.engine.shared import RunShared
from app.engine.values import ValueProblem, clean_text, inspect_value

__all__ = ["Frontier"]


class Frontier:
    """One execution of one compiled graph (the root run, or a body run inside a node):
    its node records, the ready queue and the running tasks."""

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
        #: the nodes finished since the last checkpoint record, and how many completions
        #: that was (kept by ``completion.Completion``)
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
            self.over_budget(exceeded, self.compiled.nodes[index].id)
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

    async def _execute(self, cn: CompiledNode, record: NodeRun, for_index: int) -> NodeResult:
        """Run node ``cn`` (on behalf of node ``for_index``) to a NodeResult
        (``attempts.NodeAttempts``)."""
        raise NotImplementedError

    def _complete(self, index: int, runner: int, result: NodeResult) -> None:
        """Book ``result`` of node ``runner`` run for node ``index``
        (``completion.Completion``)."""
        raise NotImplementedError

    def fail(self, error: RunError) -> None:
        """End this graph with ``error`` (the first one stands): its nodes are cancelled."""
        if self.error is None:
            self.error = error
        self._stop()

    def over_budget(self, exceeded: BudgetExceededError, node_id: str) -> None:
        """Fail this graph and the whole run: node ``node_id`` crossed a budget."""
        self.fail(RunError(str(exceeded), exceeded.kind, self.path + node_id))
        self.shared.over_budget(exceeded, self.path + node_id)

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
                self.fail(
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
