"""The dispatcher every replica runs: it claims queued runs (and runs whose lease
expired, and parked runs that are due), executes them on the engine with a durable
journal, keeps their leases alive, delivers cancellations and signals, and gives its
runs back on shutdown.

A run that waits on nothing but top-level delays and signals *parks*: the engine
checkpoints it and returns, the store keeps it ``waiting`` with no owner and a
``wake_at``, and it costs this replica nothing until it is due or a signal comes; then
any replica claims it and it continues from that checkpoint.

Idle dispatchers are woken by notifications — Postgres ``LISTEN/NOTIFY`` across
replicas, in-process callbacks on SQLite — and otherwise poll every ``poll_seconds``
(sooner when a parked run is due before that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from app.bus import EventBus
from app.cache import MeteredBreakers, ServiceCache
from app.config import Settings
from app.engine import (
    Checkpoint,
    CircuitBreakerStore,
    EventSink,
    FlowcoreError,
    RunResult,
    WorkflowDefinition,
    WorkflowExecutor,
    WorkflowNotFoundError,
    checkpoint_at,
    clean_text,
)
from app.observability import metrics
from app.runtime.definitions import DefinitionCache, StoreWorkflowResolver
from app.runtime.journal import RunJournal
from app.runtime.memory import DurableMemoryStore
from app.runtime.scoped import NamespaceBreakers, scoped_workflow
from app.runtime.secrets import MaskingCache, MaskingMemoryStore, SecretService
from app.store.errors import LeaseLost
from app.store.notifications import (
    RELEASED,
    KeyRevoked,
    Notification,
    RunControl,
    RunFinished,
    RunQueued,
)
from app.store.records import StoredRun
from app.store.repository import Lease, Store

logger = logging.getLogger("flowcore.runtime")


#: how many of the runs executed here the dispatcher remembers (``_recent``)
RECENT_RUNS = 4096


@dataclass(slots=True)
class ActiveRun:
    lease: Lease
    journal: RunJournal
    executor: WorkflowExecutor
    task: asyncio.Task[None] | None = None
    released: bool = False
    #: the engine has returned: signals are no longer delivered to this execution
    ended: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Dispatcher:
    """Claims and executes runs for one replica."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        bus: EventBus,
        definitions: DefinitionCache | None = None,
        *,
        cache: ServiceCache | None = None,
        breakers: CircuitBreakerStore | None = None,
        secrets: SecretService | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.owner = settings.replica_id
        self.config = settings.execution_config()
        self.definitions = definitions or DefinitionCache(self.config)
        # shared by every run of this replica (Redis-backed ones when configured)
        self.cache = cache or ServiceCache(None, self.config.cache_size)
        self.breakers = breakers or MeteredBreakers()
        #: where each run's ``{{ secrets.NAME }}`` come from (None: runs have no secrets)
        self.secrets = secrets
        self.active: dict[str, ActiveRun] = {}
        #: (namespace, workflow id, version) -> its compiled definition (``_definition``)
        self._compiled: dict[tuple[str, str, int], WorkflowDefinition] = {}
        #: the claim loop looks again when woken (``_wake``) with a reason: runs announced
        #: queued since its last claim (``_queued``), or anything else that may have made
        #: a run claimable (``_look``: a poll, a slot freed, runs released elsewhere)
        self._wake = asyncio.Event()
        self._queued: set[str] = set()
        self._look = True
        #: runs executed here lately: their notifications' echoes are no reason to look
        #: (an echo may come after the run already ended here); see ``_on_notification``
        self._recent: dict[str, None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        #: when the first parked run is due, as last learned (None: no timer known)
        self._next_wake: float | None = None
        self._wake_checked = 0.0
        store.notifier.subscribe(self._on_notification)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.store.postgres and not await self.store.listen():
            logger.warning("LISTEN unavailable; the dispatcher falls back to polling")
        self._tasks = [
            loop.create_task(self._claim_loop(), name="flowcore-claim"),
            loop.create_task(self._heartbeat_loop(), name="flowcore-heartbeat"),
        ]
        self._poke()

    async def stop(self) -> None:
        """Stop claiming, stop local runs without recording an outcome, and give them
        back to the queue so another replica resumes them at once."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        runs = list(self.active.values())
        for run in runs:
            run.released = True
            run.journal.detach()
        await self._release([run.lease.run_id for run in runs])
        for run in runs:
            if run.task is not None:
                run.task.cancel()
        for run in runs:
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task
        await self.store.unlisten()
        self.store.notifier.unsubscribe(self._on_notification)

    async def _release(self, run_ids: list[str]) -> None:
        if run_ids:
            with contextlib.suppress(Exception):
                await self.store.release_runs(self.owner, run_ids)

    # -------------------------------------------------------------- notifications

    def _on_notification(self, notification: Notification) -> None:
        if isinstance(notification, KeyRevoked):
            return  # the key cache's
        run_id = notification.run_id
        if isinstance(notification, RunControl):
            if run_id in self.active:
                asyncio.get_running_loop().create_task(self._control(run_id))
            else:  # resumed or signalled after it left: its next RunQueued is news
                self._recent.pop(run_id, None)
        elif isinstance(notification, RunQueued) and run_id != RELEASED:
            # on Postgres it comes twice (from this process, then back over LISTEN),
            # often while the claim that takes the run is on the wire, or after the run
            # even ended here: a claim that took it settles both (see ``_claim_loop``)
            if run_id not in self._recent:
                self._queued.add(run_id)
                self._wake.set()
        elif isinstance(notification, RunFinished) and (
            run_id in self.active or run_id in self._recent
        ):
            pass  # one of ours: its slot frees when its execution ends, which looks
        else:  # runs released, or a slot may have freed up elsewhere: cheap to look
            self._poke()

    def _poke(self) -> None:
        """Make the claim loop look for runs to claim now."""
        self._look = True
        self._wake.set()

    async def _control(self, run_id: str) -> None:
        """A run of this replica was signalled, cancelled or resumed elsewhere."""
        run = self.active.get(run_id)
        if run is None:
            return
        current = await self.store.get_run(run_id)
        if current is None or (current.owner, current.epoch) != (run.lease.owner, run.lease.epoch):
            # resumed in place (the epoch moved on): this execution stops now, not
            # when its current node ends or its next heartbeat finds out
            if self.active.get(run_id) is run:
                run.journal.detach()
                self._stop_run(run)
            return
        await self._deliver_signals([run_id])
        if current.cancel_requested:
            with contextlib.suppress(FlowcoreError):
                run.executor.cancel(run_id)

    async def _deliver_signals(self, run_ids: list[str]) -> None:
        """Hand the stored signals of these runs to their executions. A signal an
        execution no longer takes (it parked meanwhile) goes back to the store, which
        wakes the parked run for it."""
        open_ids = [i for i in run_ids if (r := self.active.get(i)) is not None and not r.ended]
        if not open_ids:
            return
        returned: dict[str, list[int]] = {}
        for signal in await self.store.take_signals(open_ids):
            run = self.active.get(signal.run_id)
            taken = (
                run is not None
                and not run.ended
                and run.executor.signal(signal.run_id, signal.name, signal.payload, early=True)
            )
            if not taken:
                returned.setdefault(signal.run_id, []).append(signal.id)
        for run_id, ids in returned.items():
            await self.store.return_signals(run_id, ids)

    # ------------------------------------------------------------------- claiming

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._queued.difference_update(self.active)  # claimed here meanwhile
            free = self.settings.max_concurrent_runs - len(self.active)
            claimed: list[StoredRun] = []
            if free > 0 and (self._look or self._queued):
                self._look = False
                self._queued.clear()
                try:
                    claimed = await self.store.claim_runs(
                        self.owner, self.settings.lease_seconds, free
                    )
                except Exception:
                    logger.exception("claiming runs failed")
            for run in claimed:
                self._start(run)
            if claimed and len(claimed) == free:
                self._look = True  # there may be more
                continue
            idle = await self._idle_seconds()
            try:
                await asyncio.wait_for(self._wake.wait(), idle)
            except TimeoutError:
                self._look = True  # the poll: expired leases and due parked runs say nothing

    async def _idle_seconds(self) -> float:
        """How long to wait for a wake-up: ``poll_seconds``, or less when a parked run
        is due sooner (parked runs of other replicas are learned once per poll)."""
        loop = asyncio.get_running_loop()
        poll = self.settings.poll_seconds
        if loop.time() - self._wake_checked >= poll:
            self._wake_checked = loop.time()
            try:
                self._next_wake = await self.store.next_wake_at()
            except Exception:
                logger.exception("reading the next wake-up failed")
        if self._next_wake is None:
            return poll
        due = self._next_wake - time.time()
        if due <= 0:
            self._next_wake = None  # claimed now; the next one is read again
            return 0.0
        return min(poll, due)

    def _parked_until(self, wake_at: float | None) -> None:
        if wake_at is not None and (self._next_wake is None or wake_at < self._next_wake):
            self._next_wake = wake_at
            self._wake.set()

    def _start(self, run: StoredRun) -> None:
        self._recent[run.id] = None
        if len(self._recent) > RECENT_RUNS:
            del self._recent[next(iter(self._recent))]  # the oldest
        previous = self.active.get(run.id)
        if previous is not None:
            # an older execution of this run (resumed in place, or its lease expired
            # while this replica stalled) is still here: it stops before this one starts
            previous.journal.detach()
            self._stop_run(previous)
        lease = Lease(run.id, self.owner, run.epoch)
        # this execution's secrets (its namespace's, decrypted when a node needs them),
        # masked in everything it writes out: the journal, the outcome, the cache, memory
        secrets = self.secrets.for_run(run.namespace) if self.secrets is not None else None
        cache = self.cache.for_workflow(scoped_workflow(run.namespace, run.workflow_id))
        # the run's namespace's conversations, in the database: every replica's
        memory = DurableMemoryStore(self.store, run.namespace)
        executor = WorkflowExecutor(
            self.config,
            workflows=StoreWorkflowResolver(self.store, self.definitions, run.namespace),
            cache=cache if secrets is None else MaskingCache(cache, secrets.masking),
            circuit_breakers=NamespaceBreakers(self.breakers, run.namespace),
            memory_store=memory if secrets is None else MaskingMemoryStore(memory, secrets.masking),
            park_after=self.settings.park_after_seconds,
            secrets=secrets,
        )
        journal = RunJournal(
            self.store,
            lease,
            self.bus,
            flush_seconds=self.settings.event_flush_seconds,
            commit_window=self.settings.commit_window_seconds,
            masking=secrets.masking if secrets is not None else None,
        )
        executor.checkpoint_store = journal
        active = ActiveRun(lease, journal, executor)
        # this execution's own: the run may have been claimed here again meanwhile (its
        # lease expired while this replica stalled), and the new one must go on
        journal.on_lease_lost = lambda: self._stop_run(active)
        self.active[run.id] = active
        self.bus.claimed(run.id)
        active.task = asyncio.get_running_loop().create_task(
            self._execute(active, run), name=f"flowcore-run-{run.id}"
        )
        # a callback, not a ``finally``: it runs even for a task cancelled before it began
        active.task.add_done_callback(lambda _task: self._ended(run.id))

    def _lease_lost(self, run_id: str) -> None:
        run = self.active.get(run_id)
        if run is not None:
            self._stop_run(run)

    def _stop_run(self, run: ActiveRun) -> None:
        if run.task is not None:
            run.released = True
            run.task.cancel()

    def _ended(self, run_id: str) -> None:
        if run_id not in self.active:  # else it executes here again, claimed anew
            self.bus.released(run_id)

    # ------------------------------------------------------------------ executing

    async def _execute(self, active: ActiveRun, run: StoredRun) -> None:
        lease, journal, executor = active.lease, active.journal, active.executor
        journal.start()
        metrics.ACTIVE_RUNS.inc()
        metrics.run_started(run.workflow_id)
        if run.claims > 1:
            metrics.LEASE_TAKEOVERS.inc()
        try:
            if run.cancel_requested:  # requested while it was parked or being taken over
                executor.cancel(run.id, early=True)
            if run.claims > 1 or run.checkpoint_seq or run.resume_from:
                # woken, taken over or resumed: the signals that came while it was away
                # (a new run's come with the heartbeat, as they always did)
                await self._deliver_signals([run.id])
            result = await self._run(executor, journal, run)
            active.ended = True
            if result.error is not None and result.error.kind == "checkpoint":
                raise _StateNotStored(result.error.message)
            if not result.parked:
                metrics.record_run(
                    result, run.started_at or run.created_at, run.created_at, run.claims == 1
                )
            await journal.close()
            if journal.lost or journal.finished:
                return  # taken over elsewhere, or the outcome went with the final checkpoint
            await self.store.finish_run(
                lease,
                result.status.value,
                journal.masked(result.output),
                journal.masked(result.error.to_dict()) if result.error else None,
                parked=result.parked,
                wake_at=result.wake_at,
            )
            if result.parked:
                metrics.RUNS_PARKED.inc()
                self._parked_until(result.wake_at)
        except asyncio.CancelledError:
            if not active.released:
                raise
        except LeaseLost:
            logger.info("run %s was taken over elsewhere", run.id, extra={"run_id": run.id})
        except Exception as exc:
            # a run that cannot start (a bad definition, input or checkpoint) or whose
            # state cannot be stored fails; events that could not be written are dropped
            # with the journal, and the log ends with the run.failed written here
            logger.exception(
                "run %s failed in the service",
                run.id,
                extra={"run_id": run.id, "workflow_id": run.workflow_id},
            )
            journal.detach()
            with contextlib.suppress(LeaseLost):
                await self.store.fail_run(lease, journal.masked(_failure(exc)))
        finally:
            metrics.ACTIVE_RUNS.dec()
            if self.active.get(run.id) is active:
                del self.active[run.id]
            self._poke()

    async def _run(
        self, executor: WorkflowExecutor, journal: RunJournal, run: StoredRun
    ) -> RunResult:
        sinks: list[EventSink] = [journal]
        config = run.config or None
        if run.fork_of and not run.checkpoint_seq:  # a fork that has not checkpointed yet
            source_run, _, sequence = run.fork_of.rpartition(":")
            checkpoint = await self._load(source_run, int(sequence))
            return await executor.continue_execution(
                checkpoint,
                event_sinks=sinks,
                variables=run.vars_patch,
                run_id=run.id,
                input_data=run.input if run.input is not None else checkpoint.input,
                config=config,
            )
        if run.resume_from or run.checkpoint_seq:
            if run.resume_from:
                checkpoint = await journal.load(run.resume_from)
            else:  # interrupted (crash, lost replica, shutdown): from its last checkpoint
                latest = await journal.latest(run.id)
                assert latest is not None
                checkpoint = latest
            return await executor.continue_execution(
                checkpoint,
                event_sinks=sinks,
                variables=run.vars_patch,
                config=config,
                event_seq=await self.store.last_event_seq(run.id),
            )
        definition = await self._definition(run.namespace, run.workflow_id, run.workflow_version)
        return await executor.execute(
            definition, run.input, run_id=run.id, config=config, event_sinks=sinks
        )

    async def _definition(
        self, namespace: str, workflow_id: str, version: int
    ) -> WorkflowDefinition:
        """The compiled definition of a stored version: a version never changes, so it
        is read from the database once per process, not once per run."""
        key = (namespace, workflow_id, version)
        definition = self._compiled.get(key)
        if definition is None:
            row = await self.store.get_workflow(
                workflow_id, version, include_archived=True, namespace=namespace
            )
            if row is None:
                raise WorkflowNotFoundError(f"workflow {workflow_id!r} version {version} is gone")
            definition = self.definitions.get(row)
            if len(self._compiled) >= 512:
                self._compiled.clear()
            self._compiled[key] = definition
        return definition

    async def _load(self, run_id: str, sequence: int) -> Checkpoint:
        records = await self.store.checkpoint_records(run_id)
        return checkpoint_at(records, sequence, f"{run_id}:{sequence}")

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self._heartbeat()
            except Exception:
                logger.exception("heartbeat failed")

    async def _heartbeat(self) -> None:
        metrics.QUEUE_DEPTH.set(await self.store.count_queued())
        leases = [run.lease for run in self.active.values()]
        lost, cancel = await self.store.heartbeat(self.owner, leases, self.settings.lease_seconds)
        for run_id in lost:
            run = self.active.get(run_id)
            if run is not None:
                run.journal.detach()
                self._lease_lost(run_id)
        for run_id in cancel:
            run = self.active.get(run_id)
            if run is not None:
                with contextlib.suppress(FlowcoreError):
                    run.executor.cancel(run_id)
        await self._deliver_signals(list(self.active))


class _StateNotStored(Exception):
    """The engine could not write the run's checkpoints."""


def _failure(exc: BaseException) -> dict[str, Any]:
    """A run's error for an exception that ended it in the service: the engine's own
    errors speak for themselves; anything else (the database refusing the run's state,
    a bug) is named by what it means, never by the driver's message, which may quote the
    data and the schema (the log has it)."""
    if isinstance(exc, FlowcoreError):
        return {"message": clean_text(str(exc) or type(exc).__name__), "kind": exc.kind}
    return {"message": "the run's state could not be stored", "kind": "storage"}
