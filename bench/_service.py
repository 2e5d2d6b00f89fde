"""Helpers of the service benchmark (bench/http.py): tables, scratch databases, the
server subprocess, CPU and database accounting, the machine's load.

Self-contained on purpose: it shares nothing with the engine benchmarks' modules, so
either can change without the other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.store.migrate import upgrade_async
from bench.common import log

ROOT = Path(__file__).resolve().parent.parent
#: the database scratch databases are created from (trust auth on this project's machines)
PG_ADMIN_DSN = os.environ.get("FLOWCORE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``xs``, nearest rank; NaN if empty."""
    if not xs:
        return math.nan
    ordered = sorted(xs)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# ------------------------------------------------------------------------- databases


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


# ---------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """``python -m app.cli serve`` in a subprocess."""

    process: asyncio.subprocess.Process
    base_url: str
    log_path: Path
    name: str = "server"

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


def logged_problems(name: str, log_path: Path) -> list[str]:
    """The warnings and errors a server logged (its log is JSON lines; anything else on
    it, a traceback before logging was configured, counts too)."""
    found: list[str] = []
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                found.append(f"{name}: {line.strip()[:200]}")
            continue
        if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
            message = f"{entry.get('logger')}: {entry.get('message')}"
            exc = str(entry.get("exc") or "").strip().splitlines()
            if exc:
                message += f" ({exc[-1][:160]})"
            found.append(f"{name}: {entry['level']} {message[:300]}")
    return found


@contextlib.asynccontextmanager
async def serve(
    database_url: str,
    env: dict[str, str],
    *,
    name: str = "server",
    problems: list[str] | None = None,
) -> AsyncIterator[Server]:
    """The service on a free port against an already migrated database; ready once
    /readyz answers 200; stopped with SIGTERM (a graceful shutdown) on the way out, when
    the warnings and errors it logged go to ``problems`` (if given)."""
    port = free_port()
    environ = {
        **os.environ,
        "FLOWCORE_DATABASE_URL": database_url,
        "FLOWCORE_REPLICA_ID": f"bench-{name}-{port}",
        **env,
    }
    if "FLOWCORE_REDIS_URL" not in env:  # on Redis only where a row asks for it
        environ.pop("FLOWCORE_REDIS_URL", None)
    fd, log_name = tempfile.mkstemp(prefix=f"flowcore-bench-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-migrate"),
            cwd=ROOT,
            env=environ,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", Path(log_name), name)
    try:
        await wait_ready(server.base_url, process, server.log_path)
        yield server
    finally:
        stuck = False
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                stuck = True
                process.kill()
                await process.wait()
        if problems is not None:
            if stuck:
                problems.append(f"{name}: did not stop within 20 s of SIGTERM")
            problems += logged_problems(name, server.log_path)
        with contextlib.suppress(OSError):
            server.log_path.unlink()


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


async def wait_ready(
    base_url: str, process: asyncio.subprocess.Process, log_path: Path, timeout: float = 30.0
) -> None:
    """Until the server's /readyz says 200; raises with its log's tail if it exits."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as client:
        while True:
            if process.returncode is not None:
                tail = _log_tail(log_path)
                raise RuntimeError(f"the server exited ({process.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in time")
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------- the machine


def wait_for_quiet(threshold: float, limit: float) -> None:
    """Wait, up to ``limit`` seconds, until the 1-minute load average is below
    ``threshold``: other work on the machine skews every number measured here."""
    started = time.monotonic()
    announced = False
    while (load := os.getloadavg()[0]) >= threshold:
        waited = time.monotonic() - started
        if waited >= limit:
            log(f"load average still {load:.2f} after {waited:.0f} s; measuring anyway")
            return
        if not announced:
            log(f"waiting for the 1-minute load average ({load:.2f}) to fall below {threshold}")
            announced = True
        time.sleep(5)
    if announced:
        log(f"load average {os.getloadavg()[0]:.2f} after {time.monotonic() - started:.0f} s")
