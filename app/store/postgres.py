"""``PostgresStore``: the store on Postgres, its hot path on asyncpg.

The operations every run makes (create, claim, heartbeat, read, commit progress,
finish, read events) are each ONE statement on an asyncpg pool: one round trip, no
BEGIN/COMMIT, no ORM, a prepared-statement cache per connection. The fenced progress
commit is one statement whose CTE updates the run on its lease and whose INSERTs read
from it, so a moved lease writes nothing. Notifications go out with ``NOTIFY`` in the
transaction of the change, and come in through ``LISTEN`` on a connection of their own.
Everything else is the portable ``Store``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util.concurrency import await_

from app.engine import NodeCheckpoint
from app.store.base import _record_json
from app.store.db import create_pg_pool, json_dumps
from app.store.errors import LeaseLost
from app.store.lifecycle import (
    LET_GO,
    QUEUED,
    TERMINAL,
    WAITING,
    sources_of,
)
from app.store.models import WorkflowVersion
from app.store.notifications import (
    FINISHED_PREFIX,
    QUEUED_PREFIX,
    Notification,
    RunQueued,
    encode,
)
from app.store.postgres_claims import PG_ACTIVE as _PG_ACTIVE
from app.store.postgres_claims import PG_NOW as _PG_NOW
from app.store.postgres_claims import RUN_COLUMNS as _RUN_COLUMNS
from app.store.postgres_claims import pg_claim
from app.store.progress import Commit
from app.store.records import DEFAULT_NAMESPACE, StoredEvent, StoredRun, StoredWorkflow
from app.store.repository import NOTIFY_CHANNEL, Lease, Store


class PostgresStore(Store):
    """The store, with Postgres's hot path."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.postgres = True
        self._listener: Any = None
        #: the asyncpg pool of the hot path (see ``_pg``), opened on first use
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._progress_sql: dict[tuple[bool, ...], str] = {}
        # the pool closes with the engine (``create_app`` disposes of the engine)
        event.listen(engine.sync_engine, "engine_disposed", self._engine_disposed)

    async def _pg(self) -> Any:
        """The asyncpg pool of the hot path (Postgres only): as many connections as the
        engine's pool allows (size + overflow). Every statement sent through it is a
        transaction of its own: one round trip, no BEGIN/COMMIT."""
        pool = self._pool
        if pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    sa_pool: Any = self.engine.pool
                    size = int(getattr(sa_pool, "size", lambda: 10)())
                    size += max(0, int(getattr(sa_pool, "_max_overflow", 10)))
                    self._pool = await create_pg_pool(self.engine, max(2, size))
                pool = self._pool
        return pool

    async def close(self) -> None:
        """Close the hot path's pool (the engine is the caller's to dispose of)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except Exception:
                pool.terminate()

    def _engine_disposed(self, _engine: Any) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:  # AsyncEngine.dispose runs this inside its greenlet: it may await
            await_(asyncio.wait_for(pool.close(), 5))
        except Exception:
            pool.terminate()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        yield  # Postgres's writers need no turn

    async def _notify(
        self, session: AsyncSession | AsyncConnection, notification: Notification
    ) -> None:
        # delivered to every listener when the transaction commits
        await session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": NOTIFY_CHANNEL, "payload": encode(notification)},
        )

    async def listen(self) -> bool:
        """LISTEN on a dedicated connection (outside the pool) and hand every
        notification to the notifier. False when the server refused: callers then rely
        on polling and local notifications."""
        if self._listener is not None:
            return True
        import asyncpg

        url = self.engine.url.set(drivername="postgresql")
        try:
            connection = await asyncpg.connect(url.render_as_string(hide_password=False))
        except (OSError, asyncpg.PostgresError):
            return False

        def forward(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            self.notifier.deliver(payload)

        await connection.add_listener(NOTIFY_CHANNEL, forward)
        self._listener = connection
        return True

    async def unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()

    async def _workflow_row(
        self, namespace: str, workflow_id: str, version: int | None
    ) -> StoredWorkflow | None:
        pool = await self._pg()
        if version is not None:
            record = await pool.fetchrow(_PG_WORKFLOW_VERSION, namespace, workflow_id, version)
        else:
            record = await pool.fetchrow(_PG_WORKFLOW_LATEST, namespace, workflow_id)
        return StoredWorkflow.from_mapping(record) if record is not None else None

    async def _insert_run(self, **values: Any) -> tuple[StoredRun, bool]:
        """The INSERT and its notification in one statement."""
        row = StoredRun.from_mapping(values)
        pool = await self._pg()
        try:
            await pool.execute(
                _PG_CREATE_RUN,
                row.id,
                row.namespace,
                row.workflow_id,
                row.workflow_version,
                json_dumps(row.input),
                json_dumps(row.config),
                row.idempotency_key,
                row.request_hash,
                row.created_at,
                row.fork_of,
                json_dumps(row.vars_patch),
                NOTIFY_CHANNEL,
            )
        except _unique_violation() as exc:
            taken = await self._taken(row.namespace, row.idempotency_key, row.request_hash, exc)
            return taken, False
        self._announce(RunQueued(row.id))
        return row, True

    async def count_queued(self) -> int:
        pool = await self._pg()
        return int(await pool.fetchval(_PG_COUNT_QUEUED))

    async def run_by_idempotency_key(
        self, key: str, *, namespace: str = DEFAULT_NAMESPACE
    ) -> StoredRun | None:
        pool = await self._pg()
        return _run_from(await pool.fetchrow(_PG_RUN_BY_KEY, namespace, key))

    async def get_run(self, run_id: str) -> StoredRun | None:
        pool = await self._pg()
        return _run_from(await pool.fetchrow(_PG_GET_RUN, run_id))

    async def _claim(self, owner: str, lease_seconds: float, limit: int) -> list[StoredRun]:
        """One statement: the fair order of ``Leases._claim`` from the head of each
        namespace's queue (see ``postgres_claims``), lock, claim and return the rows."""
        pool = await self._pg()
        claimed: list[StoredRun] = []
        left = int(limit)
        while left > 0:
            # a power of two at a time: a handful of statements for every limit (the
            # prepared-statement cache keeps them and the hot path's), not one per limit
            size = 1 << (left.bit_length() - 1)
            records = await pool.fetch(pg_claim(size), owner, lease_seconds)
            claimed += [StoredRun.from_mapping(record) for record in records]
            if len(records) < size:
                break
            left -= size
        return claimed

    async def _heartbeat(
        self, owner: str, leases: list[Lease], lease_seconds: float
    ) -> tuple[list[str], list[str]]:
        """One statement for every lease."""
        pool = await self._pg()
        ids = [lease.run_id for lease in leases]
        record = await pool.fetchrow(
            _PG_HEARTBEAT, ids, [lease.epoch for lease in leases], owner, float(lease_seconds)
        )
        kept = set(record["kept"] or ())
        return [i for i in ids if i not in kept], list(record["cancel"] or ())

    async def cancel_requested(self, run_id: str) -> bool:
        pool = await self._pg()
        return bool(await pool.fetchval(_PG_CANCEL_REQUESTED, run_id))

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        """Errors of an asyncpg connection that died (the statement may be retried)."""
        import asyncpg

        return (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
        )

    async def _commit_progress(self, lease: Lease, commit: Commit) -> None:
        """commit_progress on Postgres: ONE statement, so one transaction and one round
        trip. The fenced UPDATE of the run is a CTE the INSERTs select from: when the
        fence matches no row (the lease moved), they insert nothing."""
        records, events, status = commit.records, commit.events, commit.status
        current_nodes, outcome = commit.current_nodes, commit.outcome
        now = time.time()
        run_id = lease.run_id
        if outcome is not None:  # the outcome sets both
            status = current_nodes = None
        args: list[Any] = [run_id, lease.owner, lease.epoch, now]
        results: list[tuple[str, NodeCheckpoint]] = []
        if records:
            results = [item for r in records for item in r.completed.items()]
        key = (
            bool(records),
            bool(results),
            bool(events),
            status is not None,
            current_nodes is not None,
            outcome is not None,
        )
        sql = self._progress_sql.get(key)
        if sql is None:
            sql = self._progress_sql[key] = _pg_progress_sql(*key)
        if events:
            args.append(events[-1].seq)
        if records:
            args.append(records[-1].sequence)
        if current_nodes is not None:
            args.append(json_dumps(current_nodes))
        if status is not None:
            args.append(status)
        if outcome is not None:
            final, output, error = outcome
            args += [final, json_dumps(output), json_dumps(error), NOTIFY_CHANNEL]
        if records:
            args += [
                [r.sequence for r in records],
                [r.parent for r in records],
                [r.status for r in records],
                [r.event_seq for r in records],
                [r.created_at for r in records],
                [json_dumps(_record_json(r)) for r in records],
            ]
        if results:
            args += [
                [node_id for node_id, _ in results],
                [n.status for _, n in results],
                [json_dumps(n.output) for _, n in results],
                [n.error for _, n in results],
                [n.error_kind for _, n in results],
                [n.attempts for _, n in results],
                [n.started_at for _, n in results],
                [n.finished_at for _, n in results],
            ]
        if events:
            args += [
                [e.seq for e in events],
                [e.type.value for e in events],
                [e.node_id for e in events],
                [json_dumps(e.data) for e in events],
                [e.timestamp for e in events],
            ]
        pool = await self._pg()
        if not await pool.fetchval(sql, *args):
            raise LeaseLost(f"run {run_id!r} is no longer held by {lease.owner!r}")

    async def _finish_run(
        self,
        lease: Lease,
        status: str,
        output: Any,
        error: dict[str, Any] | None,
        parked: bool,
        wake_at: float | None,
    ) -> None:
        """The fenced UPDATE and its notification in one statement."""
        pool = await self._pg()
        done = await pool.fetchval(
            _PG_FINISH,
            lease.run_id,
            lease.owner,
            lease.epoch,
            sources_of(status),
            status,
            json_dumps(output),
            json_dumps(error),
            time.time() if status in TERMINAL else None,
            time.time(),
            NOTIFY_CHANNEL,
            parked,
            wake_at,
        )
        if not done:
            raise LeaseLost(f"run {lease.run_id!r} is no longer held by {lease.owner!r}")

    async def events_after(
        self, run_id: str, after_seq: int, limit: int = 500
    ) -> list[StoredEvent]:
        pool = await self._pg()
        return [
            StoredEvent.from_mapping(r)
            for r in await pool.fetch(_PG_EVENTS, run_id, after_seq, limit)
        ]

    async def last_event_seq(self, run_id: str) -> int:
        pool = await self._pg()
        return int(await pool.fetchval(_PG_LAST_EVENT_SEQ, run_id))

    async def next_wake_at(self) -> float | None:
        """Read on every poll of every dispatcher: one statement on the hot path."""
        pool = await self._pg()
        value = await pool.fetchval(_PG_NEXT_WAKE)
        return float(value) if value is not None else None


def _run_from(record: Any) -> StoredRun | None:
    return StoredRun.from_mapping(record) if record is not None else None


# ----------------------------------------------------------------------- statements

_WORKFLOW_COLUMNS = ", ".join(column.name for column in WorkflowVersion.__table__.columns)
#: the database clock as epoch seconds (see ``db_now``)


def _pg_value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == []:
        return "'[]'::jsonb"
    raise ValueError(f"no SQL literal for {value!r}")


#: ``lifecycle.LET_GO`` as SET clauses
_PG_LET_GO = [f"{name} = {_pg_value(value)}" for name, value in LET_GO.items()]
#: ... but for the parking columns and the cancellation (``finish_run`` sets those)
_PG_LET_GO_BUT_PARKING = ", ".join(
    f"{name} = {_pg_value(value)}"
    for name, value in LET_GO.items()
    if name not in ("parked", "wake_at", "cancel_requested")
)
_PG_COUNT_QUEUED = f"SELECT count(*) FROM runs WHERE status = '{QUEUED}'"
_PG_CANCEL_REQUESTED = "SELECT cancel_requested FROM runs WHERE id = $1"
_PG_LAST_EVENT_SEQ = "SELECT coalesce(max(seq), 0) FROM events WHERE run_id = $1"
_PG_NEXT_WAKE = f"SELECT min(wake_at) FROM runs WHERE status = '{WAITING}' AND parked"

_PG_CREATE_RUN = f"""
WITH created AS (
    INSERT INTO runs (id, namespace, workflow_id, workflow_version, status, input, config,
        idempotency_key, request_hash, created_at, updated_at, epoch, claims, event_seq,
        checkpoint_seq, fork_of, vars_patch, cancel_requested)
    VALUES ($1, $2, $3, $4, '{QUEUED}', $5::jsonb, $6::jsonb, $7, $8, $9, $9, 0, 0, 0, 0,
        $10, $11::jsonb, false)
    RETURNING id
)
SELECT pg_notify($12, '{QUEUED_PREFIX}' || id) FROM created
"""
_PG_GET_RUN = f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = $1"
_PG_RUN_BY_KEY = f"SELECT {_RUN_COLUMNS} FROM runs WHERE namespace = $1 AND idempotency_key = $2"
_PG_WORKFLOW_VERSION = (
    f"SELECT {_WORKFLOW_COLUMNS} FROM workflow_versions "
    "WHERE namespace = $1 AND workflow_id = $2 AND version = $3"
)
_PG_WORKFLOW_LATEST = (
    f"SELECT {_WORKFLOW_COLUMNS} FROM workflow_versions WHERE namespace = $1 "
    "AND workflow_id = $2 ORDER BY version DESC LIMIT 1"
)
_PG_HEARTBEAT = f"""
WITH kept AS (
    UPDATE runs SET lease_until = {_PG_NOW} + $4
    FROM unnest($1::text[], $2::int[]) AS lease(id, epoch)
    WHERE runs.id = lease.id AND runs.epoch = lease.epoch AND runs.owner = $3
        AND runs.status IN {_PG_ACTIVE}
    RETURNING runs.id
)
SELECT (SELECT array_agg(id) FROM kept) AS kept,
    (SELECT array_agg(id) FROM runs WHERE id = ANY($1::text[]) AND cancel_requested) AS cancel
"""
_PG_FINISH = f"""
WITH finished AS (
    UPDATE runs SET status = $5, output = $6::jsonb, error = $7::jsonb, finished_at = $8,
        {_PG_LET_GO_BUT_PARKING}, updated_at = $9,
        parked = $11, cancel_requested = $11 AND cancel_requested,
        wake_at = CASE WHEN $11 AND (cancel_requested OR EXISTS (
            SELECT 1 FROM signals WHERE signals.run_id = $1 AND NOT signals.delivered))
            THEN {_PG_NOW} ELSE $12 END
    WHERE id = $1 AND owner = $2 AND epoch = $3 AND status = ANY($4::text[])
    RETURNING id
)
SELECT count(pg_notify($10, '{FINISHED_PREFIX}' || id)) FROM finished
"""
_PG_EVENTS = (
    "SELECT run_id, seq, type, node_id, data, created_at FROM events "
    "WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)


def _pg_progress_sql(
    records: bool, results: bool, events: bool, status: bool, current: bool, outcome: bool
) -> str:
    """The statement of one shape of commit_progress (the shapes are few: cached)."""
    sets = ["updated_at = $4"]
    n = 4

    def param() -> str:
        nonlocal n
        n += 1
        return f"${n}"

    if events:
        sets.append(f"event_seq = greatest(event_seq, {param()})")
    if records:
        # the run's own checkpoints now supersede a resume request
        sets += [f"checkpoint_seq = {param()}", "resume_from = NULL", "vars_patch = NULL"]
    if current:
        sets.append(f"current_nodes = {param()}::jsonb")
    if status:
        sets.append(f"status = {param()}")
    notify = ""
    if outcome:  # (without ``status`` and ``current``: the outcome sets both)
        sets += [
            f"status = {param()}",
            f"output = {param()}::jsonb",
            f"error = {param()}::jsonb",
            "finished_at = $4",
            *_PG_LET_GO,
        ]
        notify = param()
    parts = [
        f"WITH fence AS (UPDATE runs SET {', '.join(dict.fromkeys(sets))} "
        f"WHERE id = $1 AND owner = $2 AND epoch = $3 AND status IN {_PG_ACTIVE} RETURNING id)"
    ]
    if records:
        a = [param() for _ in range(6)]
        parts.append(
            "checkpoint_rows AS (INSERT INTO checkpoints "
            "(run_id, sequence, parent, status, event_seq, created_at, record) "
            "SELECT fence.id, r.sequence, r.parent, r.status, r.event_seq, r.created_at, "
            "r.record::jsonb FROM fence, "
            f"unnest({a[0]}::int[], {a[1]}::int[], {a[2]}::text[], {a[3]}::int[], "
            f"{a[4]}::float8[], {a[5]}::text[]) "
            "AS r(sequence, parent, status, event_seq, created_at, record) "
            "ON CONFLICT DO NOTHING)"
        )
    if results:
        a = [param() for _ in range(8)]
        parts.append(
            "result_rows AS (INSERT INTO node_results (run_id, node_id, iteration, status, "
            "output, error, error_kind, attempts, started_at, finished_at, committed_at) "
            "SELECT fence.id, r.node_id, 0, r.status, r.output::jsonb, r.error, r.error_kind, "
            "r.attempts, r.started_at, r.finished_at, $4::float8 FROM fence, "
            f"unnest({a[0]}::text[], {a[1]}::text[], {a[2]}::text[], {a[3]}::text[], "
            f"{a[4]}::text[], {a[5]}::int[], {a[6]}::float8[], {a[7]}::float8[]) "
            "AS r(node_id, status, output, error, error_kind, attempts, started_at, "
            "finished_at) ON CONFLICT DO NOTHING)"
        )
    if events:
        a = [param() for _ in range(5)]
        parts.append(
            "event_rows AS (INSERT INTO events (run_id, seq, type, node_id, data, created_at) "
            "SELECT fence.id, e.seq, e.type, e.node_id, e.data::jsonb, e.created_at FROM fence, "
            f"unnest({a[0]}::int[], {a[1]}::text[], {a[2]}::text[], {a[3]}::text[], "
            f"{a[4]}::float8[]) AS e(seq, type, node_id, data, created_at) "
            "ON CONFLICT DO NOTHING)"
        )
    if outcome:
        select = f"SELECT count(pg_notify({notify}, '{FINISHED_PREFIX}' || id)) FROM fence"
    else:
        select = "SELECT count(*) FROM fence"
    return ",\n".join(parts) + "\n" + select


def _unique_violation() -> type[Exception]:
    import asyncpg

    error: type[Exception] = asyncpg.UniqueViolationError
    return error
