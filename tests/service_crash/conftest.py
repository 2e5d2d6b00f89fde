"""Harness for the real-process durability tests: a fresh Postgres database per test,
Flowcore servers as real subprocesses (``python -m app.cli serve``), a side-effect ledger
the ``ledger`` plugin nodes append to, and polling helpers with deadlines.

Postgres: ``FLOWCORE_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
names an administrative database on which each test creates and drops its own
``flowcore_crash_<pid>_<n>`` database (kept for a post-mortem with
``FLOWCORE_TEST_KEEP_DB=1``). With ``CI=true`` an unreachable server fails the
tests; elsewhere they are skipped.

Every server's stderr (uvicorn and Flowcore logs) goes to ``<tmp_path>/<replica>-<n>.log``;
the path is in every failure message about a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ADMIN_DSN = os.environ.get("FLOWCORE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: a guard against a server that never gets ready; never a timing assertion
READY_DEADLINE = 30.0
#: what the durability tests run with: short leases, so a dead replica's runs are taken
#: over within seconds
SERVER_ENV = {
    "FLOWCORE_AUTH": "disabled",
    "FLOWCORE_LEASE_SECONDS": "2",
    "FLOWCORE_HEARTBEAT_SECONDS": "0.5",
    "FLOWCORE_POLL_SECONDS": "0.2",
    "FLOWCORE_EVENT_FLUSH_SECONDS": "0.1",
    "FLOWCORE_PLUGINS": "ledger_nodes",
}

# the names ``ledger_nodes`` uses (not imported from there: importing it would register
# the ``ledger`` node type and its fault injection in the pytest process too)
LEDGER_ENV = "FLOWCORE_TEST_LEDGER"
GATE_ENV = "FLOWCORE_TEST_GATE"
FAULT_ENV = "FLOWCORE_TEST_FAULT"
STALL_AFTER_FINAL_CHECKPOINT = "stall-after-final-checkpoint"
FINAL_CHECKPOINT_MARKER = "@final_checkpoint"
STALL_CHECKPOINT_OF = "stall-checkpoint-of"
CHECKPOINT_STALLED_MARKER = "@checkpoint_stalled"

_databases = itertools.count()


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _unavailable(reason: str) -> NoReturn:
    message = (
        f"Postgres is unreachable at {ADMIN_DSN} ({reason}). Start it (trust auth, database "
        "`test`) or point FLOWCORE_TEST_POSTGRES at an administrative database to run "
        "the service crash tests."
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True, slots=True)
class Database:
    """A fresh database for one test."""

    name: str
    #: for asyncpg
    dsn: str

    @property
    def sqlalchemy_url(self) -> str:
        """What the server's FLOWCORE_DATABASE_URL gets."""
        return "postgresql+asyncpg://" + self.dsn.split("://", 1)[1]

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.dsn)
        try:
            rows: list[asyncpg.Record] = await connection.fetch(query, *args)
            return rows
        finally:
            await connection.close()


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _unavailable(f"{type(exc).__name__}: {exc}")
    name = f"flowcore_crash_{os.getpid()}_{next(_databases)}"
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield Database(name, _with_database(ADMIN_DSN, name))
    finally:
        try:
            if os.environ.get("FLOWCORE_TEST_KEEP_DB") != "1":
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# ---------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Server:
    """One ``flowcore serve`` process."""

    replica_id: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        # idle connections are dropped well before uvicorn's 5 s keep-alive timeout, so a
        # request never goes out on a connection the server is closing at that moment
        self.client = httpx.AsyncClient(
            base_url=self.base_url, timeout=30.0, limits=httpx.Limits(keepalive_expiry=1.0)
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        return f"server {self.replica_id} on :{self.port} (log {self.log_path})"

    def kill(self) -> None:
        """SIGKILL the server and every process it started (``--workers``: uvicorn's
        worker processes would otherwise outlive it), and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: see spawn
        self.proc.wait(timeout=10)

    async def wait_ready(self, deadline: float = READY_DEADLINE) -> None:
        end = time.monotonic() + deadline
        last = "no answer yet"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{self.describe()} exited with {self.proc.returncode} before it was "
                    f"ready:\n{self.log_tail()}"
                )
            try:
                response = await self.client.get("/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}"
            await asyncio.sleep(0.05)
        pytest.fail(f"{self.describe()} not ready after {deadline}s ({last}):\n{self.log_tail()}")


class Servers:
    """Starts servers on one database and cleans every one of them up."""

    def __init__(self, database: Database, tmp_path: Path, ledger: Path) -> None:
        self.database = database
        self.tmp_path = tmp_path
        self.ledger = ledger
        #: ``ledger`` nodes with ``gate`` wait until this file exists
        self.gate = tmp_path / "gate"
        self.started: list[Server] = []

    def env(self, replica_id: str, overrides: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCORE_")}
        env.update(SERVER_ENV)
        env.update(
            {
                "FLOWCORE_DATABASE_URL": self.database.sqlalchemy_url,
                "FLOWCORE_REPLICA_ID": replica_id,
                LEDGER_ENV: str(self.ledger),
                GATE_ENV: str(self.gate),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(overrides)
        return env

    def spawn(self, replica_id: str, *args: str, **overrides: str) -> Server:
        """Start ``python -m app.cli serve [args]`` (it migrates, then serves) on a free
        port."""
        port = free_port()
        log_path = self.tmp_path / f"{replica_id}-{len(self.started)}.log"
        log = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(port), *args],
                cwd=ROOT,
                env=self.env(replica_id, overrides),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group to kill as a whole
            )
        except BaseException:
            log.close()
            raise
        server = Server(replica_id, port, proc, log_path, log)
        self.started.append(server)
        return server

    async def start(self, replica_id: str, *args: str, **overrides: str) -> Server:
        """Spawn a server and wait until its ``/readyz`` says 200."""
        server = self.spawn(replica_id, *args, **overrides)
        await server.wait_ready()
        return server

    async def close(self) -> None:
        for server in self.started:
            try:
                server.kill()
            finally:
                await server.client.aclose()
                server.log.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.txt"


@pytest.fixture
async def servers(database: Database, tmp_path: Path, ledger: Path) -> AsyncIterator[Servers]:
    pool = Servers(database, tmp_path, ledger)
    try:
        yield pool
    finally:
        await pool.close()


# ---------------------------------------------------------------------- helpers


def ledger_entries(path: Path) -> list[tuple[str, str]]:
    """``(run_id, node_id)`` per complete ledger line, in order."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # complete lines only
    return [(run_id, node_id) for run_id, node_id in (line.split(" ", 1) for line in lines)]


def ledger_counts(path: Path) -> Counter[tuple[str, str]]:
    return Counter(ledger_entries(path))


async def poll_until(
    probe: Callable[[], Awaitable[bool]], deadline: float, what: str, interval: float = 0.05
) -> None:
    """Await ``probe`` until it is true; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        if await probe():
            return
        if time.monotonic() >= end:
            # not an AssertionError: a harness timeout is never a test's expected failure
            pytest.fail(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(interval)


def chain_workflow(
    workflow_id: str, length: int, sleep: float, *, gated: bool = False
) -> dict[str, Any]:
    """``n00 -> n01 -> ...`` of ``ledger`` nodes; the output is the last node's depth.
    ``gated``: ``n00`` waits for the servers' gate to open."""
    ids = [f"n{i:02d}" for i in range(length)]
    configs = [{"sleep": sleep, "gate": gated and i == 0} for i in range(length)]
    return {
        "id": workflow_id,
        "name": f"{length} ledger nodes in a chain",
        "nodes": [
            {"id": node_id, "type": "ledger", "config": config}
            for node_id, config in zip(ids, configs, strict=True)
        ],
        "edges": [{"source": a, "target": b} for a, b in itertools.pairwise(ids)],
        "output": {
            "last": f"nodes.{ids[-1]}.output.node",
            "depth": f"nodes.{ids[-1]}.output.depth",
        },
    }


def check_event_log(run_id: str, events: list[dict[str, Any]], terminal: str) -> None:
    """Sequence numbers 1..N without a gap or a duplicate, one ``run.started``, exactly
    one terminal event and it is the last."""
    seqs = [e["seq"] for e in events]
    types = [e["type"] for e in events]
    log = f"run {run_id}: {list(zip(seqs, types, strict=True))}"
    assert seqs == list(range(1, len(seqs) + 1)), log
    assert types.count("run.started") == 1, log
    terminals = [t for t in types if t in TERMINAL_EVENTS]
    assert terminals == [terminal], log
    assert types[-1] == terminal, log


TERMINAL_EVENTS = ("run.succeeded", "run.failed", "run.cancelled")


def finished_twice(events: list[dict[str, Any]]) -> bool:
    """A log that ends a run twice: a terminal event that is not the last one, followed by
    ``run.resumed`` (another replica took the run over after it had ended). It happened
    when the outcome and the final checkpoint committed separately, or when events were
    flushed ahead of their checkpoint."""
    types = [e["type"] for e in events]
    first = next((i for i, t in enumerate(types) if t in TERMINAL_EVENTS), None)
    return first is not None and types[first + 1 : first + 2] == ["run.resumed"]
