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


async def create_pg_pool(engine: AsyncEngine, max_size: int) -> Any:
    """An asyncpg pool on ``engine``'s Postgres database for the store's hot path.

    Statements sent through it are plain asyncpg: no ORM, no SQLAlchemy compilation, a
    prepared-statement cache per connection, and one round trip for a statement that is
    its own transaction (no BEGIN/COMMIT around it). JSON and JSONB travel as text: the
    store hands over JSON it encoded with :func:`json_dumps`, reads decode with
    ``json.loads``."""
    import asyncpg

    url = engine.url.set(drivername="postgresql")
    # options SQLAlchemy's dialect understands but a libpq DSN does not
    query = {k: v for k, v in url.query.items() if k not in _SQLALCHEMY_ONLY_OPTIONS}
    dsn = url.set(query=query).render_as_string(hide_password=False)

    async def init(connection: Any) -> None:
        for name in ("json", "jsonb"):
            await connection.set_type_codec(
                name, encoder=_identity, decoder=json.loads, schema="pg_catalog", format="text"
            )

    return await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        init=init,
        reset=_keep_session,
        max_inactive_connection_lifetime=300.0,
    )


async def _keep_session(_connection: Any) -> None:
    """Released connections skip asyncpg's reset query (``RESET ALL; UNLISTEN *; ...``,
    a round trip and a transaction per use): the store changes no session state on
    them. An open transaction is still rolled back by the pool before this runs."""


_SQLALCHEMY_ONLY_OPTIONS = frozenset(
    {"prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback"}
)


def _identity(value: str) -> str:
    return value


def _json_dumps(value: Any) -> str:
    # node outputs are meant to be JSON; anything else is stored as its text, not lost
    return _ENCODE(value)


#: one encoder for every value (``json.dumps`` with options builds a new one per call)
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode
#: JSON as the store writes it (the engine's ``json_serializer`` too)
json_dumps = _json_dumps


def _sqlite_begin(connection: Any) -> None:
    # reads (``read_only`` engines) begin deferred: in WAL mode they then never wait for
    # a writer, however long its transaction
    if connection.get_execution_options().get("read_only"):
        connection.exec_driver_sql("BEGIN")
    else:
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
