"""The store's runs and what is asked of them: create (idempotent), read, list, cancel,
signal, resume."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.engine import EventType
from app.store.base import (
    _CURSOR_ID,
    Page,
    StoreBase,
    _last_seq,
    _rowcount,
    one,
)
from app.store.db import db_now
from app.store.errors import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    NotFound,
)
from app.store.lifecycle import (
    CANCELLED,
    QUEUED,
    RUNNING,
    TERMINAL,
    WAITING,
    let_go,
    require,
)
from app.store.models import EventRow, Run, SignalRow
from app.store.notifications import (
    Notification,
    RunControl,
    RunFinished,
    RunQueued,
)
from app.store.records import DEFAULT_NAMESPACE, StoredRun, StoredSignal, StoredWorkflow


class RunRows(StoreBase):
    """Runs and their requests."""

    async def create_run(
        self,
        run_id: str,
        workflow: StoredWorkflow,
        input: Any,
        config: dict[str, Any] | None,
        idempotency_key: str | None,
        request_hash: str | None,
        *,
        fork_of: str | None = None,
        vars_patch: dict[str, Any] | None = None,
    ) -> tuple[StoredRun, bool]:
        """Queue a run. With an idempotency key already used: the same request returns
        the existing run (``created`` False), a different one raises IdempotencyConflict."""
        now = time.time()
        return await self._insert_run(
            id=run_id,
            namespace=workflow.namespace,
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
            parked=False,
        )

    async def _insert_run(self, **values: Any) -> tuple[StoredRun, bool]:
        """Insert a queued run (see ``create_run``)."""
        row = Run(**values)
        run_id, namespace = row.id, row.namespace
        idempotency_key, request_hash = row.idempotency_key, row.request_hash
        async with self._write() as session:
            session.add(row)
            await self._notify(session, RunQueued(run_id))
            try:
                await session.commit()
            except IntegrityError as exc:
                await session.rollback()
                return await self._taken(namespace, idempotency_key, request_hash, exc), False
        self._announce(RunQueued(run_id))
        return StoredRun.of(row), True

    async def _taken(
        self, namespace: str, key: str | None, request_hash: str | None, exc: Exception
    ) -> StoredRun:
        """After an insert broke a unique key: the run this idempotency key made for the
        same request; IdempotencyConflict for another request. With no run of the key,
        the key broken was the run's id: ``exc`` is raised again."""
        existing = (
            await self.run_by_idempotency_key(key, namespace=namespace) if key is not None else None
        )
        if existing is None:
            if isinstance(exc, IntegrityError):
                raise exc
            raise IntegrityError("INSERT INTO runs", None, exc) from exc
        if existing.request_hash != request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was used for a different request"
            ) from None
        return existing

    async def count_queued(self) -> int:
        async with self._read() as session:
            value = (
                await session.execute(select(func.count()).where(Run.status == QUEUED))
            ).scalar_one()
            return int(value)

    async def run_by_idempotency_key(
        self, key: str, *, namespace: str = DEFAULT_NAMESPACE
    ) -> StoredRun | None:
        async with self._read() as session:
            query = select(Run).where(Run.namespace == namespace, Run.idempotency_key == key)
            return one(StoredRun, (await session.execute(query)).scalar_one_or_none())

    async def count_active(self, namespace: str) -> int:
        """The runs of ``namespace`` that are queued or running."""
        async with self._read() as session:
            query = select(func.count()).where(
                Run.namespace == namespace, Run.status.in_((QUEUED, RUNNING))
            )
            return int((await session.execute(query)).scalar_one())

    async def get_run(self, run_id: str) -> StoredRun | None:
        async with self._read() as session:
            return one(StoredRun, await session.get(Run, run_id))

    async def list_runs(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        workflow_id: str | None,
        status: str | None,
        cursor: str | None,
        limit: int,
    ) -> Page:
        """Runs, newest first; the cursor is ``<created_at>:<id>`` of the last one seen."""
        async with self._read() as session:
            query = (
                select(Run)
                .where(Run.namespace == namespace)
                .order_by(Run.created_at.desc(), Run.id.desc())
                .limit(limit + 1)
            )
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
            rows = [StoredRun.of(r) for r in (await session.execute(query)).scalars()]
        more = len(rows) > limit
        rows = rows[:limit]
        cursor_out = f"{rows[-1].created_at!r}:{rows[-1].id}" if more else None
        return Page(rows, cursor_out)

    async def request_cancel(self, run_id: str) -> StoredRun:
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
                seq = await _last_seq(session, run_id) + 1
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
        return StoredRun.of(run)

    async def add_signal(self, run_id: str, name: str, payload: Any) -> StoredRun:
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
        return StoredRun.of(run)

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

    async def take_signals(self, run_ids: Sequence[str]) -> list[StoredSignal]:
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
            return [StoredSignal.of(row) for row in rows]

    async def queue_resume(
        self, run_id: str, checkpoint_id: str, vars_patch: dict[str, Any] | None
    ) -> StoredRun:
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
        return StoredRun.of(run)
