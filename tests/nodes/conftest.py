"""Fixtures for the node-type tests.

- ``LocalHTTPServer``: a real HTTP/1.1 server (asyncio streams, keep-alive) on
  127.0.0.1, an ephemeral port, with a route table per test; it records every request
  and every accepted connection, so a test can assert that nothing reached it.
- the shared HTTP client of ``app.nodes.http`` is closed after every test, because
  each test runs on its own event loop.
- every test starts with no operator egress policy installed (the engine used as a
  library), whatever a service test in the same process installed; a test may install
  one, and it is taken away afterwards.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.nodes.egress import install_egress_policy, installed_egress_policy
from app.nodes.http import aclose_http_client


@dataclass(slots=True)
class Received:
    """One request as the server read it."""

    method: str
    #: path and query string, as sent
    target: str
    #: header names lower-cased
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class Reply:
    """A response for the server to send."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(status, [("Content-Type", "application/json")], json.dumps(data).encode())


def text_reply(text: str, status: int = 200, content_type: str = "text/plain") -> Reply:
    return Reply(status, [("Content-Type", f"{content_type}; charset=utf-8")], text.encode())


def redirect(location: str, status: int = 302) -> Reply:
    return Reply(status, [("Location", location)])


Route = Callable[[Received], Reply | Awaitable[Reply]]

_REASONS = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found", 500: "Error"}


class LocalHTTPServer:
    """A minimal HTTP/1.1 server for tests: routes by path, fixed-length bodies only."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Received] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def route(self, path: str, handler: Route) -> None:
        self.routes[path] = handler

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels idle keep-alive connections; returning normally matters
            # because Python 3.11's start_server done-callback calls task.exception()
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = Received(method, target, headers, body)
        self.requests.append(request)
        handler = self.routes.get(request.path)
        reply: Reply
        if handler is None:
            reply = text_reply("no such route", 404)
        else:
            result = handler(request)
            reply = await result if inspect.isawaitable(result) else result
        head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
        head += [f"{name}: {value}" for name, value in reply.headers]
        head.append(f"Content-Length: {len(reply.body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
        await writer.drain()
        return headers.get("connection", "").lower() != "close"


@pytest.fixture(autouse=True)
async def _close_shared_http_client() -> AsyncIterator[None]:
    yield
    await aclose_http_client()


@pytest.fixture(autouse=True)
def _no_egress_policy() -> Iterator[None]:
    previous = installed_egress_policy()
    install_egress_policy(None)
    yield
    install_egress_policy(previous)


@pytest.fixture
async def http_server() -> AsyncIterator[LocalHTTPServer]:
    server = LocalHTTPServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
