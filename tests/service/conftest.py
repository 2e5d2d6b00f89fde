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
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from app import config as app_config
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
            # the access tests turn API keys on (tests/service/test_access.py)
            "auth": "disabled",
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


# ------------------------------------------------ the real server as a process of its own


#: loggers of request handling: an error logged there is a request the server failed
REQUEST_LOGGERS = frozenset({"flowcore.api", "uvicorn.error"})
_APP_FRAME = re.compile(r'File "[^"]*/(app/[^"]+)", line (\d+)')
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Group)\b")


@dataclass(slots=True)
class ServerProcess:
    """A ``flowcore serve`` process: its base URL and its log (JSON lines)."""

    base_url: str
    log: Path

    def logged_errors(self) -> list[dict[str, Any]]:
        """The log entries of level error and above so far."""
        entries: list[dict[str, Any]] = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # not one of the JSON lines: a crash would print such text
                entry = {"level": "error", "logger": "(stderr)", "message": line}
            if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                entries.append(entry)
        return entries

    def error_report(self) -> tuple[bool, str]:
        """What the server logged at level error (a handler's crash, a stream that broke
        after its headers were sent, ...), deduplicated by exception (its numbers masked)
        and the app's innermost frame: whether request handling failed, and a report."""
        seen: dict[tuple[str, str], tuple[set[str], list[str]]] = {}
        for entry in self.logged_errors():
            logger = str(entry.get("logger", "?"))
            lines = str(entry.get("message", "")).strip().splitlines() or [""]
            what, example, where = lines[0][:200], " ".join(lines[1:2])[:200], ""
            exc = str(entry.get("exc", "")).strip()
            if exc:
                found = [line for line in exc.splitlines() if _EXCEPTION.match(line)]
                what = example = (found[-1] if found else exc.splitlines()[-1])[:200]
                frames = _APP_FRAME.findall(exc)
                if frames:
                    where = "{}:{}".format(*frames[-1])
            loggers, examples = seen.setdefault((re.sub(r"\d+", "N", what), where), (set(), []))
            loggers.add(logger)
            if example and example not in examples and len(examples) < 3:
                examples.append(example)
        failed = any(loggers & REQUEST_LOGGERS for loggers, _ in seen.values())
        report = [f"{len(seen)} distinct error(s) logged by the server:"]
        for (what, where), (loggers, examples) in sorted(seen.items()):
            at = f" at {where}" if where else ""
            report.append(f"--- {what}{at} [{', '.join(sorted(loggers))}]")
            report.extend(f"  * {example}" for example in examples)
        return failed, "\n".join(report)


def _environment(settings: Settings) -> dict[str, str]:
    """The process environment that makes ``Settings()`` equal ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCORE_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, dict | list):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"FLOWCORE_{name.upper()}"] = text
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_process(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``flowcore serve`` on a free port and wait until it answers; a port taken
    between choosing and binding it is chosen again."""
    root = Path(app_config.__file__).resolve().parents[1]
    for _ in range(3):
        port = _free_port()
        command = [sys.executable, "-m", "app.cli", "serve", "--no-migrate"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        with log.open("ab") as sink:
            process = subprocess.Popen(
                command, cwd=root, env=_environment(settings), stdout=sink, stderr=subprocess.STDOUT
            )
        # its own line, so that a server another test started on the same port is not it
        running = f"Uvicorn running on http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            if running in log.read_text(encoding="utf-8", errors="replace"):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        return process, port
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()
            raise RuntimeError(f"the server did not start within 30 s:\n{_tail(log)}")
        if "address already in use" not in log.read_text(encoding="utf-8", errors="replace"):
            raise RuntimeError(f"the server exited with {process.returncode}:\n{_tail(log)}")
    raise RuntimeError(f"no free port for the server:\n{_tail(log)}")


@contextmanager
def run_server_process(settings: Settings, log: Path) -> Iterator[ServerProcess]:
    """``python -m app.cli serve`` (the real CLI: uvicorn, uvloop, JSON logs into ``log``)
    on 127.0.0.1 and a free port. For synchronous clients (schemathesis' ``requests``,
    hypothesis tests): nothing of the server shares the test's process, its threads or its
    interpreter state."""
    process, port = _start_process(settings, log)
    try:
        yield ServerProcess(f"http://127.0.0.1:{port}", log)
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(f"the server did not stop within 30 s:\n{_tail(log)}") from None


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@pytest.fixture
def serve_process(tmp_path: Path) -> Callable[[Settings], AbstractContextManager[ServerProcess]]:
    """``with serve_process(settings) as server``: the real server as a process, its log
    in the test's temporary directory."""

    def serve(settings: Settings) -> AbstractContextManager[ServerProcess]:
        return run_server_process(settings, tmp_path / f"server-{uuid.uuid4().hex[:8]}.log")

    return serve
