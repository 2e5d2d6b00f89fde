"""Helpers of the service tests: workflow builders, polling with deadlines, an SSE
parser, and running blocking or loop-owning code in a worker thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import asyncpg
import httpx
import pytest

from app.config import Settings

P = ParamSpec("P")
T = TypeVar("T")

#: ``serve(settings)``: an async context manager yielding a client of a running server
Serve = Callable[[Settings], AbstractAsyncContextManager[httpx.AsyncClient]]
#: ``make_settings(**overrides)``: the test settings on the test's database
MakeSettings = Callable[..., Settings]

PROBLEM = "application/problem+json"

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
HOW_TO_ENABLE = (
    "Postgres is not reachable on 127.0.0.1:5432; to run the Postgres tests start a "
    "Postgres there with trust auth for user 'postgres' and a database named 'test' "
    "(with CI=true these tests fail instead of being skipped)"
)
TERMINAL = ("succeeded", "failed", "cancelled")


def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn`` in a fresh thread (Alembic and ``asyncio.run`` need a loop of their
    own, and must not touch the test's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def pg_execute(dsn: str, *statements: str) -> None:
    """Run statements on a fresh asyncpg connection (no transaction: CREATE DATABASE)."""

    async def run() -> None:
        connection = await asyncpg.connect(dsn, timeout=5)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def postgres_url(database: str) -> str:
    return f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{database}"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


_postgres_error: list[str | None] = []


def require_postgres() -> None:
    """Skip (or, with CI=true, fail) the calling test when Postgres is unreachable."""
    if not _postgres_error:
        try:
            in_thread(pg_execute, PG_ADMIN_DSN, "SELECT 1")
            _postgres_error.append(None)
        except Exception as exc:
            _postgres_error.append(f"{type(exc).__name__}: {exc}")
    error = _postgres_error[0]
    if error is None:
        return
    if _in_ci():
        pytest.fail(f"CI=true and Postgres is unreachable ({error})", pytrace=False)
    pytest.skip(f"{HOW_TO_ENABLE} [{error}]")


# --------------------------------------------------------------------- workflows


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def transform(node_id: str, **outputs: str) -> dict[str, Any]:
    return {"id": node_id, "type": "transform", "config": {"output": outputs}}


def chain(workflow_id: str, *nodes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A definition whose nodes run one after another."""
    edges = [{"source": a["id"], "target": b["id"]} for a, b in itertools.pairwise(nodes)]
    return {"id": workflow_id, "nodes": list(nodes), "edges": edges, **extra}


def greet(workflow_id: str) -> dict[str, Any]:
    """One transform: ``{"greeting": "Hello, <input.name>"}``."""
    return chain(
        workflow_id,
        transform("hello", text="'Hello, ' + input.name"),
        output={"greeting": "nodes.hello.output.text"},
    )


async def post_workflow(client: httpx.AsyncClient, definition: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/workflows", json=definition)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def start_run(
    client: httpx.AsyncClient,
    workflow_id: str,
    input: Any = None,
    *,
    wait: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    params = {"wait": wait} if wait is not None else None
    response = await client.post(
        "/v1/runs", json={"workflow_id": workflow_id, "input": input, **extra}, params=params
    )
    assert response.status_code in (200, 202), response.text
    body: dict[str, Any] = response.json()
    return body


async def get_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def poll_run(
    client: httpx.AsyncClient,
    run_id: str,
    until: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> dict[str, Any]:
    """GET the run until ``until(run)`` holds; fails after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        run = await get_run(client, run_id)
        if until(run):
            return run
        if loop.time() > deadline:
            raise AssertionError(f"run {run_id} never got there; last seen: {run}")
        await asyncio.sleep(interval)


async def wait_status(
    client: httpx.AsyncClient, run_id: str, *statuses: str, timeout: float = 20.0
) -> dict[str, Any]:
    return await poll_run(client, run_id, lambda r: r["status"] in statuses, timeout=timeout)


async def finished(client: httpx.AsyncClient, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
    return await wait_status(client, run_id, *TERMINAL, timeout=timeout)


async def events_json(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """The run's whole logged event list, page after page."""
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        response = await client.get(
            f"/v1/runs/{run_id}/events",
            params={"cursor": cursor} if cursor else None,
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        page = response.json()
        events += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return events


async def wait_for_event(
    client: httpx.AsyncClient,
    run_id: str,
    type: str,
    node_id: str | None = None,
    *,
    timeout: float = 20.0,
) -> list[dict[str, Any]]:
    """Poll the event log until an event of ``type`` (of ``node_id``) is in it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        events = await events_json(client, run_id)
        if any(e["type"] == type and (node_id is None or e["node_id"] == node_id) for e in events):
            return events
        assert loop.time() < deadline, f"no {type} event for {node_id}: {events}"
        await asyncio.sleep(0.05)


def assert_problem(response: httpx.Response, status: int, type_suffix: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and a ``type`` ending so."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert str(body["type"]).endswith(type_suffix), body
    assert body["title"]
    assert "Traceback" not in response.text
    return body


# ---------------------------------------------------------------------------- SSE


@dataclass(slots=True)
class SSEFrame:
    """One dispatched server-sent event."""

    id: int
    event: str
    data: dict[str, Any]


@dataclass(slots=True)
class SSEReader:
    """An EventSource-style parser: ``field: value`` lines, a blank line dispatches,
    lines starting with ``:`` are comments (heartbeats) and are ignored."""

    frames: list[SSEFrame] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    _fields: dict[str, list[str]] = field(default_factory=dict)

    def feed(self, line: str) -> SSEFrame | None:
        """Feed one line (without its end of line); returns a frame when one completes."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        self._fields.setdefault(name, []).append(value)
        return None

    def _dispatch(self) -> SSEFrame | None:
        fields, self._fields = self._fields, {}
        if "data" not in fields:
            return None
        frame = SSEFrame(
            id=int(fields["id"][-1]),
            event=fields.get("event", ["message"])[-1],
            data=json.loads("\n".join(fields["data"])),
        )
        self.frames.append(frame)
        return frame


def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of an event stream (checked to be one); read them with ``read_sse``,
    in as many calls as needed."""
    assert response.status_code == 200, response.status_code
    assert response.headers["content-type"].startswith("text/event-stream")
    return response.aiter_lines()


async def read_sse(
    lines: AsyncIterator[str],
    *,
    reader: SSEReader | None = None,
    stop_after: int | None = None,
    until_comment: str | None = None,
) -> SSEReader:
    """Read frames until the stream ends, or until ``stop_after`` frames were read in
    all, or until a comment containing ``until_comment`` arrived."""
    reader = reader or SSEReader()
    async for line in lines:
        frame = reader.feed(line.rstrip("\r\n"))
        if frame is not None and stop_after is not None and len(reader.frames) >= stop_after:
            break
        if line.startswith(":") and until_comment is not None and until_comment in line:
            break
    return reader
