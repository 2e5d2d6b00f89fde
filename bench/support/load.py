"""Load generation against the service: workers that each start their next run when
their previous one finished, over httpx clients of one keep-alive connection each, and
the two ways a client follows a run to its end (the SSE stream, or ``?wait``).

bench.http and bench.redis drive the same load with the same server settings, so their
rows compare."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx

#: concurrent clients (HTTP) and submitters (in-process) of a batch
CLIENTS = 100
#: the service's settings for the benchmarks; everything else is the default
SERVER_ENV = {"FLOWCORE_MAX_CONCURRENT_RUNS": str(CLIENTS), "FLOWCORE_POLL_SECONDS": "0.1"}
TERMINAL = frozenset({"run.succeeded", "run.failed", "run.cancelled"})

R = TypeVar("R")
C = TypeVar("C")


@dataclass(slots=True)
class Outcome:
    latency: float  # seconds from submitting the run to seeing it finish
    ok: bool
    first_event: float | None = None  # seconds from opening the SSE stream to its first event
    error: str | None = None


@dataclass
class Batch:
    """``runs`` runs driven by a pool of workers."""

    runs: int
    wall: float
    outcomes: list[Outcome]
    cpu: float  # CPU seconds of this process (the load generator) during the batch
    server_cpu: float = 0.0  # CPU seconds of the server process, where there is one

    @property
    def rate(self) -> float:
        return self.runs / self.wall

    @property
    def latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes]

    @property
    def first_events(self) -> list[float]:
        return [o.first_event for o in self.outcomes if o.first_event is not None]

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok)

    @property
    def first_error(self) -> str | None:
        return next((o.error for o in self.outcomes if not o.ok), None)


async def drive(
    total: int, pool: Sequence[C], one: Callable[[C], Awaitable[R]]
) -> tuple[list[R], float, float]:
    """``total`` calls of ``one(member)``, one worker per member of ``pool`` (at most
    ``total``), each starting its next call when its previous one finished. Returns
    (outcomes, wall seconds, CPU seconds of this process)."""
    left = total
    outcomes: list[R] = []

    async def worker(member: C) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            outcomes.append(await one(member))

    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(member) for member in pool[:total]))
    return outcomes, time.perf_counter() - start, time.process_time() - cpu


async def run_batch(total: int, pool: Sequence[C], one: Callable[[C], Awaitable[Outcome]]) -> Batch:
    """``drive``, as a Batch."""
    outcomes, wall, cpu = await drive(total, pool, one)
    return Batch(total, wall, outcomes, cpu)


@contextlib.asynccontextmanager
async def clients(
    base_url: str, n: int = CLIENTS, headers: dict[str, str] | None = None
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``n`` clients of one keep-alive connection each. (One client with a pool of ``n``
    connections does the same requests, but httpcore's pool scans all of its
    connections, polling each socket, on every request and response: with 100 of them
    that took ~15 ms of the load generator's CPU per run, on the CPUs the server
    shares.)"""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=base_url,
                    limits=limits,
                    timeout=httpx.Timeout(60.0),
                    headers=headers,
                )
            )
            for _ in range(n)
        ]


async def post_workflow(
    base_url: str, raw: dict[str, object], headers: dict[str, str] | None = None
) -> str:
    """Register a workflow; its id."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, headers=headers) as client:
        response = await client.post("/v1/workflows", json=raw)
        response.raise_for_status()
        return str(response.json()["id"])


async def start_run(client: httpx.AsyncClient, workflow_id: str) -> str:
    """POST /v1/runs; the run's id."""
    response = await client.post("/v1/runs", json={"workflow_id": workflow_id})
    response.raise_for_status()
    return str(response.json()["run_id"])


async def sse_run(client: httpx.AsyncClient, workflow_id: str) -> Outcome:
    """POST a run, then read its event stream to the end (the server closes it after
    the terminal event; reading to the end keeps the connection reusable)."""
    start = time.perf_counter()
    try:
        run_id = await start_run(client, workflow_id)
        opened = time.perf_counter()
        first: float | None = None
        terminal: str | None = None
        finished = 0.0
        headers = {"Accept": "text/event-stream"}
        async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as stream:
            stream.raise_for_status()
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    now = time.perf_counter()
                    if first is None:
                        first = now - opened
                    kind = line[6:].strip()
                    if kind in TERMINAL:
                        terminal, finished = kind, now
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return Outcome(time.perf_counter() - start, False, error=f"{type(exc).__name__}: {exc}")
    if terminal is None:
        return Outcome(time.perf_counter() - start, False, first, "no terminal event")
    ok = terminal == "run.succeeded"
    return Outcome(finished - start, ok, first, None if ok else terminal)


async def wait_run(client: httpx.AsyncClient, workflow_id: str) -> Outcome:
    """POST /v1/runs?wait=30: the response comes when the run has finished."""
    start = time.perf_counter()
    try:
        response = await client.post(
            "/v1/runs", params={"wait": 30}, json={"workflow_id": workflow_id}
        )
        status = response.json().get("status")
    except (httpx.HTTPError, ValueError) as exc:
        return Outcome(time.perf_counter() - start, False, error=f"{type(exc).__name__}: {exc}")
    ok = response.status_code == 200 and status == "succeeded"
    error = None if ok else f"HTTP {response.status_code}, status {status}"
    return Outcome(time.perf_counter() - start, ok, error=error)
