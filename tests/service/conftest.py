"""Fixtures for the service tests: a migrated database of each dialect and the real
HTTP server on an ephemeral port.

- ``database_url`` is parametrised over ``sqlite`` and ``postgres``. SQLite: a new file
  per test, migrated with Alembic. Postgres: one fresh database per test session
  (``flowcore_test_<pid>``, built by ``alembic upgrade head``, dropped at the end),
  isolated per test by truncating every table after it.
- Postgres is expected on 127.0.0.1:5432 (user ``postgres``, trust auth, database
  ``test``). With ``CI=true`` an unreachable server fails the tests; elsewhere they are
  skipped with a message that says how to enable them.
- ``serve(settings)`` runs ``create_app(settings)`` under uvicorn in a task of the test's
  event loop and yields an ``httpx.AsyncClient`` bound to it; ``client`` is that with
  the default test settings.

Alembic's environment runs its own event loop (``asyncio.run``), so migrations and the
administrative Postgres statements run in a worker thread, away from the test's loop.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.config import Settings
from app.main import create_app
from app.redis_link import RedisLink
from app.store.migrate import upgrade
from app.store.models import Base
from tests.redis_support import RedisServer
from tests.service.support import (
    PG_ADMIN_DSN,
    MakeSettings,
    Serve,
    in_thread,
    pg_execute,
    postgres_url,
    require_postgres,
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One fresh, migrated Postgres database for the whole session."""
    require_postgres()
    name = f"flowcore_test_{os.getpid()}"
    in_thread(pg_execute, PG_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    in_thread(pg_execute, PG_ADMIN_DSN, f'CREATE DATABASE "{name}"')
    url = postgres_url(name)
    try:
        in_thread(upgrade, url)
        yield url
    finally:
        in_thread(pg_execute, PG_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_all(url: str) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    in_thread(pg_execute, dsn, f"TRUNCATE {tables} RESTART IDENTITY")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each dialect."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'flowcore.db'}"
        in_thread(upgrade, url)
        yield url
        return
    url = request.getfixturevalue("postgres_database")
    assert isinstance(url, str)
    try:
        yield url
    finally:
        _truncate_all(url)


@pytest.fixture
def make_settings(database_url: str) -> MakeSettings:
    """Fast test settings on ``database_url``; keyword arguments override them."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "replica_id": f"test-{uuid.uuid4().hex[:8]}",
            "poll_seconds": 0.2,
            "heartbeat_seconds": 0.5,
            "lease_seconds": 3,
            "event_flush_seconds": 0.05,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@asynccontextmanager
async def run_server(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app under uvicorn on 127.0.0.1 and an ephemeral port."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(), name="uvicorn")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not server.started:
        if task.done():
            task.result()  # raises what the startup raised
            raise RuntimeError("uvicorn exited during startup")
        if loop.time() > deadline:
            server.should_exit = True
            await task
            raise RuntimeError("uvicorn did not start within 20 s")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(30.0)
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def serve() -> Serve:
    """``async with serve(settings) as client``: a server with custom settings."""
    return run_server


@pytest.fixture
async def client(make_settings: MakeSettings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a server with the default test settings on ``database_url``."""
    async with run_server(make_settings()) as http:
        yield http


# ------------------------------------------------------------ a private Redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop, restart, pause and resume."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_links(redis_server: RedisServer) -> AsyncIterator[list[RedisLink]]:
    """Two replicas' links to the private server, with short timeouts."""
    links = [RedisLink(redis_server.url, timeout=0.2, retry_seconds=0.1) for _ in range(2)]
    try:
        yield links
    finally:
        for link in links:
            await link.close()


# ------------------------------------------------ the real server in a thread of its own


@contextmanager
def run_server_in_thread(settings: Settings) -> Iterator[str]:
    """``run_server(settings)`` in a thread with an event loop of its own, for synchronous
    clients (schemathesis' ``requests``, hypothesis tests); yields the base URL."""
    started: queue.Queue[tuple[asyncio.AbstractEventLoop, asyncio.Event, str] | BaseException]
    started = queue.Queue()
    failures: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        async with run_server(settings) as http:
            started.put((asyncio.get_running_loop(), stop, str(http.base_url).rstrip("/")))
            await stop.wait()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the test's thread, never left unhandled
            failures.append(exc)
            started.put(exc)

    thread = threading.Thread(target=target, name="flowcore-server", daemon=True)
    thread.start()
    item = started.get(timeout=60)
    if isinstance(item, BaseException):
        thread.join(timeout=30)
        raise item
    loop, stop, base_url = item
    try:
        yield base_url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("the server thread did not stop within 30 s")
        if failures:
            raise failures[0]


@pytest.fixture
def serve_in_thread() -> Callable[[Settings], AbstractContextManager[str]]:
    """``with serve_in_thread(settings) as base_url``: the real server for sync clients."""
    return run_server_in_thread
