"""Runs as the service offers them: start (idempotent), wait for an outcome, read, list,
cancel, signal, trace, state, checkpoints, resume and fork, the logged events."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.engine import (
    LIMIT_FIELDS,
    PROCESS_FIELDS,
    Checkpoint,
    ExecutionConfig,
    InputValidationError,
    ValidationIssue,
    check_input,
    checkpoint_at,
    latest_of,
    parse_checkpoint_id,
)
from app.runtime.access import AuditTrail, Caller, Role
from app.runtime.audit import RUN_CANCELLED, RUN_FORKED, RUN_RESUMED, RUN_SIGNALLED
from app.runtime.definitions import DefinitionCache
from app.runtime.errors import IdempotencyConflict, InvalidRunConfig, NotFound, TooManyRuns
from app.runtime.records import (
    CheckpointSummary,
    EventRecord,
    NodeTiming,
    Page,
    RunRecord,
    RunState,
    RunTrace,
)
from app.store.lifecycle import TERMINAL
from app.store.notifications import Notification, RunFinished
from app.store.records import StoredRun
from app.store.repository import Store

#: knobs the service decides for every run: a run is always checkpointed (that is what
#: makes it durable), code cannot travel in a request, and a run shares the replica's
#: event loop (`flowcore serve` runs on uvloop)
SERVICE_FIELDS = frozenset({"error_handler", "enable_checkpoints", "event_loop_policy"})
#: the largest sequence number a checkpoint id may name (its column is 32-bit)
MAX_SEQUENCE = 2**31 - 1
#: events read per query when a whole log is needed (a trace)
LOG_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Started:
    """A run a start request queued, or found: ``replayed`` when an Idempotency-Key
    returned an earlier one; ``finished`` when it ended within the request's wait."""

    run: RunRecord
    replayed: bool
    finished: bool = False


def request_hash(
    workflow_id: str, version: int | None, input: Any, config: dict[str, Any] | None
) -> str:
    """What identifies a start request for its Idempotency-Key."""
    body = {"workflow_id": workflow_id, "version": version, "input": input, "config": config}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_config(overrides: dict[str, Any] | None) -> None:
    """Run config overrides: known knobs only, not the operator's, valid values."""
    if not overrides:
        return
    issues = []
    for key in overrides:
        if key in LIMIT_FIELDS or key in PROCESS_FIELDS or key in SERVICE_FIELDS:
            issues.append(ValidationIssue(f"{key} cannot be set per run", field=f"config.{key}"))
        elif key not in ExecutionConfig.model_fields:
            issues.append(ValidationIssue(f"unknown execution knob {key!r}", field=f"config.{key}"))
    if not issues:
        try:
            ExecutionConfig.model_validate(overrides)
        except ValueError as exc:
            issues.append(ValidationIssue(str(exc).splitlines()[0], field="config"))
    if issues:
        raise InvalidRunConfig(issues)


class RunService:
    """Every operation on runs the API offers. Each takes the caller first and checks it
    (``app.runtime.access``): a run of another namespace is NotFound."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        definitions: DefinitionCache,
        audit: AuditTrail | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.definitions = definitions
        self.audit = audit

    # ---------------------------------------------------------------------- starting

    async def start(
        self,
        caller: Caller,
        workflow_id: str,
        version: int | None,
        input: Any,
        config: dict[str, Any] | None,
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> Started:
        """Queue a run of a workflow version. The same ``idempotency_key`` with the same
        request returns the same run; with another request it is IdempotencyConflict
        (which does not name the other request's run). With ``wait``, wait up to that
        many seconds (at most ``max_wait_seconds``) for it to finish or wait."""
        caller.need(Role.WRITER)
        namespace = caller.namespace
        digest = request_hash(workflow_id, version, input, config)
        if idempotency_key is not None:
            existing = await self.store.run_by_idempotency_key(idempotency_key, namespace=namespace)
            if existing is not None:
                if existing.request_hash != digest:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used for a different request"
                    )
                return await self._waited(existing, True, wait)
        row = await self.store.get_workflow(workflow_id, version, namespace=namespace)
        if row is None or row.archived:
            where = f" version {version}" if version else ""
            raise NotFound(f"no workflow {workflow_id!r}{where}")
        definition = self.definitions.get(row)
        check_config(config)
        if definition.input_schema is not None:
            problems = check_input(definition.input_schema, input)
            if problems:
                raise InputValidationError(problems)
        await self._room_for_one(namespace)
        run, created = await self.store.create_run(
            uuid.uuid4().hex, row, input, config, idempotency_key, digest
        )
        return await self._waited(run, not created, wait)

    async def _room_for_one(self, namespace: str) -> None:
        """TooManyRuns when ``namespace`` has its ``namespace_max_active_runs`` queued or
        running already."""
        limit = self.settings.namespace_max_active_runs
        if limit and await self.store.count_active(namespace) >= limit:
            raise TooManyRuns(
                f"namespace {namespace!r} has {limit} runs queued or running "
                "(FLOWCORE_NAMESPACE_MAX_ACTIVE_RUNS); start more when some finish"
            )

    async def _waited(self, run: StoredRun, replayed: bool, wait: float | None) -> Started:
        if wait:
            seconds = min(wait, self.settings.max_wait_seconds)
            finished = await self.wait_for_outcome(run.id, seconds)
            if finished is not None:
                return Started(finished, replayed, finished.status in TERMINAL)
        return Started(RunRecord.of(run), replayed)

    async def wait_for_outcome(self, run_id: str, seconds: float) -> RunRecord | None:
        """Wait up to ``seconds`` for a run to finish or wait (woken by notifications,
        with a slow poll as the fallback); the run, or None if it is gone."""
        done = asyncio.Event()

        def listener(notification: Notification) -> None:
            if isinstance(notification, RunFinished) and notification.run_id == run_id:
                done.set()

        self.store.notifier.subscribe(listener)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while True:
                run = await self.store.get_run(run_id)
                if run is None:
                    return None
                if run.status in TERMINAL or run.status == "waiting":
                    return RunRecord.of(run)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return RunRecord.of(run)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), min(remaining, 0.5))
        finally:
            self.store.notifier.unsubscribe(listener)

    # ---------------------------------------------------------------------- reading

    async def get(self, caller: Caller, run_id: str) -> RunRecord:
        return RunRecord.of(await self._row(caller, run_id))

    async def _row(self, caller: Caller, run_id: str, role: Role = Role.READER) -> StoredRun:
        """The run, if the caller's namespace holds it (NotFound otherwise, whatever
        the caller's role); then Forbidden unless the role allows ``role``."""
        run = await self.store.get_run(run_id)
        if run is None or not caller.sees(run.namespace):
            raise NotFound(f"no run {run_id!r}")
        caller.need(role)
        return run

    async def listing(
        self,
        caller: Caller,
        *,
        workflow_id: str | None,
        status: str | None,
        cursor: str | None,
        limit: int,
    ) -> Page[RunRecord]:
        """The caller's namespace's runs, newest first, filtered by workflow and status."""
        caller.need(Role.READER)
        page = await self.store.list_runs(
            namespace=caller.namespace,
            workflow_id=workflow_id,
            status=status,
            cursor=cursor,
            limit=limit,
        )
        return Page([RunRecord.of(row) for row in page.items], page.next_cursor)

    async def events(
        self, caller: Caller, run_id: str, after: int, limit: int
    ) -> Page[EventRecord]:
        """One page of the logged events after sequence ``after``."""
        await self._row(caller, run_id)
        rows = await self.store.events_after(run_id, after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, str(rows[-1].seq) if more else None)

    async def trace(self, caller: Caller, run_id: str) -> RunTrace:
        """Duration and per-node timings, attempts and errors, from the node ledger."""
        run = RunRecord.of(await self._row(caller, run_id))
        timings = {
            r.node_id: NodeTiming(
                r.status,
                r.attempts,
                (r.finished_at - r.started_at) * 1000.0
                if r.finished_at is not None and r.started_at is not None
                else None,
                r.error,
                r.error_kind,
            )
            for r in await self.store.node_results(run_id)
        }
        # a node that failed is not in the ledger (it runs again on resume): the log has it
        started: dict[str, float] = {}
        for event in await self._whole_log(run_id):
            node_id = event.node_id
            if node_id is None or (node_id in timings and timings[node_id].status != "failed"):
                continue
            if event.type == "node.started":
                started.setdefault(node_id, event.created_at)
            elif event.type == "node.failed":
                began = started.pop(node_id, None)
                timings[node_id] = NodeTiming(
                    "failed",
                    int(event.data.get("attempts", 1)),
                    (event.created_at - began) * 1000.0 if began is not None else None,
                    event.data.get("error"),
                    event.data.get("kind"),
                )
        return RunTrace(run.id, run.status, run.duration_ms, timings)

    async def _whole_log(self, run_id: str) -> list[Any]:
        """A run's whole log, a page at a time (its length is bounded by the run's
        budgets, not by a page size)."""
        events: list[Any] = []
        while True:
            after = events[-1].seq if events else 0
            page = await self.store.events_after(run_id, after, limit=LOG_PAGE)
            events += page
            if len(page) < LOG_PAGE:
                return events

    async def state(self, caller: Caller, run_id: str) -> RunState:
        """The run's state at its latest checkpoint: variables, outputs, pending waits."""
        run = RunRecord.of(await self._row(caller, run_id))
        records = await self.store.checkpoint_records(run_id)
        if not records:
            return RunState(run.id, run.status, run.current_nodes, {}, {}, {}, None)
        checkpoint = latest_of(records)
        assert checkpoint is not None
        return RunState(
            run.id,
            run.status,
            run.current_nodes or list(checkpoint.frontier),
            checkpoint.variables,
            {k: v.output for k, v in checkpoint.completed.items() if v.status == "succeeded"},
            checkpoint.pending,
            checkpoint.id,
        )

    # ---------------------------------------------------------------------- control

    async def cancel(self, caller: Caller, run_id: str) -> RunRecord:
        """A run no replica holds is cancelled at once; a running one's replica cancels
        its nodes and checkpoints."""
        await self._row(caller, run_id, Role.WRITER)
        cancelled = RunRecord.of(await self.store.request_cancel(run_id))
        await self._audit(caller, RUN_CANCELLED, run_id)
        return cancelled

    async def signal(self, caller: Caller, run_id: str, name: str, payload: Any) -> RunRecord:
        """Deliver a signal to the run's ``wait`` node (kept until that node waits)."""
        await self._row(caller, run_id, Role.WRITER)
        signalled = RunRecord.of(await self.store.add_signal(run_id, name, payload))
        await self._audit(caller, RUN_SIGNALLED, run_id, {"signal": name})
        return signalled

    # ------------------------------------------------------------------ checkpoints

    async def checkpoints(self, caller: Caller, run_id: str) -> list[CheckpointSummary]:
        await self._row(caller, run_id)
        return [CheckpointSummary.of(row) for row in await self.store.checkpoints(run_id)]

    async def _checkpoint(
        self, caller: Caller, checkpoint_id: str, role: Role = Role.READER
    ) -> tuple[StoredRun, Checkpoint]:
        run_id, sequence = parse_checkpoint_id(checkpoint_id)
        run = await self._row(caller, run_id, role)
        if sequence > MAX_SEQUENCE:
            raise NotFound(f"no checkpoint {checkpoint_id!r}")
        records = await self.store.checkpoint_records(run_id)
        return run, checkpoint_at(records, sequence, checkpoint_id)

    async def checkpoint(
        self, caller: Caller, checkpoint_id: str
    ) -> tuple[CheckpointSummary, dict[str, Any]]:
        """A checkpoint and the run's full state at that point."""
        _, checkpoint = await self._checkpoint(caller, checkpoint_id)
        row = await self.store.checkpoint(checkpoint.run_id, checkpoint.sequence)
        if row is None:
            raise NotFound(f"no checkpoint {checkpoint_id!r}")
        state = checkpoint.to_dict()
        state.pop("definition", None)
        return CheckpointSummary.of(row), state

    async def resume(
        self,
        caller: Caller,
        checkpoint_id: str,
        *,
        fork: bool = False,
        input: Any = None,
        vars: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Resume the run from this checkpoint (failed, cancelled, waiting or
        interrupted runs; one executing elsewhere stops there first), or with ``fork``
        start a new run from it, optionally with a new input and variables."""
        run, checkpoint = await self._checkpoint(caller, checkpoint_id, Role.WRITER)
        run_id = run.id
        if not fork:
            resumed = RunRecord.of(await self.store.queue_resume(run_id, checkpoint_id, vars))
            await self._audit(caller, RUN_RESUMED, run_id, {"checkpoint_id": checkpoint_id})
            return resumed
        await self._room_for_one(run.namespace)
        workflow = await self.store.get_workflow(
            run.workflow_id, run.workflow_version, include_archived=True, namespace=run.namespace
        )
        if workflow is None:
            raise NotFound(f"workflow {run.workflow_id!r} version {run.workflow_version} is gone")
        forked, _ = await self.store.create_run(
            uuid.uuid4().hex,
            workflow,
            input if input is not None else checkpoint.input,
            run.config,
            None,
            None,
            fork_of=checkpoint_id,
            vars_patch=vars,
        )
        await self._audit(caller, RUN_FORKED, forked.id, {"checkpoint_id": checkpoint_id})
        return RunRecord.of(forked)

    async def _audit(
        self, caller: Caller, action: str, target: str, detail: dict[str, Any] | None = None
    ) -> None:
        if self.audit is not None:
            await self.audit.record(caller, action, f"run:{target}", detail)
