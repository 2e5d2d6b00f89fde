"""``RunHandle``: one graph run, whole, and what its nodes may call while they run.

A graph run is built in layers, one job each, every layer a subclass of the one below:

==============================  =========================================================
``frontier.Frontier``           the node records, the ready queue, the running tasks;
                                readiness, skipping, branching, the graph's output
``attempts.NodeAttempts``       one node's execution: hooks, cache, breaker, timeout,
                                retries, error hooks
``completion.Completion``       booking a node's result: outputs, fallbacks, on_error,
                                breakpoints, incremental checkpoints
``RunHandle`` (here)            the ``NodeRuntime`` nodes see: events, durable sleeps,
                                signals, body runs and sub-workflows
==============================  =========================================================

The run's shared state is ``shared.RunShared``; its checkpoint records are written by
``checkpointing.CheckpointWriter``; the executor drives the root ``RunHandle``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from app.engine.completion import Completion
from app.engine.config import ExecutionConfig
from app.engine.dsl import WorkflowDefinition
from app.engine.errors import NodeExecutionError, NodeTimeoutError
from app.engine.events import EventType
from app.engine.expressions import Scope
from app.engine.graph import CompiledWorkflow, compile_workflow
from app.engine.memory import MemoryStore
from app.engine.node import WorkflowContext
from app.engine.result import NodeStatus, RunStatus
from app.engine.runtime import NodeRuntime
from app.engine.secrets import SecretResolver

__all__ = ["RunHandle"]


class RunHandle(Completion):
    """One execution of one compiled graph: the root run, or a body run inside a node.
    It is the ``NodeRuntime`` of its nodes."""

    @property
    def runtime(self) -> NodeRuntime:
        return self

    @property
    def config(self) -> ExecutionConfig:
        return self.shared.config

    @property
    def memory_store(self) -> MemoryStore | None:
        return self.shared.memory_store

    @property
    def secrets(self) -> SecretResolver | None:
        return self.shared.secrets

    def emit(self, type: EventType, node_id: str, data: dict[str, Any]) -> None:
        self.shared.emit(type, self.path + node_id, data)

    def take_workers(self, wanted: int) -> int:
        return self.shared.take_workers(wanted)

    def give_workers(self, count: int) -> None:
        self.shared.give_workers(count)

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
        node_id: str,
        scope: Scope,
        body: WorkflowDefinition,
        input: Any,
        extra: Mapping[str, Any] | None,
        label: str,
    ) -> Any:
        child_scope = scope.child(input, extra)
        return await self._run_child(node_id, compile_workflow(body), child_scope, label)

    async def run_workflow(
        self, node_id: str, workflow_id: str, version: int | None, input: Any
    ) -> Any:
        resolver = self.shared.resolver
        if resolver is None:
            raise NodeExecutionError("no workflow resolver is configured for subworkflows")
        exceeded = self.shared.budget.add_subrun()
        if exceeded is not None:
            self.over_budget(exceeded, node_id)
            raise exceeded
        definition = await resolver.get_workflow(workflow_id, version)
        scope = Scope(input, dict(definition.vars), {}, self.scope.run)
        return await self._run_child(node_id, compile_workflow(definition), scope, workflow_id)

    async def _run_child(
        self, node_id: str, compiled: CompiledWorkflow, scope: Scope, label: str
    ) -> Any:
        depth = self.depth + 1
        if depth >= self.shared.config.max_nesting_depth:
            limit = self.shared.config.max_nesting_depth
            raise NodeExecutionError(f"body runs nest deeper than max_nesting_depth={limit}")
        context = WorkflowContext(compiled.definition.id, self.run_id, scope.input, scope.vars)
        context.memory = self.context.memory
        child = RunHandle(
            self.shared, compiled, scope, context, f"{self.path}{node_id}[{label}]/", depth
        )
        await child.run()
        if child.error is not None:
            raise NodeExecutionError(f"body {label!r} failed: {child.error}")
        return child.output
