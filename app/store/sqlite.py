"""``SqliteStore``: the store on SQLite, its hot path on one writer thread.

SQLite takes one writer at a time, so the hot path has exactly one: a thread owning a
connection (WAL, ``synchronous=NORMAL``) that runs the writes every run makes (create,
claim, heartbeat, commit progress, finish, take signals). The writes queued when it comes
round commit together (group commit): one ``BEGIN IMMEDIATE``, each write in a
``SAVEPOINT`` of its own, so one that fails (a lost lease, a taken key) is rolled back
alone, one ``COMMIT``, and only then is every caller answered. Queued writes are taken
first come, first served: a journal committing batch after batch cannot keep a lease
heartbeat waiting. The hot path's reads go to a reader thread with its own connection
(in WAL mode a reader never waits for the writer). Statements are plain ``sqlite3``: no
ORM, no SQLAlchemy compilation, and one thread hop per batch instead of one per
statement. Everything else is the portable ``Store``'s.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import JSON, Boolean, event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.base import _record_json
from app.store.db import json_dumps
from app.store.errors import LeaseLost
from app.store.lifecycle import (
    ACTIVE,
    LET_GO,
    QUEUED,
    RUNNING,
    TERMINAL,
    WAITING,
    sources_of,
    sql_list,
)
from app.store.models import EventRow, Run, SignalRow, WorkflowVersion
from app.store.notifications import RunQueued
from app.store.progress import Commit
from app.store.records import (
    DEFAULT_NAMESPACE,
    StoredEvent,
    StoredRun,
    StoredSignal,
    StoredWorkflow,
    _Record,
)
from app.store.repository import Lease, Store
from app.store.sqlite_worker import SqliteWorker

T = TypeVar("T")


def sqlite_path(engine: AsyncEngine) -> str | None:
    """The database file of a SQLite engine (None: in memory, which one connection owns)."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


R = TypeVar("R", bound=_Record)


def _decoder(record: type[R], model: Any) -> Callable[[Any], R]:
    """Rows of ``model``'s table (its columns in order, the record's fields' order) as
    ``record``: JSON decoded, booleans made bool (SQLite stores them as 0 and 1)."""
    kinds = [
        "json" if isinstance(c.type, JSON) else "bool" if isinstance(c.type, Boolean) else ""
        for c in model.__table__.columns
    ]

    def decode(row: Any) -> R:
        values = []
        for kind, value in zip(kinds, row, strict=True):
            if kind == "json":
                # a column of type JSON has numeric affinity: SQLite stores the text of
                # a JSON number as that number, and hands the number back
                value = json.loads(value) if isinstance(value, str) else value
            elif kind == "bool" and value is not None:
                value = bool(value)
            values.append(value)
        return record(*values)

    return decode


def _first(decode: Callable[[Any], R], cursor: sqlite3.Cursor) -> R | None:
    row = cursor.fetchone()
    return None if row is None else decode(row)


def _columns(model: Any) -> str:
    return ", ".join(column.name for column in model.__table__.columns)


_run = _decoder(StoredRun, Run)
_workflow = _decoder(StoredWorkflow, WorkflowVersion)
_event = _decoder(StoredEvent, EventRow)
_signal = _decoder(StoredSignal, SignalRow)
_ACTIVE = sql_list(ACTIVE)
#: ``lifecycle.LET_GO`` as SET clauses ...
_LET_GO = {
    name: "NULL" if value is None else "'[]'" if value == [] else str(int(value))
    for name, value in LET_GO.items()
}
_LET_GO_SQL = ", ".join(f"{name} = {value}" for name, value in _LET_GO.items())
#: ... but for the parking columns and the cancellation (``finish_run`` sets those)
_LET_GO_BUT_PARKING = ", ".join(
    f"{name} = {value}"
    for name, value in _LET_GO.items()
    if name not in ("parked", "wake_at", "cancel_requested")
)
_IDS = "(SELECT value FROM json_each(?))"  # a list of ids as one parameter


class SqliteStore(Store):
    """The store, with SQLite's hot path on one writer thread."""

    def __init__(self, engine: AsyncEngine, path: str) -> None:
        super().__init__(engine)
        self._writer = SqliteWorker(path, "flowcore-sqlite-writer", writes=True)
        self._reader = SqliteWorker(path, "flowcore-sqlite-reader", writes=False)
        event.listen(engine.sync_engine, "engine_disposed", self._engine_disposed)

    async def close(self) -> None:
        await asyncio.to_thread(self._stop)

    def _engine_disposed(self, _engine: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        self._writer.stop()
        self._reader.stop()

    def _write_job(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        return self._writer.submit(job)

    def _read_job(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        return self._reader.submit(job)

    # ------------------------------------------------------------------ reads

    async def _workflow_row(
        self, namespace: str, workflow_id: str, version: int | None
    ) -> StoredWorkflow | None:
        sql, args = (
            (_WORKFLOW_VERSION, (namespace, workflow_id, version))
            if version is not None
            else (_WORKFLOW_LATEST, (namespace, workflow_id))
        )
        return await self._read_job(lambda c: _first(_workflow, c.execute(sql, args)))

    async def count_queued(self) -> int:
        return await self._read_job(lambda c: int(c.execute(_COUNT_QUEUED).fetchone()[0]))

    async def run_by_idempotency_key(
        self, key: str, *, namespace: str = DEFAULT_NAMESPACE
    ) -> StoredRun | None:
        args = (namespace, key)
        return await self._read_job(lambda c: _first(_run, c.execute(_RUN_BY_KEY, args)))

    async def get_run(self, run_id: str) -> StoredRun | None:
        return await self._read_job(lambda c: _first(_run, c.execute(_GET_RUN, (run_id,))))

    async def cancel_requested(self, run_id: str) -> bool:
        def read(c: sqlite3.Connection) -> bool:
            row = c.execute(_CANCEL_REQUESTED, (run_id,)).fetchone()
            return bool(row and row[0])

        return await self._read_job(read)

    async def events_after(
        self, run_id: str, after_seq: int, limit: int = 500
    ) -> list[StoredEvent]:
        args = (run_id, after_seq, limit)
        return await self._read_job(lambda c: [_event(r) for r in c.execute(_EVENTS, args)])

    async def last_event_seq(self, run_id: str) -> int:
        return await self._read_job(lambda c: int(c.execute(_LAST_SEQ, (run_id,)).fetchone()[0]))

    async def next_wake_at(self) -> float | None:
        """Read on every poll of every dispatcher: one statement on the reader."""

        def read(c: sqlite3.Connection) -> float | None:
            value = c.execute(_NEXT_WAKE).fetchone()[0]
            return float(value) if value is not None else None

        return await self._read_job(read)

    # ----------------------------------------------------------------- writes

    async def _insert_run(self, **values: Any) -> tuple[StoredRun, bool]:
        row = StoredRun.from_mapping(values)
        args = (
            row.id, row.namespace, row.workflow_id, row.workflow_version, json_dumps(row.input),
            json_dumps(row.config), row.idempotency_key, row.request_hash, row.created_at,
            row.fork_of, json_dumps(row.vars_patch),
        )  # fmt: skip
        try:
            await self._write_job(lambda c: _execute(c, _CREATE_RUN, args))
        except sqlite3.IntegrityError as exc:
            taken = await self._taken(row.namespace, row.idempotency_key, row.request_hash, exc)
            return taken, False
        self._announce(RunQueued(row.id))
        return row, True

    async def _claim(self, owner: str, lease_seconds: float, limit: int) -> list[StoredRun]:
        """One statement on the writer, fair across namespaces (``Leases._claim``) from
        the head of each namespace's queue (see ``_CLAIM``); the one writer needs no
        lock, so the turns need no lookahead past ``limit``."""

        def claim(c: sqlite3.Connection) -> list[StoredRun]:
            now = time.time()
            args = {"owner": owner, "until": now + lease_seconds, "now": now, "limit": limit}
            return [_run(r) for r in c.execute(_CLAIM, args)]

        return await self._write_job(claim)

    async def _heartbeat(
        self, owner: str, leases: list[Lease], lease_seconds: float
    ) -> tuple[list[str], list[str]]:
        ids = [lease.run_id for lease in leases]

        def beat(c: sqlite3.Connection) -> tuple[list[str], list[str]]:
            until = time.time() + lease_seconds
            lost = [
                lease.run_id
                for lease in leases
                if not c.execute(_HEARTBEAT, (until, lease.run_id, owner, lease.epoch)).rowcount
            ]
            cancel = [r[0] for r in c.execute(_CANCELS, (json.dumps(ids),))]
            return lost, cancel

        return await self._write_job(beat)

    async def take_signals(self, run_ids: Sequence[str]) -> list[StoredSignal]:
        if not run_ids:
            return []
        ids = json.dumps(list(run_ids))

        def take(c: sqlite3.Connection) -> list[StoredSignal]:
            rows = [_signal(r) for r in c.execute(_SIGNALS, (ids,))]
            if rows:
                c.execute(_DELIVERED, (json.dumps([row.id for row in rows if row]),))
            return [replace(row, delivered=True) for row in rows]

        return await self._write_job(take)

    async def _commit_progress(self, lease: Lease, commit: Commit) -> None:
        """commit_progress on the writer: the fenced UPDATE of the run, then the rows,
        in the writer's transaction (a moved lease rolls back this write alone)."""
        records, events, status = commit.records, commit.events, commit.status
        current_nodes, outcome = commit.current_nodes, commit.outcome
        now = time.time()
        sets = ["updated_at = :now"]
        args: dict[str, Any] = {
            "id": lease.run_id, "owner": lease.owner, "epoch": lease.epoch, "now": now,
        }  # fmt: skip
        if events:
            sets.append("event_seq = max(event_seq, :event_seq)")
            args["event_seq"] = events[-1].seq
        if records:
            # the run's own checkpoints now supersede a resume request
            sets.append("checkpoint_seq = :checkpoint_seq, resume_from = NULL, vars_patch = NULL")
            args["checkpoint_seq"] = records[-1].sequence
        if outcome is not None:
            final, output, error = outcome
            sets.append(f"{_LET_GO_SQL}, status = :status, output = :output, error = :error")
            sets.append("finished_at = :now")
            args.update(status=final, output=json_dumps(output), error=json_dumps(error))
        else:
            if current_nodes is not None:
                sets.append("current_nodes = :current_nodes")
                args["current_nodes"] = json_dumps(current_nodes)
            if status is not None:
                sets.append("status = :status")
                args["status"] = status
        update = (
            f"UPDATE runs SET {', '.join(sets)} WHERE id = :id AND owner = :owner "
            f"AND epoch = :epoch AND status IN {_ACTIVE}"
        )
        checkpoints = [
            (r.run_id, r.sequence, r.parent, r.status, r.event_seq, r.created_at,
             json_dumps(_record_json(r)))
            for r in records
        ]  # fmt: skip
        results = [
            (lease.run_id, node_id, 0, n.status, json_dumps(n.output), n.error, n.error_kind,
             n.attempts, n.started_at, n.finished_at, now)
            for r in records
            for node_id, n in r.completed.items()
        ]  # fmt: skip
        rows = [
            (lease.run_id, e.seq, e.type.value, e.node_id, json_dumps(e.data), e.timestamp)
            for e in events
        ]

        def write(c: sqlite3.Connection) -> None:
            if not c.execute(update, args).rowcount:
                raise LeaseLost(f"run {lease.run_id!r} is no longer held by {lease.owner!r}")
            if checkpoints:
                c.executemany(_INSERT_CHECKPOINT, checkpoints)
            if results:
                c.executemany(_INSERT_RESULT, results)
            if rows:
                c.executemany(_INSERT_EVENT, rows)

        await self._write_job(write)

    async def _finish_run(
        self,
        lease: Lease,
        status: str,
        output: Any,
        error: dict[str, Any] | None,
        parked: bool,
        wake_at: float | None,
    ) -> None:
        now = time.time()
        args = {
            "id": lease.run_id, "owner": lease.owner, "epoch": lease.epoch,
            "status": status, "output": json_dumps(output), "error": json_dumps(error),
            "finished_at": now if status in TERMINAL else None, "now": now,
            "parked": int(parked), "wake_at": wake_at,
        }  # fmt: skip
        sql = _FINISH.format(sources=sql_list(sources_of(status)))

        def finish(c: sqlite3.Connection) -> None:
            if not c.execute(sql, args).rowcount:
                raise LeaseLost(f"run {lease.run_id!r} is no longer held by {lease.owner!r}")

        await self._write_job(finish)


def _execute(connection: sqlite3.Connection, sql: str, args: Any) -> None:
    connection.execute(sql, args)


# ----------------------------------------------------------------------- statements

_RUN_COLUMNS = _columns(Run)
_WORKFLOW_COLUMNS = _columns(WorkflowVersion)
_COUNT_QUEUED = f"SELECT count(*) FROM runs WHERE status = '{QUEUED}'"
_CANCEL_REQUESTED = "SELECT cancel_requested FROM runs WHERE id = ?"
_LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM events WHERE run_id = ?"
_NEXT_WAKE = f"SELECT min(wake_at) FROM runs WHERE status = '{WAITING}' AND parked"
_GET_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?"
_RUN_BY_KEY = f"SELECT {_RUN_COLUMNS} FROM runs WHERE namespace = ? AND idempotency_key = ?"
_WORKFLOW_VERSION = (
    f"SELECT {_WORKFLOW_COLUMNS} FROM workflow_versions "
    "WHERE namespace = ? AND workflow_id = ? AND version = ?"
)
_WORKFLOW_LATEST = (
    f"SELECT {_WORKFLOW_COLUMNS} FROM workflow_versions WHERE namespace = ? "
    "AND workflow_id = ? ORDER BY version DESC LIMIT 1"
)
_EVENTS = (
    f"SELECT {_columns(EventRow)} FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_CREATE_RUN = f"""
INSERT INTO runs (id, namespace, workflow_id, workflow_version, status, input, config,
    idempotency_key, request_hash, created_at, updated_at, epoch, claims, event_seq,
    checkpoint_seq, fork_of, vars_patch, cancel_requested, parked)
VALUES (?1, ?2, ?3, ?4, '{QUEUED}', ?5, ?6, ?7, ?8, ?9, ?9, 0, 0, 0, 0, ?10, ?11, 0, 0)
"""
# a run's turn: the runs its namespace holds + its rank in it (see ``Leases._claim``).
# A run past the first :limit of its namespace's queue has a turn past :limit, so the
# candidates are the first :limit queued runs of each namespace, read from the head of
# ``ix_runs_queue`` (``walk`` finds the namespaces that have queued runs, one index probe
# each, each the next after the last from '', below every string), and the stale runs,
# which are few: leases that ran out (a lease is an owner and an until, set and cleared
# together) and parked runs that are due. INDEXED BY: SQLite has no statistics here and
# would take the status index, reading every waiting run
_CLAIM = f"""
WITH RECURSIVE walk (namespace) AS (
    SELECT ''
    UNION ALL
    SELECT (SELECT r.namespace FROM runs r WHERE r.status = '{QUEUED}'
        AND r.namespace > walk.namespace ORDER BY r.namespace LIMIT 1)
    FROM walk WHERE walk.namespace IS NOT NULL
), claimable AS (
    SELECT runs.id, runs.namespace, runs.created_at FROM walk JOIN runs
    ON runs.rowid IN (
        SELECT head.rowid FROM runs head
        WHERE head.status = '{QUEUED}' AND head.namespace = walk.namespace
        ORDER BY head.created_at, head.id LIMIT :limit
    )
    UNION
    SELECT id, namespace, created_at FROM runs INDEXED BY ix_runs_owner
    WHERE owner IS NOT NULL AND status IN {_ACTIVE} AND lease_until < :now
    UNION
    SELECT id, namespace, created_at FROM runs INDEXED BY ix_runs_wake
    WHERE status = '{WAITING}' AND parked AND wake_at <= :now
), ranked AS (
    SELECT id, namespace, created_at,
        row_number() OVER (PARTITION BY namespace ORDER BY created_at, id) AS rank
    FROM claimable
), held AS (
    SELECT namespace, count(*) AS n FROM runs INDEXED BY ix_runs_owner
    WHERE owner IS NOT NULL AND status IN {_ACTIVE} AND lease_until >= :now
    GROUP BY namespace
)
UPDATE runs SET status = '{RUNNING}', owner = :owner, lease_until = :until,
    epoch = epoch + 1, claims = claims + 1, started_at = coalesce(started_at, :now),
    updated_at = :now, parked = 0, wake_at = NULL
WHERE id IN (
    SELECT r.id FROM ranked r LEFT JOIN held h ON h.namespace = r.namespace
    WHERE r.rank <= :limit
    ORDER BY coalesce(h.n, 0) + r.rank, r.created_at, r.id
    LIMIT :limit
)
RETURNING {_RUN_COLUMNS}
"""
_HEARTBEAT = (
    "UPDATE runs SET lease_until = ? "
    f"WHERE id = ? AND owner = ? AND epoch = ? AND status IN {_ACTIVE}"
)
_CANCELS = f"SELECT id FROM runs WHERE id IN {_IDS} AND cancel_requested"
_SIGNALS = (
    f"SELECT {_columns(SignalRow)} FROM signals "
    f"WHERE run_id IN {_IDS} AND NOT delivered ORDER BY id"
)
_DELIVERED = f"UPDATE signals SET delivered = 1 WHERE id IN {_IDS}"
_FINISH = f"""
UPDATE runs SET status = :status, output = :output, error = :error,
    finished_at = :finished_at, {_LET_GO_BUT_PARKING}, updated_at = :now,
    parked = :parked, cancel_requested = :parked AND cancel_requested,
    wake_at = CASE WHEN :parked AND (cancel_requested OR EXISTS (
        SELECT 1 FROM signals WHERE signals.run_id = :id AND NOT signals.delivered))
        THEN :now ELSE :wake_at END
WHERE id = :id AND owner = :owner AND epoch = :epoch AND status IN {{sources}}
"""
_INSERT_CHECKPOINT = (
    "INSERT OR IGNORE INTO checkpoints (run_id, sequence, parent, status, event_seq, "
    "created_at, record) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RESULT = (
    "INSERT OR IGNORE INTO node_results (run_id, node_id, iteration, status, output, error, "
    "error_kind, attempts, started_at, finished_at, committed_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (run_id, seq, type, node_id, data, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
