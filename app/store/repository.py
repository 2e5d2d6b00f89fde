"""``Store``: every database operation of the service, each one named and owning its
transaction. No session leaves this module.

Run statuses change only through ``lifecycle.TRANSITIONS``, with compare-and-set
updates whose sources come from there, and every write made on behalf of a running run
is *fenced* on the run's lease (owner and epoch): a replica that lost its lease (paused
past it, or its run was taken over) writes nothing and learns so from
:class:`LeaseLost`. The errors are ``app.store.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import configure_mappers

from app.engine import CheckpointRecord, Event, EventType, NodeCheckpoint
from app.store.db import (
    db_now,
    greatest,
    insert_ignore,
    ping,
    sessionmaker,
)
from app.store.errors import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    LeaseLost,
    NotFound,
    StoreError,
)
from app.store.lifecycle import (
    ACTIVE,
    CANCELLED,
    FAILED,
    LET_GO,
    QUEUED,
    RUNNING,
    TERMINAL,
    WAITING,
    let_go,
    require,
    sources_of,
)
from app.store.models import CheckpointRow, EventRow, NodeResultRow, Run, SignalRow, WorkflowVersion
from app.store.notifications import (
    RELEASED,
    Notification,
    Notifier,
    RunControl,
    RunFinished,
    RunQueued,
)

NOTIFY_CHANNEL = "flowcore"
#: the id in a paging cursor: what run and workflow ids are made of
_CURSOR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to write for a run: who holds it and at which epoch."""

    run_id: str
    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None


class Store:
    """The service's database operations."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine)
        #: sessions that only read (on SQLite they take no write lock)
        self._read_sessions = sessionmaker(engine.execution_options(read_only=True))
        #: the turn bulk event commits and lease heartbeats take (``_turn``)
        self._write_turn = asyncio.Lock()
        self.postgres = False
        #: what this store's changes tell this process (and, through relays such as
        #: Redis, the other replicas; on Postgres, NOTIFY reaches them too)
        self.notifier = Notifier()
        self._inserts: dict[Any, Any] = {}

    async def close(self) -> None:
        """Release what the store holds beside the engine (the caller disposes of it)."""

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """A session for a transaction that writes."""
        async with self._sessions() as session:
            yield session

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """SQLite has one writer at a time, and its lock is not fair: a journal committing
        batch after batch of events (a run making thousands a second) could keep a lease
        heartbeat waiting past its lease. Those two kinds of write take turns here, first
        come first served; every other write goes straight to the database (taking turns
        costs a hop through the event loop per statement). Postgres needs no turn."""
        async with self._write_turn:
            yield

    def _read(self) -> AsyncSession:
        return self._read_sessions()

    def _insert_ignore(self, model: Any) -> Any:
        """INSERT ... ON CONFLICT DO NOTHING for ``model`` (built once, then cached)."""
        statement = self._inserts.get(model)
        if statement is None:
            statement = insert_ignore(self.engine, model.__table__).on_conflict_do_nothing()
            self._inserts[model] = statement
        return statement

    async def _notify(
        self, session: AsyncSession | AsyncConnection, notification: Notification
    ) -> None:
        """Tell the other replicas, in the transaction of the change (where the
        database can: ``PostgresStore``); this process hears of it from ``_announce``."""

    def _announce(self, notification: Notification) -> None:
        """After a commit: this process's listeners, then the other replicas' channels."""
        self.notifier.announce(notification)

    # ------------------------------------------------------------- notifications

    async def listen(self) -> bool:
        """Hear other replicas' notifications through the database: False where it
        cannot (then polling and other channels carry them)."""
        return False

    async def unlisten(self) -> None:
        """Stop hearing them."""

    async def ping(self) -> float:
        """Round-trip the database; the latency in seconds."""
        return await ping(self.engine)

    async def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None: not migrated)."""
        from alembic.migration import MigrationContext

        async with self.engine.connect() as conn:
            revision: str | None = await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
            return revision

    async def now(self) -> float:
        async with self._read() as session:
            return float((await session.execute(select(db_now(self.engine)))).scalar_one())

    # ------------------------------------------------------------------ workflows

    async def create_workflow_version(
        self, workflow_id: str, name: str | None, definition: dict[str, Any]
    ) -> WorkflowVersion:
        """Store ``definition`` as the next version of ``workflow_id``."""
        for _ in range(5):  # two writers racing for the same version number: retry
            async with self._write() as session:
                latest = (
                    await session.execute(
                        select(func.max(WorkflowVersion.version)).where(
                            WorkflowVersion.workflow_id == workflow_id
                        )
                    )
                ).scalar_one()
                version = (latest or 0) + 1
                row = WorkflowVersion(
                    workflow_id=workflow_id,
                    version=version,
                    name=name,
                    definition={**definition, "version": version},
                    created_at=time.time(),
                    archived=False,
                )
                session.add(row)
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    continue
                return row
        raise StoreError(f"could not allocate a version of workflow {workflow_id!r}")

    async def get_workflow(
        self, workflow_id: str, version: int | None = None, *, include_archived: bool = False
    ) -> WorkflowVersion | None:
        row = await self._workflow_row(workflow_id, version)
        if row is None or (row.archived and not include_archived and version is None):
            return None
        return row

    async def _workflow_row(self, workflow_id: str, version: int | None) -> WorkflowVersion | None:
        """A version of ``workflow_id`` (its latest when ``version`` is None)."""
        async with self._read() as session:
            query = select(WorkflowVersion).where(WorkflowVersion.workflow_id == workflow_id)
            if version is not None:
                query = query.where(WorkflowVersion.version == version)
            else:
                query = query.order_by(WorkflowVersion.version.desc()).limit(1)
            return (await session.execute(query)).scalar_one_or_none()

    async def list_workflows(self, cursor: str | None, limit: int) -> Page:
        """The latest version of each workflow, by id, ``limit`` at a time."""
        async with self._read() as session:
            latest = (
                select(
                    WorkflowVersion.workflow_id,
                    func.max(WorkflowVersion.version).label("version"),
                )
                .group_by(WorkflowVersion.workflow_id)
                .subquery()
            )
            query = (
                select(WorkflowVersion)
                .join(
                    latest,
                    and_(
                        WorkflowVersion.workflow_id == latest.c.workflow_id,
                        WorkflowVersion.version == latest.c.version,
                    ),
                )
                .where(WorkflowVersion.archived.is_(False))
                .order_by(WorkflowVersion.workflow_id)
                .limit(limit + 1)
            )
            if cursor:
                if not _CURSOR_ID.fullmatch(cursor):
                    raise InvalidCursor(f"bad cursor {cursor[:80]!r}")
                query = query.where(WorkflowVersion.workflow_id > cursor)
            rows = list((await session.execute(query)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, rows[-1].workflow_id if more else None)

    async def list_versions(self, workflow_id: str) -> list[WorkflowVersion]:
        async with self._read() as session:
            query = (
                select(WorkflowVersion)
                .where(WorkflowVersion.workflow_id == workflow_id)
                .order_by(WorkflowVersion.version)
            )
            return list((await session.execute(query)).scalars())

    async def archive_workflow(self, workflow_id: str) -> bool:
        """Archive every version (runs already started keep their pinned version)."""
        async with self._write() as session:
            result = await session.execute(
                update(WorkflowVersion)
                .where(WorkflowVersion.workflow_id == workflow_id)
                .values(archived=True)
            )
            await session.commit()
            return bool(_rowcount(result))

    # ----------------------------------------------------------------------- runs

    async def create_run(
        self,
        run_id: str,
        workflow: WorkflowVersion,
        input: Any,
        config: dict[str, Any] | None,
        idempotency_key: str | None,
        request_hash: str | None,
        *,
        fork_of: str | None = None,
        vars_patch: dict[str, Any] | None = None,
    ) -> tuple[Run, bool]:
        """Queue a run. With an idempotency key already used: the same request returns
        the existing run (``created`` False), a different one raises IdempotencyConflict."""
        now = time.time()
        return await self._insert_run(
            id=run_id,
            workflow_id=workflow.workflow_id,
            workflow_version=workflow.version,
            status=QUEUED,
            input=input,
            config=config,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            created_at=now,
            updated_at=now,
            epoch=0,
            claims=0,
            event_seq=0,
            checkpoint_seq=0,
            fork_of=fork_of,
            vars_patch=vars_patch,
            cancel_requested=False,
        )

    async def _insert_run(self, **values: Any) -> tuple[Run, bool]:
        """Insert a queued run (see ``create_run``)."""
        row = Run(**values)
        run_id, idempotency_key, request_hash = row.id, row.idempotency_key, row.request_hash
        async with self._write() as session:
            session.add(row)
            await self._notify(session, RunQueued(run_id))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                if idempotency_key is None:
                    raise
                existing = (
                    await session.execute(select(Run).where(Run.idempotency_key == idempotency_key))
                ).scalar_one_or_none()
                if existing is None:
                    raise
                if existing.request_hash != request_hash:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used for a different request"
                    ) from None
                return existing, False
        self._announce(RunQueued(run_id))
        return row, True

    async def count_queued(self) -> int:
        async with self._read() as session:
            value = (
                await session.execute(select(func.count()).where(Run.status == QUEUED))
            ).scalar_one()
            return int(value)

    async def run_by_idempotency_key(self, key: str) -> Run | None:
        async with self._read() as session:
            return (
                await session.execute(select(Run).where(Run.idempotency_key == key))
            ).scalar_one_or_none()

    async def get_run(self, run_id: str) -> Run | None:
        async with self._read() as session:
            return await session.get(Run, run_id)

    async def list_runs(
        self,
        *,
        workflow_id: str | None,
        status: str | None,
        cursor: str | None,
        limit: int,
    ) -> Page:
        """Runs, newest first; the cursor is ``<created_at>:<id>`` of the last one seen."""
        async with self._read() as session:
            query = select(Run).order_by(Run.created_at.desc(), Run.id.desc()).limit(limit + 1)
            if workflow_id is not None:
                query = query.where(Run.workflow_id == workflow_id)
            if status is not None:
                query = query.where(Run.status == status)
            if cursor:
                created, _, last_id = cursor.partition(":")
                try:
                    created_at = float(created)
                except ValueError:
                    created_at = float("nan")
                if not math.isfinite(created_at) or not _CURSOR_ID.fullmatch(last_id):
                    raise InvalidCursor(f"bad cursor {cursor[:80]!r}")
                query = query.where(
                    or_(
                        Run.created_at < created_at,
                        and_(Run.created_at == created_at, Run.id < last_id),
                    )
                )
            rows = list((await session.execute(query)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        cursor_out = f"{rows[-1].created_at!r}:{rows[-1].id}" if more else None
        return Page(rows, cursor_out)

    async def request_cancel(self, run_id: str) -> Run:
        """A run no replica holds (queued, parked, or stopped at a breakpoint) is
        cancelled at once, its log ending with ``run.cancelled``; a running one is
        flagged for its replica, which cancels its nodes and checkpoints."""
        async with self._write() as session:
            run = await session.get(Run, run_id, with_for_update=True)
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            now = time.time()
            if run.status == QUEUED or (run.status == WAITING and run.owner is None):
                require(run.status, CANCELLED, run_id)
                seq = await self._last_seq(session, run_id) + 1
                session.add(
                    EventRow(
                        run_id=run_id,
                        seq=seq,
                        type=EventType.RUN_CANCELLED.value,
                        node_id=None,
                        data={},
                        created_at=now,
                    )
                )
                run.status = CANCELLED
                run.finished_at = now
                run.error = {"message": "the run was cancelled", "kind": "cancelled"}
                run.event_seq = seq
                let_go(run)
                announce: Notification = RunFinished(run_id)
            else:
                require(
                    run.status,
                    CANCELLED,
                    run_id,
                    f"run {run_id!r} is {run.status}; it cannot be cancelled",
                )
                run.cancel_requested = True  # its replica cancels it
                announce = RunControl(run_id)
            run.updated_at = now
            await self._notify(session, announce)
            await session.commit()
        self._announce(announce)
        return run

    async def _last_seq(self, session: AsyncSession, run_id: str) -> int:
        value = (
            await session.execute(select(func.max(EventRow.seq)).where(EventRow.run_id == run_id))
        ).scalar_one()
        return int(value or 0)

    async def add_signal(self, run_id: str, name: str, payload: Any) -> Run:
        async with self._write() as session:
            run = await session.get(Run, run_id)
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            if run.status in TERMINAL:
                raise InvalidTransition(f"run {run_id!r} is {run.status}; it takes no signals")
            session.add(
                SignalRow(
                    run_id=run_id,
                    name=name,
                    payload=payload,
                    created_at=time.time(),
                    delivered=False,
                )
            )
            woke = await self._wake_parked(session, run_id)
            await self._notify(session, RunControl(run_id))
            if woke:
                await self._notify(session, RunQueued(run_id))
            await session.commit()
        self._announce(RunControl(run_id))
        if woke:
            self._announce(RunQueued(run_id))
        return run

    async def _wake_parked(self, session: AsyncSession, run_id: str) -> bool:
        """Make a parked run due now (a signal came for it): any replica claims it."""
        now = db_now(self.engine)
        result = await session.execute(
            update(Run)
            .where(
                Run.id == run_id,
                Run.status == WAITING,
                Run.parked.is_(True),
                or_(Run.wake_at.is_(None), Run.wake_at > now),
            )
            .values(wake_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(_rowcount(result))

    async def return_signals(self, run_id: str, signal_ids: Sequence[int]) -> None:
        """Signals taken for a run whose execution had parked before it could take them:
        undelivered again, and the parked run made due, so its next execution gets them."""
        if not signal_ids:
            return
        async with self._write() as session:
            await session.execute(
                update(SignalRow)
                .where(SignalRow.id.in_(list(signal_ids)))
                .values(delivered=False)
                .execution_options(synchronize_session=False)
            )
            woke = await self._wake_parked(session, run_id)
            if woke:
                await self._notify(session, RunQueued(run_id))
            await session.commit()
        if woke:
            self._announce(RunQueued(run_id))

    async def take_signals(self, run_ids: Sequence[str]) -> list[SignalRow]:
        """Undelivered signals of these runs, marked delivered (in arrival order)."""
        if not run_ids:
            return []
        async with self._write() as session:
            rows = list(
                (
                    await session.execute(
                        select(SignalRow)
                        .where(SignalRow.run_id.in_(run_ids), SignalRow.delivered.is_(False))
                        .order_by(SignalRow.id)
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            for row in rows:
                row.delivered = True
            await session.commit()
            return rows

    async def queue_resume(
        self, run_id: str, checkpoint_id: str, vars_patch: dict[str, Any] | None
    ) -> Run:
        """Queue a run to continue from one of its checkpoints. Whoever holds it now is
        fenced out (the epoch moves on)."""
        async with self._write() as session:
            run = await session.get(Run, run_id, with_for_update=True)
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            require(
                run.status,
                QUEUED,
                run_id,
                f"run {run_id!r} is {run.status}; only failed, cancelled, waiting or "
                "interrupted runs can be resumed in place (fork a finished one)",
            )
            run.status = QUEUED
            run.resume_from = checkpoint_id
            run.vars_patch = vars_patch
            run.owner = None
            run.lease_until = None
            run.epoch = run.epoch + 1
            run.cancel_requested = False
            run.parked = False
            run.wake_at = None
            run.error = None
            run.finished_at = None
            run.updated_at = time.time()
            # ctl: the replica executing it now (if any) stops at once, not at its next
            # heartbeat; run: any replica claims it
            await self._notify(session, RunControl(run_id))
            await self._notify(session, RunQueued(run_id))
            await session.commit()
        self._announce(RunControl(run_id))
        self._announce(RunQueued(run_id))
        return run

    # ----------------------------------------------------------------- dispatcher

    async def claim_runs(self, owner: str, lease_seconds: float, limit: int) -> list[Run]:
        """Claim up to ``limit`` runs: queued ones, and active ones whose lease expired.
        ``FOR UPDATE SKIP LOCKED`` keeps replicas from claiming the same run."""
        if limit <= 0:
            return []
        now = db_now(self.engine)
        async with self._write() as session:
            ids = list(
                (
                    await session.execute(
                        select(Run.id)
                        .where(
                            or_(
                                Run.status == QUEUED,
                                and_(Run.status.in_(ACTIVE), Run.lease_until < now),
                                and_(
                                    Run.status == WAITING,
                                    Run.parked.is_(True),
                                    Run.wake_at <= now,
                                ),
                            )
                        )
                        .order_by(Run.created_at)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            if not ids:
                await session.rollback()
                return []
            claimed = list(
                (
                    await session.execute(
                        update(Run)
                        .where(Run.id.in_(ids))
                        .values(
                            status=RUNNING,
                            owner=owner,
                            lease_until=now + lease_seconds,
                            epoch=Run.epoch + 1,
                            claims=Run.claims + 1,
                            started_at=func.coalesce(Run.started_at, now),
                            updated_at=now,
                            parked=False,
                            wake_at=None,
                        )
                        .returning(Run)
                    )
                ).scalars()
            )
            await session.commit()
            return claimed

    async def heartbeat(
        self, owner: str, leases: Iterable[Lease], lease_seconds: float
    ) -> tuple[list[str], list[str]]:
        """Extend these leases. Returns the runs whose lease was lost and the runs whose
        cancellation was requested."""
        leases = list(leases)
        if not leases:
            return [], []
        now = db_now(self.engine)
        lost: list[str] = []
        async with self._turn(), self._write() as session:
            for lease in leases:
                result = await session.execute(
                    update(Run)
                    .where(
                        Run.id == lease.run_id,
                        Run.owner == owner,
                        Run.epoch == lease.epoch,
                        Run.status.in_(ACTIVE),
                    )
                    .values(lease_until=now + lease_seconds)
                )
                if not _rowcount(result):
                    lost.append(lease.run_id)
            cancel = list(
                (
                    await session.execute(
                        select(Run.id).where(
                            Run.id.in_([lease.run_id for lease in leases]),
                            Run.cancel_requested.is_(True),
                        )
                    )
                ).scalars()
            )
            await session.commit()
        return lost, cancel

    async def cancel_requested(self, run_id: str) -> bool:
        async with self._read() as session:
            value = (
                await session.execute(select(Run.cancel_requested).where(Run.id == run_id))
            ).scalar_one_or_none()
            return bool(value)

    async def release_runs(self, owner: str, run_ids: Sequence[str] | None = None) -> int:
        """Give runs back to the queue (shutdown): another replica resumes them from their
        last checkpoint at once."""
        async with self._write() as session:
            query = update(Run).where(Run.owner == owner, Run.status.in_(ACTIVE))
            if run_ids is not None:
                query = query.where(Run.id.in_(list(run_ids)))
            result = await session.execute(
                query.values(
                    status=QUEUED,
                    owner=None,
                    lease_until=None,
                    epoch=Run.epoch + 1,
                    updated_at=time.time(),
                )
            )
            await self._notify(session, RunQueued(RELEASED))
            await session.commit()
        self._announce(RunQueued(RELEASED))
        return _rowcount(result)

    # ------------------------------------------------------------ fenced progress

    async def commit_progress(
        self,
        lease: Lease,
        records: Sequence[CheckpointRecord],
        events: Sequence[Event],
        *,
        status: str | None = None,
        current_nodes: list[str] | None = None,
        outcome: tuple[str, Any, dict[str, Any] | None] | None = None,
        bulk: bool = False,
    ) -> None:
        """One transaction: checkpoint records, the node results they carry and events,
        fenced on the lease. Raises LeaseLost (and writes nothing) if the lease moved.

        ``bulk``: one of a stream of event batches (the journal catching up with a run
        that makes events faster than they commit): it takes turns with heartbeats.

        ``outcome`` (status, output, error) also records how the run ended and drops the
        lease, as ``finish_run`` does: the final checkpoint, the terminal event and the
        run's status commit together, so a crash cannot leave a log that says the run
        ended on a run that is still 'running' (and that another replica would resume)."""
        if outcome is not None and outcome[0] not in TERMINAL:
            raise InvalidTransition(f"{outcome[0]!r} is not a terminal status")
        for attempt in range(3):
            try:
                await self._commit_progress(
                    lease,
                    records,
                    events,
                    status=status,
                    current_nodes=current_nodes,
                    outcome=outcome,
                    bulk=bulk,
                )
                return
            except DBAPIError as exc:
                # a connection that died (database restart, network blip) is invalidated
                # and replaced; the commit is idempotent, so it is simply tried again
                if not exc.connection_invalidated or attempt == 2:
                    raise
            except self._connection_errors():
                # the same on a driver's own pool: it replaces a closed connection
                if attempt == 2:
                    raise

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        """Errors of a connection that died, besides SQLAlchemy's (the statement may
        be retried)."""
        return ()

    async def _commit_progress(
        self,
        lease: Lease,
        records: Sequence[CheckpointRecord],
        events: Sequence[Event],
        *,
        status: str | None = None,
        current_nodes: list[str] | None = None,
        outcome: tuple[str, Any, dict[str, Any] | None] | None = None,
        bulk: bool = False,
    ) -> None:
        now = time.time()
        values: dict[str, Any] = {"updated_at": now}
        if events:
            values["event_seq"] = greatest(self.engine, Run.event_seq, events[-1].seq)
        if records:
            values["checkpoint_seq"] = records[-1].sequence
            # the run's own checkpoints now supersede a resume request: an interrupted
            # run continues from its latest one, not from the one it was resumed from
            values["resume_from"] = None
            values["vars_patch"] = None
        if current_nodes is not None:
            values["current_nodes"] = current_nodes
        if status is not None:
            values["status"] = status
        if outcome is not None:
            final, output, error = outcome
            if final not in TERMINAL:
                raise InvalidTransition(f"{final!r} is not a terminal status")
            values.update(LET_GO, status=final, output=output, error=error, finished_at=now)
        # a Core connection, not an ORM session: this is the hot path of every run
        turn: contextlib.AbstractAsyncContextManager[None] = (
            self._turn() if bulk else contextlib.nullcontext()
        )
        async with turn, self.engine.begin() as conn:
            result = await conn.execute(
                update(Run)
                .where(
                    Run.id == lease.run_id,
                    Run.owner == lease.owner,
                    Run.epoch == lease.epoch,
                    Run.status.in_(ACTIVE),
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if not _rowcount(result):  # leaving the block by an exception rolls back
                raise LeaseLost(f"run {lease.run_id!r} is no longer held by {lease.owner!r}")
            # executemany with one cached statement per table (no per-call compilation)
            if records:
                await conn.execute(
                    self._insert_ignore(CheckpointRow),
                    [
                        {
                            "run_id": r.run_id,
                            "sequence": r.sequence,
                            "parent": r.parent,
                            "status": r.status,
                            "event_seq": r.event_seq,
                            "created_at": r.created_at,
                            "record": _record_json(r),
                        }
                        for r in records
                    ],
                )
                results = [
                    _node_result_row(lease.run_id, node_id, state, now)
                    for r in records
                    for node_id, state in r.completed.items()
                ]
                if results:
                    await conn.execute(self._insert_ignore(NodeResultRow), results)
            if events:
                await conn.execute(
                    self._insert_ignore(EventRow),
                    [
                        {
                            "run_id": lease.run_id,
                            "seq": e.seq,
                            "type": e.type.value,
                            "node_id": e.node_id,
                            "data": e.data,
                            "created_at": e.timestamp,
                        }
                        for e in events
                    ],
                )
            if outcome is not None:
                await self._notify(conn, RunFinished(lease.run_id))
        if outcome is not None:
            self._announce(RunFinished(lease.run_id))

    async def finish_run(
        self,
        lease: Lease,
        status: str,
        output: Any,
        error: dict[str, Any] | None,
        *,
        parked: bool = False,
        wake_at: float | None = None,
    ) -> None:
        """Record the outcome and drop the lease (fenced).

        ``parked`` (with status ``waiting``): the run left the replica and is claimed
        again at ``wake_at`` (None: when a signal comes). A signal that is already
        waiting for it, or a cancellation requested meanwhile, makes it due at once."""
        if status not in TERMINAL and status != WAITING:
            raise InvalidTransition(f"{status!r} is not an outcome")
        if parked and status != WAITING:
            raise InvalidTransition("only a waiting run parks")
        sources = sources_of(status)
        async with self._write() as session:
            if parked:
                due = (
                    await session.execute(
                        select(Run.cancel_requested).where(Run.id == lease.run_id)
                    )
                ).scalar_one_or_none() or (
                    await session.execute(
                        select(SignalRow.id)
                        .where(SignalRow.run_id == lease.run_id, SignalRow.delivered.is_(False))
                        .limit(1)
                    )
                ).scalar_one_or_none() is not None
                if due:
                    wake_at = time.time()
            result = await session.execute(
                update(Run)
                .where(
                    Run.id == lease.run_id,
                    Run.owner == lease.owner,
                    Run.epoch == lease.epoch,
                    Run.status.in_(sources),
                )
                .values(
                    {
                        # a run stopped waiting (break_on_error) has nothing running: it
                        # is let go of, and waits for a resume request; a parked one
                        # keeps a cancellation requested meanwhile (then due at once)
                        **LET_GO,
                        "status": status,
                        "output": output,
                        "error": error,
                        "finished_at": time.time() if status in TERMINAL else None,
                        "cancel_requested": Run.cancel_requested if parked else False,
                        "updated_at": time.time(),
                        "parked": parked,
                        "wake_at": wake_at if parked else None,
                    }
                )
            )
            if not _rowcount(result):
                await session.rollback()
                raise LeaseLost(f"run {lease.run_id!r} is no longer held by {lease.owner!r}")
            await self._notify(session, RunFinished(lease.run_id))
            await session.commit()
        self._announce(RunFinished(lease.run_id))

    async def fail_run(self, lease: Lease, error: dict[str, Any]) -> None:
        """Record that a run failed for a reason its journal could not write (its state
        could not be stored): ``run.failed`` is appended after the last event committed,
        so the log still ends with a terminal event; fenced like every write."""
        now = time.time()
        async with self._write() as session:
            run = await session.get(Run, lease.run_id, with_for_update=True)
            if (
                run is None
                or run.owner != lease.owner
                or run.epoch != lease.epoch
                or run.status not in ACTIVE
            ):
                raise LeaseLost(f"run {lease.run_id!r} is no longer held by {lease.owner!r}")
            seq = await self._last_seq(session, lease.run_id) + 1
            session.add(
                EventRow(
                    run_id=lease.run_id,
                    seq=seq,
                    type=EventType.RUN_FAILED.value,
                    node_id=None,
                    data={"error": {**error, "node_id": error.get("node_id")}},
                    created_at=now,
                )
            )
            require(run.status, FAILED, lease.run_id)
            run.status = FAILED
            run.output = None
            run.error = error
            run.finished_at = now
            run.updated_at = now
            run.event_seq = seq
            let_go(run)
            await self._notify(session, RunFinished(lease.run_id))
            await session.commit()
        self._announce(RunFinished(lease.run_id))

    async def next_wake_at(self) -> float | None:
        """When the first parked run is due (None: none waits on a timer)."""
        async with self._read() as session:
            value = (
                await session.execute(
                    select(func.min(Run.wake_at)).where(Run.status == WAITING, Run.parked.is_(True))
                )
            ).scalar_one_or_none()
            return float(value) if value is not None else None

    # ---------------------------------------------------------------------- reads

    async def events_after(self, run_id: str, after_seq: int, limit: int = 500) -> list[EventRow]:
        async with self._read() as session:
            query = (
                select(EventRow)
                .where(EventRow.run_id == run_id, EventRow.seq > after_seq)
                .order_by(EventRow.seq)
                .limit(limit)
            )
            return list((await session.execute(query)).scalars())

    async def last_event_seq(self, run_id: str) -> int:
        async with self._read() as session:
            value = (
                await session.execute(
                    select(func.max(EventRow.seq)).where(EventRow.run_id == run_id)
                )
            ).scalar_one()
            return int(value or 0)

    async def checkpoints(self, run_id: str) -> list[CheckpointRow]:
        async with self._read() as session:
            query = (
                select(CheckpointRow)
                .where(CheckpointRow.run_id == run_id)
                .order_by(CheckpointRow.sequence)
            )
            return list((await session.execute(query)).scalars())

    async def checkpoint(self, run_id: str, sequence: int) -> CheckpointRow | None:
        async with self._read() as session:
            return await session.get(CheckpointRow, (run_id, sequence))

    async def checkpoint_records(self, run_id: str) -> list[CheckpointRecord]:
        return [_record_from(row.record) for row in await self.checkpoints(run_id)]

    async def node_results(self, run_id: str) -> list[NodeResultRow]:
        async with self._read() as session:
            query = (
                select(NodeResultRow)
                .where(NodeResultRow.run_id == run_id)
                .order_by(NodeResultRow.committed_at, NodeResultRow.node_id)
            )
            return list((await session.execute(query)).scalars())


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (a CursorResult's rowcount)."""
    return int(result.rowcount or 0)


def _record_json(record: CheckpointRecord) -> dict[str, Any]:
    return record.to_dict()


def _record_from(data: dict[str, Any]) -> CheckpointRecord:
    data = dict(data)
    data["completed"] = {k: NodeCheckpoint(**v) for k, v in data["completed"].items()}
    return CheckpointRecord(**data)


def _node_result_row(
    run_id: str, node_id: str, state: NodeCheckpoint, now: float
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "node_id": node_id,
        "iteration": 0,
        "status": state.status,
        "output": state.output,
        "error": state.error,
        "error_kind": state.error_kind,
        "attempts": state.attempts,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "committed_at": now,
    }


_Model = TypeVar("_Model")
_MANAGERS: dict[type[Any], Any] = {}


def _detached(model: type[_Model], values: Any = (), **more: Any) -> _Model:
    """An instance of ``model`` holding ``values`` (a mapping: a row read with asyncpg)
    with no session: what the ORM's loader does, without the instrumented constructor
    (~25 µs per run row). The store hands these out to be read, never to be flushed."""
    manager = _MANAGERS.get(model)
    if manager is None:
        configure_mappers()  # what the first constructor call would do (attribute setup)
        manager = _MANAGERS[model] = sa_inspect(model).class_manager
    instance: _Model = manager.new_instance()
    attributes = instance.__dict__
    attributes.update(values)
    attributes.update(more)
    return instance


def _orm(model: type[_Model], **values: Any) -> _Model:
    return model(**values)
