"""Scratch databases and what they cost: a fresh Postgres database (created on the admin
database, dropped afterwards) or SQLite file per measurement, migrated to head; the
transactions a database counted and the CPU its backends used."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from app.store.migrate import upgrade_async
from bench.support.machine import cpu_seconds, log

#: the database scratch databases are created from (trust auth on this project's machines)
PG_ADMIN_DSN = os.environ.get("FLOWCORE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def postgres_unavailable() -> str | None:
    """None if the admin database answers, else why not."""
    import asyncpg

    try:
        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


async def postgres_version() -> str:
    import asyncpg

    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


def _database_of(url: str) -> str:
    return url.rpartition("/")[2]


def plain_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` -> ``postgresql://...`` (for psycopg and asyncpg)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def drop_stale_databases() -> list[str]:
    """Drop the scratch databases of benchmark processes that no longer exist (killed
    before they could drop their own)."""
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN_DSN)
    dropped = []
    try:
        names = await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname ~ '^flowcore_bench_[0-9]+$'"
        )
        for (name,) in names:
            pid = int(name.rpartition("_")[2])
            if pid != os.getpid() and not _alive(pid):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                dropped.append(name)
    finally:
        await admin.close()
    return dropped


@contextlib.asynccontextmanager
async def scratch_postgres(migrate: bool = True) -> AsyncIterator[str]:
    """A fresh database ``flowcore_bench_<pid>``, migrated to head unless told not to,
    dropped on the way out. Yields its ``postgresql+asyncpg://`` URL."""
    import asyncpg

    name = f"flowcore_bench_{os.getpid()}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_DSN.rpartition("/")[0].replace("postgresql://", "postgresql+asyncpg://")
        try:
            url = f"{base}/{name}"
            if migrate:
                await upgrade_async(url)
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def pg_transactions(url: str) -> int:
    """Transactions (commits + rollbacks) the database behind ``url`` has counted.
    Backends report theirs when they end, so read this after closing the pools."""
    import asyncpg

    await asyncio.sleep(0.2)  # let the backends that just closed report
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        value = await admin.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            _database_of(url),
        )
        return int(value or 0)
    finally:
        await admin.close()


async def pg_backends(url: str) -> dict[int, float]:
    """The server processes connected to the database behind ``url``: pid -> the CPU
    seconds each has used so far (Linux /proc; the server runs on this machine). Read
    before and after a batch, the difference is what Postgres spent on it in those
    backends (the WAL writer, checkpointer and the like are not counted)."""
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", _database_of(url)
        )
    finally:
        await admin.close()
    return {int(row["pid"]): cpu_seconds(int(row["pid"])) for row in rows}


def backend_cpu(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the backends in ``after`` used since ``before`` (new ones: all)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@contextlib.asynccontextmanager
async def scratch_sqlite() -> AsyncIterator[str]:
    """A fresh, migrated SQLite file in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="flowcore-bench-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await upgrade_async(url)
        yield url


@contextlib.asynccontextmanager
async def scratch_database(dialect: str) -> AsyncIterator[str]:
    """``dialect`` is "postgres" or "sqlite"."""
    if dialect == "postgres":
        async with scratch_postgres() as url:
            yield url
    else:
        async with scratch_sqlite() as url:
            yield url


async def postgres_ready() -> tuple[str | None, str]:
    """(None, the server's version) if Postgres answers, once the scratch databases of
    killed benchmarks are dropped; else (why not, a header cell saying so)."""
    problem = await postgres_unavailable()
    if problem is not None:
        return problem, f"unreachable ({problem})"
    if sys.platform == "linux":
        for name in await drop_stale_databases():
            log(f"dropped {name}, left behind by a benchmark that was killed")
    return None, await postgres_version()
