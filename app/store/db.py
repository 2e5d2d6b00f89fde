"""The database engine and the few places where Postgres and SQLite differ."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import event, func, literal_column, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.expression import ColumnElement

from app.store.models import Base


def create_engine(url: str, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    """An async engine for ``postgresql+asyncpg://`` or ``sqlite+aiosqlite://`` URLs."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, json_serializer=_json_dumps)
        # WAL lets the API read while the dispatcher writes; busy_timeout waits for locks
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        # BEGIN IMMEDIATE: a transaction that reads and then writes (a claim) takes the
        # write lock up front, so two of them cannot deadlock upgrading their locks
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        # no ping before every checkout (a round trip per transaction): a connection
        # that died is invalidated on its first error (journal commits retry then)
        pool_recycle=1800,
        json_serializer=_json_dumps,
    )


def _json_dumps(value: Any) -> str:
    # node outputs are meant to be JSON; anything else is stored as its text, not lost
    return json.dumps(value, separators=(",", ":"), default=str)


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions begin in _sqlite_begin
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def db_now(engine: AsyncEngine) -> ColumnElement[Any]:
    """The database clock as epoch seconds: leases are compared on one clock, whatever
    the replicas' clocks say."""
    if is_postgres(engine):
        return func.extract("epoch", func.clock_timestamp())
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


def insert_ignore(engine: AsyncEngine, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING, for rows written exactly once."""
    insert = pg_insert if is_postgres(engine) else sqlite_insert
    return insert(table)


async def create_all(engine: AsyncEngine) -> None:
    """Create the tables directly (tests of the store; the service uses migrations)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def ping(engine: AsyncEngine) -> float:
    """Round-trip the database; returns the latency in seconds."""
    started = time.perf_counter()
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return time.perf_counter() - started


def greatest(engine: AsyncEngine, left: Any, right: Any) -> ColumnElement[Any]:
    """The larger of two values (GREATEST on Postgres, scalar MAX on SQLite)."""
    return func.greatest(left, right) if is_postgres(engine) else func.max(left, right)
