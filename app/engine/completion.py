"""``Completion``: what a finished node leaves behind, and the checkpoints that keep it.

A success stores the node's output (once it is known to be storable and within the
run's output budget), merges its variables and releases its out-edges; a failure hands
over to the node's fallback, stops at a breakpoint (``break_on_error``), is recorded and
passed over (``on_error: continue``, up to ``max_errors``) or fails the graph. Every
``checkpoint_interval`` completions the root graph queues an incremental checkpoint
record with the nodes finished since the last one. When the root graph stops,
``settle`` turns it into the run's result, terminal event and last record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from app.engine.attempts import NodeAttempts, failure
from app.engine.checkpoint import NodeCheckpoint
from app.engine.events import EventType
from app.engine.node import NodeResult
from app.engine.result import NodeStatus, RunError, RunResult, RunStatus
from app.engine.values import UnstorableValueError, ValueProblem, clean_text, inspect_value

__all__ = ["Completion"]

logger = logging.getLogger("flowcore.engine")


class Completion(NodeAttempts):
    """A graph run that books its nodes' results and checkpoints its progress."""

    async def finish(self, result: RunResult) -> None:
        """``settle`` the root graph's ``result`` and write its last checkpoints; a run
        whose state could not be stored did not durably succeed: it fails."""
        self.settle(result)
        shared = self.shared
        await shared.finish_checkpoints()
        error = shared.checkpoint_error
        if error is None:
            return
        result.status = RunStatus.FAILED
        result.output = None
        # the store's own words stay in the log: they may quote the data and name its
        # internals, neither of which belongs in a run's error
        logger.warning("run %s: checkpoints could not be written", shared.run_id, exc_info=error)
        result.error = RunError(
            "checkpoints could not be written: the checkpoint store refused the run's "
            f"state ({type(error).__name__})",
            "checkpoint",
        )

    def settle(self, result: RunResult) -> None:
        """Fill in the root graph's ``result`` once it stopped: its status (parked,
        breakpoint, failed, cancelled or succeeded), the terminal event and the last
        checkpoint record."""
        shared = self.shared
        result.finished_at = time.time()
        result.node_results = {record.node_id: record for record in self.records}
        result.errors = self.errors
        result.variables = self.scope.vars
        if shared.parked and self.error is None and not self.cancelled:
            result.status = RunStatus.WAITING
            result.parked = True
            result.wake_at = shared.wake_at
            self.checkpoint("waiting")
        elif self.breakpoint is not None:
            result.status = RunStatus.WAITING
            result.error = self.breakpoint
            shared.emit(
                EventType.RUN_WAITING,
                self.breakpoint.node_id,
                {"reason": "break_on_error", "error": self.breakpoint.to_dict()},
            )
            self.checkpoint("waiting", self.breakpoint)
        elif self.error is not None:
            result.status = RunStatus.FAILED
            result.error = self.error
            shared.emit(EventType.RUN_FAILED, None, {"error": self.error.to_dict()})
            self.checkpoint("failed", self.error)
        elif self.cancelled:
            result.status = RunStatus.CANCELLED
            result.error = RunError("the run was cancelled", "cancelled")
            shared.emit(EventType.RUN_CANCELLED, None, {})
            self.checkpoint("cancelled", result.error)
        else:
            result.status = RunStatus.SUCCEEDED
            result.output = self.output
            shared.emit(EventType.RUN_SUCCEEDED, None, {"output": self.output})
            self.checkpoint("succeeded")
        if result.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            for record in self.records:
                if record.status in (NodeStatus.PENDING, NodeStatus.QUEUED):
                    record.status = NodeStatus.CANCELLED
        shared.status = result.status
        self.context.status = result.status.value
        result.events = shared.seq

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
            self.fail(RunError(error, kind, self.path + cn.id))
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
                self.fail(
                    RunError(f"{len(self.errors)} node errors reached max_errors", "max_errors")
                )
                return
            self._release(index, False)
            self._maybe_checkpoint()
            return
        self.fail(run_error)

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
            return failure(
                UnstorableValueError(f"the output cannot be stored{where}: {problem.reason}")
            )
        exceeded = shared.budget.add_output(size)
        if exceeded is not None:
            self.over_budget(exceeded, node_id)
            return failure(exceeded)
        return result

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
        writer = shared.checkpoints
        if writer is None or not self.is_root:
            return
        # the running nodes and the next queued ones: bounded by the parallelism, so a
        # record does not grow with a wide fan-out (resume recomputes the queue anyway)
        frontier = [self.records[index].node_id for index, _ in self._tasks.values()]
        limit = shared.max_parallel
        frontier += [self.records[i].node_id for n, i in enumerate(self._ready) if n < limit]
        writer.write(
            status,
            self._delta,
            dict(self.scope.vars),
            frontier,
            shared.seq,
            shared.pending,
            shared.signals,
            error,
        )
        self._delta = {}
        self._since = 0
