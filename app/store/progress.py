"""Fenced progress: what a running run writes (checkpoints, node results, events, its
outcome), each write on its lease."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from app.engine import CheckpointRecord, Event, EventType
from app.store.base import (
    Lease,
    StoreBase,
    _last_seq,
    _node_result_row,
    _record_json,
    _rowcount,
)
from app.store.db import greatest
from app.store.errors import (
    InvalidTransition,
    LeaseLost,
)
from app.store.lifecycle import (
    ACTIVE,
    FAILED,
    LET_GO,
    TERMINAL,
    WAITING,
    let_go,
    require,
    sources_of,
)
from app.store.models import CheckpointRow, EventRow, NodeResultRow, Run, SignalRow
from app.store.notifications import (
    RunFinished,
)


@dataclass(frozen=True, slots=True)
class Commit:
    """One fenced progress write, as ``commit_progress`` takes it (see there)."""

    records: Sequence[CheckpointRecord]
    events: Sequence[Event]
    status: str | None
    current_nodes: list[str] | None
    outcome: tuple[str, Any, dict[str, Any] | None] | None
    bulk: bool


class Progress(StoreBase):
    """A running run's writes, fenced on its lease."""

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
        commit = Commit(records, events, status, current_nodes, outcome, bulk)
        for attempt in range(3):
            try:
                await self._commit_progress(lease, commit)
                break
            except DBAPIError as exc:
                # a connection that died (database restart, network blip) is invalidated
                # and replaced; the commit is idempotent, so it is simply tried again
                if not exc.connection_invalidated or attempt == 2:
                    raise
            except self._connection_errors():
                # the same on a driver's own pool: it replaces a closed connection
                if attempt == 2:
                    raise
        if outcome is not None:
            self._announce(RunFinished(lease.run_id))

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        """Errors of a connection that died, besides SQLAlchemy's (the statement may
        be retried)."""
        return ()

    async def _commit_progress(self, lease: Lease, commit: Commit) -> None:
        records, events, status = commit.records, commit.events, commit.status
        current_nodes, outcome, bulk = commit.current_nodes, commit.outcome, commit.bulk
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
        await self._finish_run(lease, status, output, error, parked, wake_at)
        self._announce(RunFinished(lease.run_id))

    async def _finish_run(
        self,
        lease: Lease,
        status: str,
        output: Any,
        error: dict[str, Any] | None,
        parked: bool,
        wake_at: float | None,
    ) -> None:
        """finish_run's fenced write (raises LeaseLost), its notification to other
        replicas in its transaction."""
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
            seq = await _last_seq(session, lease.run_id) + 1
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
