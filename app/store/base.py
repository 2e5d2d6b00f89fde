"""The store's base: its sessions, its notifications, and what its parts share.

``Store`` (``repository``) is made of parts by concern, each a module: workflows
(``workflows``), runs and their requests (``runs``), the queue and its leases
(``leases``), fenced progress (``progress``) and the logs (``logs``). Each operation owns
its transaction; no session and no ORM row leaves the store (``records``).

Run statuses change only through ``lifecycle.TRANSITIONS``, with compare-and-set
updates whose sources come from there, and every write made on behalf of a running run
is *fenced* on the run's lease (owner and epoch): a replica that lost its lease (paused
past it, or its run was taken over) writes nothing and learns so from
:class:`LeaseLost`. The errors are ``app.store.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.engine import CheckpointRecord, NodeCheckpoint
from app.store.db import db_now, insert_ignore, ping, sessionmaker
from app.store.models import EventRow
from app.store.notifications import (
    Notification,
    Notifier,
)
from app.store.records import _Record

R = TypeVar("R", bound=_Record)
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


class StoreBase:
    """What every part of the store shares: the engine, sessions, the notifier."""

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


async def _last_seq(session: AsyncSession, run_id: str) -> int:
    value = (
        await session.execute(select(func.max(EventRow.seq)).where(EventRow.run_id == run_id))
    ).scalar_one()
    return int(value or 0)


def one(record: type[R], row: Any) -> R | None:
    """``row`` as a ``record`` (None stays None)."""
    return None if row is None else record.of(row)


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
