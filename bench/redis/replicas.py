"""Runs watched across replicas: a client reads a run's SSE stream and times each
``node.completed`` from its emission on the executing replica (A) to its read, on the
replica it reads from; or two clients read the same run on A and on B at once, and the
difference is the hop."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

from bench.support.load import TERMINAL, clients, drive, start_run
from bench.support.server import Server


@dataclass(slots=True)
class Watch:
    """One run watched over SSE."""

    ok: bool
    error: str | None = None
    lags: list[float] = field(default_factory=list)  # node.completed: read - emitted
    early: int = 0  # node.completed emitted before the stream was open (not counted)
    broken: bool = False  # sequence numbers not 1, 2, 3, ... to the terminal event
    terminal_lag: float | None = None
    open_latency: float | None = None  # GET sent -> ": stream open" read


@dataclass(slots=True)
class Trace:
    """What one client read of one run's stream."""

    seqs: list[int] = field(default_factory=list)
    #: node.completed and terminal events: seq -> (type, read at, emitted at), time.time()
    reads: dict[int, tuple[str, float, float]] = field(default_factory=dict)
    opened: float | None = None  # time.time() when ": stream open" was read
    open_latency: float | None = None  # GET sent -> ": stream open" read
    terminal: str | None = None


async def read_stream(client: httpx.AsyncClient, run_id: str) -> Trace:
    """Read ``run_id``'s SSE stream to its terminal event."""
    trace = Trace()
    headers = {"Accept": "text/event-stream"}
    kind = ""
    seq = 0
    get_sent = time.perf_counter()
    async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as stream:
        stream.raise_for_status()
        async for line in stream.aiter_lines():
            if line.startswith(":"):
                if trace.opened is None:  # ": stream open", sent once subscribed
                    trace.opened = time.time()
                    trace.open_latency = time.perf_counter() - get_sent
            elif line.startswith("id:"):
                seq = int(line[3:])
                trace.seqs.append(seq)
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and (kind == "node.completed" or kind in TERMINAL):
                now = time.time()
                trace.reads[seq] = (kind, now, float(json.loads(line[5:])["timestamp"]))
                if kind in TERMINAL:
                    trace.terminal = kind
    return trace


def _watch(trace: Trace) -> Watch:
    watch = Watch(ok=trace.terminal == "run.succeeded", open_latency=trace.open_latency)
    for kind, read, emitted in trace.reads.values():
        if kind in TERMINAL:
            watch.terminal_lag = read - emitted
        elif trace.opened is not None and emitted >= trace.opened:
            watch.lags.append(read - emitted)
        else:
            watch.early += 1
    watch.broken = trace.seqs != list(range(1, len(trace.seqs) + 1))
    if not watch.ok:
        watch.error = trace.terminal or "no terminal event"
    return watch


async def watch_run(client: httpx.AsyncClient, workflow_id: str) -> Watch:
    """POST a run, read its SSE stream to the end; for every node.completed emitted
    after the stream opened (its subscription was live by then), the time from its
    emission on the executing replica to this process reading it."""
    try:
        return _watch(await read_stream(client, await start_run(client, workflow_id)))
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return Watch(ok=False, error=f"{type(exc).__name__}: {exc}")


@dataclass(slots=True)
class PairWatch:
    """One run watched at once by a client on A and one on B."""

    a: Watch
    b: Watch
    #: node.completed emitted once both streams were open: read on B - read on A
    hops: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.a.ok and self.b.ok


async def watch_pair(
    clients_: tuple[httpx.AsyncClient, httpx.AsyncClient], workflow_id: str
) -> PairWatch:
    """POST a run to A, then read its stream on A and on B at the same time: the hop of
    each node.completed is when B's client read it minus when A's did."""
    on_a, on_b = clients_
    try:
        run_id = await start_run(on_a, workflow_id)
        trace_a, trace_b = await asyncio.gather(
            read_stream(on_a, run_id), read_stream(on_b, run_id)
        )
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        failed = Watch(ok=False, error=f"{type(exc).__name__}: {exc}")
        return PairWatch(failed, failed)
    pair = PairWatch(_watch(trace_a), _watch(trace_b))
    if trace_a.opened is not None and trace_b.opened is not None:
        both = max(trace_a.opened, trace_b.opened)
        for seq, (kind, read_a, emitted) in trace_a.reads.items():
            on_b_read = trace_b.reads.get(seq)
            if kind == "node.completed" and emitted >= both and on_b_read is not None:
                pair.hops.append(on_b_read[1] - read_a)
    return pair


@dataclass
class SseBatch:
    runs: int
    wall: float
    watches: list[Watch]
    cpu_a: float
    cpu_b: float

    @property
    def lags(self) -> list[float]:
        return [lag for w in self.watches for lag in w.lags]

    @property
    def rate(self) -> float:
        return self.runs / self.wall


async def sse_batch(
    target: Server, workflow_id: str, runs: int, warmup: int, concurrency: int, a: Server, b: Server
) -> SseBatch:
    async with clients(target.base_url, concurrency) as pool:

        async def one(client: httpx.AsyncClient) -> Watch:
            return await watch_run(client, workflow_id)

        await drive(warmup, pool, one)
        cpu_a, cpu_b = a.cpu(), b.cpu()
        watches, wall, _cpu = await drive(runs, pool, one)
        return SseBatch(runs, wall, watches, a.cpu() - cpu_a, b.cpu() - cpu_b)


@dataclass
class PairBatch:
    runs: int
    wall: float
    pairs: list[PairWatch]

    @property
    def hops(self) -> list[float]:
        return [hop for p in self.pairs for hop in p.hops]

    @property
    def rate(self) -> float:
        return self.runs / self.wall


async def pair_batch(
    workflow_id: str, runs: int, warmup: int, concurrency: int, a: Server, b: Server
) -> PairBatch:
    async with clients(a.base_url, concurrency) as on_a, clients(b.base_url, concurrency) as on_b:
        pool = list(zip(on_a, on_b, strict=True))

        async def one(pair: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> PairWatch:
            return await watch_pair(pair, workflow_id)

        await drive(warmup, pool, one)
        pairs, wall, _cpu = await drive(runs, pool, one)
        return PairBatch(runs, wall, pairs)
