"""LLM streaming through the service: ``llm`` nodes against a fake OpenAI-compatible
server that emits tokens as fast as it can, next to the raw ``openai`` SDK reading the
same streams directly (issue 13's targets). Prints tables, asserts nothing.

    python -m bench.llm                  # SQLite, and Postgres if it answers (~4 minutes)
    python -m bench.llm --quick          # fewer runs, one repetition
    python -m bench.llm --only sqlite    # or --only postgres
    python -m bench.llm --markdown       # GitHub tables (for docs/benchmarks-llm.md)

The fake is ``tests/llm_fake.py`` (the protocol-true server the tests check with the SDK
itself), run in a subprocess of its own so that neither side of the comparison shares
its CPU with it. Each answer is ``--tokens`` content chunks, sent back to back.

Per database: a fresh scratch database and ``python -m app.cli serve`` (with
``FLOWCORE_EGRESS_ALLOW=127.0.0.1`` so the node may reach the fake on loopback), one
workflow of one ``llm`` node. A repetition is four batches, interleaved: ``--runs`` runs
from 50 concurrent clients, each POSTing a run and reading its SSE stream to the
terminal event (the service), then ``--runs`` streams from 50 concurrent ``AsyncOpenAI``
readers straight from the fake (the raw SDK); then 50 of each whose answers are paced
(``--paced-tokens`` tokens, ``--paced-delay`` apart: a fast model, a machine far from
saturated) for the latency rows. Tokens/s (table 1) is the content tokens the clients
received over the batch's wall time.

Token latency, node -> SSE client: every event carries the ``time.time()`` of its
emission (``timestamp``); the node emits a token as its delta arrives, so the SSE
client's ``time.time()`` on receipt minus it is the token's way through the service
(the same clock in every process on the machine). Also, fake -> client: the fake writes
each chunk's send time (``time.time()``) as that chunk's content, when it writes it;
with the fake faster than any reader this is mostly the queue in the socket buffers.

Log rows (table 3): the rows the service batches added to the ``events`` table (counted
after each batch), per 1,000 tokens their SSE clients received (every type, and
``node.token`` alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx

from bench.support import cli
from bench.support.databases import plain_dsn, postgres_ready, scratch_database
from bench.support.load import SERVER_ENV, TERMINAL, clients, drive, post_workflow, start_run
from bench.support.machine import ROOT, cpu_seconds, log, version, wait_for_quiet
from bench.support.server import serve, server_problems
from bench.support.stats import med, ms, percentile, spread
from bench.support.tables import Table, emit
from tests.llm_fake import Answer, FakeLLM

SECTIONS = ("sqlite", "postgres")
QUICK = "50 runs per batch (instead of 150), one repetition (instead of 3)"
#: concurrent streams, through the service and straight from the fake
CONCURRENCY = 50
MODEL = "bench"
#: the same answers, paced as a fast model streams (the latency rows)
PACED_MODEL = "bench-paced"
#: what the fake replaces by the time it writes a chunk: ``time.time()`` as "%.6f", as
#: wide as the placeholder (until 2286), so a replayed chunk of tokens splits back
STAMP = b"@@@@STAMP@@@@@@@@"
STAMP_WIDTH = len(STAMP)
TARGET_RATIO = 0.8
TARGET_P99 = 0.025


class StampingFakeLLM(FakeLLM):
    """The tests' fake, writing each chunk's send time in place of ``STAMP``."""

    @staticmethod
    def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        if STAMP in data:
            data = data.replace(STAMP, f"{time.time():.6f}".encode(), 1)
        FakeLLM._write_chunk(writer, data)


async def run_fake_server(args: argparse.Namespace) -> None:
    """The fake in this process until stdin closes; its base URL on stdout's first line."""
    async with StampingFakeLLM.running() as fake:
        fake.script(MODEL, Answer(tokens=(STAMP.decode(),) * args.tokens))
        paced = (STAMP.decode(),) * args.paced_tokens
        fake.script(PACED_MODEL, Answer(tokens=paced, token_delay=args.paced_delay))
        print(fake.base_url, flush=True)
        await asyncio.to_thread(sys.stdin.read)


@dataclass(frozen=True)
class Fake:
    """The fake in its subprocess."""

    base_url: str
    pid: int

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


@contextlib.asynccontextmanager
async def fake_server(args: argparse.Namespace) -> AsyncIterator[Fake]:
    """``run_fake_server`` in a subprocess."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.llm", "--fake-server", "--tokens", str(args.tokens)),
        *("--paced-tokens", str(args.paced_tokens), "--paced-delay", str(args.paced_delay)),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line:
            raise RuntimeError("the fake server exited before it listened")
        yield Fake(line.decode().strip(), process.pid)
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def stamps(text: str) -> list[float]:
    """The send times in ``text``: one token's, or a chunk's of several (a client that
    connects after the first commit gets the tokens logged so far as one event)."""
    try:
        return [float(text[i : i + STAMP_WIDTH]) for i in range(0, len(text), STAMP_WIDTH)]
    except ValueError:
        return []


@dataclass
class Stream:
    """One run (or one raw stream) as its client saw it."""

    tokens: int = 0
    #: of ``tokens``, those that came in a replayed chunk (not live: no latency taken)
    replayed: int = 0
    #: per live token: from the fake's write to the client (service and raw SDK)
    latencies: list[float] = field(default_factory=list)
    #: per live token: from the node's emission (the event's timestamp) to the SSE client
    node_latencies: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class StreamBatch:
    wall: float
    streams: list[Stream]
    fake_cpu: float  # CPU seconds the fake used meanwhile

    @property
    def fake_load(self) -> float:
        """The fake's share of one CPU during the batch."""
        return self.fake_cpu / self.wall

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def rate(self) -> float:
        return self.tokens / self.wall

    @property
    def replayed(self) -> int:
        return sum(s.replayed for s in self.streams)

    @property
    def latencies(self) -> list[float]:
        return [x for s in self.streams for x in s.latencies]

    @property
    def node_latencies(self) -> list[float]:
        return [x for s in self.streams for x in s.node_latencies]

    @property
    def failed(self) -> int:
        return sum(1 for s in self.streams if s.error is not None)

    @property
    def first_error(self) -> str | None:
        return next((s.error for s in self.streams if s.error is not None), None)


async def service_stream(client: httpx.AsyncClient, workflow_id: str) -> Stream:
    """POST a run, read its SSE stream to the end: its tokens and their latencies."""
    result = Stream()
    kind = ""
    terminal: str | None = None
    try:
        run_id = await start_run(client, workflow_id)
        headers = {"Accept": "text/event-stream"}
        async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as stream:
            stream.raise_for_status()
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                    if kind in TERMINAL:
                        terminal = kind
                elif line.startswith("data:") and kind == "node.token":
                    received = time.time()
                    event = json.loads(line[5:])
                    sent = stamps(event["data"]["token"])
                    result.tokens += len(sent)
                    if len(sent) == 1:
                        result.latencies.append(received - sent[0])
                        result.node_latencies.append(received - event["timestamp"])
                    else:  # tokens logged before the stream opened, replayed as one
                        result.replayed += len(sent)
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    if terminal != "run.succeeded":
        result.error = terminal or "no terminal event"
    return result


async def raw_stream(client: Any, model: str = MODEL) -> Stream:
    """One stream read with the SDK straight from the fake, as the node asks for it."""
    import openai

    result = Stream()
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say something."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    content = choice.delta.content
                    if content:
                        received = time.time()
                        sent = stamps(content)
                        result.tokens += len(sent)
                        result.latencies += [received - t for t in sent]
    except (openai.APIError, httpx.HTTPError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def llm_workflow(base_url: str, model: str = MODEL) -> dict[str, Any]:
    node = {"base_url": base_url, "model": model, "prompt": "Say something.", "timeout": 60}
    return {"id": model, "nodes": [{"id": "answer", "type": "llm", "config": node}]}


async def event_rows(url: str) -> tuple[int, int]:
    """(all rows, node.token rows) of the events table behind ``url``."""
    query = "SELECT count(*), count(*) FILTER (WHERE type = 'node.token') FROM events"
    if url.startswith("sqlite"):
        path = url.partition(":///")[2]

        def count() -> tuple[int, int]:
            with contextlib.closing(sqlite3.connect(path)) as db:
                total, tokens = db.execute(query).fetchone()
            return int(total), int(tokens)

        return await asyncio.to_thread(count)
    import asyncpg

    connection = await asyncpg.connect(plain_dsn(url))
    try:
        row = await connection.fetchrow(query)
    finally:
        await connection.close()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass
class Measured:
    """One database's repetitions."""

    service: list[StreamBatch] = field(default_factory=list)
    raw: list[StreamBatch] = field(default_factory=list)
    paced_service: list[StreamBatch] = field(default_factory=list)
    paced_raw: list[StreamBatch] = field(default_factory=list)
    #: (all, node.token) events rows written by the flat-out and by the paced batches
    rows: tuple[int, int] = (0, 0)
    paced_rows: tuple[int, int] = (0, 0)
    server_cpu: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def service_tokens(self) -> int:
        return sum(b.tokens for b in self.service)

    @property
    def paced_tokens(self) -> int:
        return sum(b.tokens for b in self.paced_service)


def _plus(a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]) -> tuple[int, int]:
    """``a`` plus what was counted between ``b`` and ``c``."""
    return a[0] + c[0] - b[0], a[1] + c[1] - b[1]


async def measure(dialect: str, fake: Fake, args: argparse.Namespace) -> Measured:
    import openai

    result = Measured()
    env = {**SERVER_ENV, "FLOWCORE_EGRESS_ALLOW": "127.0.0.1"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(scratch_database(dialect))
        async with (
            serve(url, env, name=dialect, problems=result.problems) as server,
            clients(server.base_url, CONCURRENCY) as pool,
            httpx.AsyncClient(limits=limits, timeout=60.0) as raw_http,
        ):
            sdk = openai.AsyncOpenAI(
                base_url=fake.base_url,
                api_key="bench",
                max_retries=0,
                # the SDK types its client as httpx2's; it takes an httpx one (as the node)
                http_client=cast(Any, raw_http),
            )
            workflow_id = await post_workflow(server.base_url, llm_workflow(fake.base_url))
            paced_id = await post_workflow(
                server.base_url, llm_workflow(fake.base_url, PACED_MODEL)
            )
            paced_runs = min(CONCURRENCY, args.runs)
            # warm-up: connections, the SDK's first import and parse, the server's caches
            warmup = min(CONCURRENCY, args.runs)
            await drive(warmup, pool, lambda c: service_stream(c, workflow_id))
            await drive(warmup, [sdk] * CONCURRENCY, raw_stream)
            for rep in range(args.reps):
                before = await event_rows(url)
                cpu, fake_cpu = server.cpu(), fake.cpu()
                streams, wall, _ = await drive(
                    args.runs, pool, lambda c: service_stream(c, workflow_id)
                )
                result.server_cpu += server.cpu() - cpu
                result.service.append(StreamBatch(wall, streams, fake.cpu() - fake_cpu))
                result.rows = _plus(result.rows, before, await event_rows(url))
                fake_cpu = fake.cpu()
                streams, wall, _ = await drive(args.runs, [sdk] * CONCURRENCY, raw_stream)
                result.raw.append(StreamBatch(wall, streams, fake.cpu() - fake_cpu))
                before, fake_cpu = await event_rows(url), fake.cpu()
                streams, wall, _ = await drive(
                    paced_runs, pool, lambda c: service_stream(c, paced_id)
                )
                result.paced_service.append(StreamBatch(wall, streams, fake.cpu() - fake_cpu))
                result.paced_rows = _plus(result.paced_rows, before, await event_rows(url))
                fake_cpu = fake.cpu()
                streams, wall, _ = await drive(
                    paced_runs, [sdk] * CONCURRENCY, lambda c: raw_stream(c, PACED_MODEL)
                )
                result.paced_raw.append(StreamBatch(wall, streams, fake.cpu() - fake_cpu))
                log(
                    f"{dialect} rep {rep + 1}/{args.reps}: service "
                    f"{result.service[-1].rate:,.0f} tokens/s, raw SDK "
                    f"{result.raw[-1].rate:,.0f} tokens/s"
                )
    return result


def throughput_table(args: argparse.Namespace, results: dict[str, Measured]) -> Table:
    table = Table(
        f"1. Tokens/s: {CONCURRENCY} concurrent streaming runs of {args.tokens}-token "
        "answers, service (HTTP + SSE) vs the raw openai SDK",
        [
            "database",
            "service tokens/s",
            "raw SDK tokens/s",
            "ratio",
            "target",
            "fake's CPU (service / raw)",
            "failed",
        ],
        "lrrrrrr",
    )
    for dialect, m in results.items():
        ratios = [s.rate / r.rate for s, r in zip(m.service, m.raw, strict=True)]
        failed = sum(b.failed for b in m.service) + sum(b.failed for b in m.raw)
        table.rows.append(
            [
                dialect,
                spread([b.rate for b in m.service], 0),
                spread([b.rate for b in m.raw], 0),
                f"{med(ratios):.2f}x",
                f">= {TARGET_RATIO}x: {'met' if med(ratios) >= TARGET_RATIO else 'MISSED'}",
                f"{med([b.fake_load for b in m.service]):.0%} / "
                f"{med([b.fake_load for b in m.raw]):.0%}",
                str(failed),
            ]
        )
        error = next((b.first_error for b in [*m.service, *m.raw] if b.failed), None)
        if error is not None:
            table.notes.append(f"{dialect}: first failure: {error[:200]}")
    table.notes += [
        f"{args.runs} runs per batch from {CONCURRENCY} clients, {args.reps} repetition(s), "
        "service and raw SDK interleaved; median (min-max) over repetitions; the ratio is "
        "the median of each repetition's ratio.",
        "service: POST /v1/runs, then GET /v1/runs/{id}/events to the terminal event, one "
        "keep-alive connection per client; raw SDK: AsyncOpenAI.chat.completions.create("
        "stream=True) on one pooled httpx client, against the same fake.",
        "fake's CPU: the fake's CPU seconds over the batch's wall time (100%: one core, "
        "all it can use; near it, the fake, not the reader, sets the pace).",
    ]
    return table


def latency_table(args: argparse.Namespace, results: dict[str, Measured]) -> Table:
    table = Table(
        "2. Token latency: from the node to the SSE client",
        [
            "database",
            "fake",
            "node -> SSE p50 ms",
            "node -> SSE p99 ms",
            "target",
            "fake -> SSE p99 ms",
            "fake -> raw SDK p99 ms",
            "tokens replayed",
        ],
        "llrrrrrr",
    )
    paced = f"paced: {args.paced_tokens} tokens, {1 / args.paced_delay:g}/s"
    for dialect, m in results.items():
        for label, service, raw in (
            (f"flat out: {args.tokens} tokens", m.service, m.raw),
            (paced, m.paced_service, m.paced_raw),
        ):
            p99 = med([percentile(b.node_latencies, 99) for b in service])
            tokens = sum(b.tokens for b in service)
            table.rows.append(
                [
                    dialect,
                    label,
                    ms(med([percentile(b.node_latencies, 50) for b in service])),
                    ms(p99),
                    f"< {TARGET_P99 * 1e3:g} ms: {'met' if p99 < TARGET_P99 else 'MISSED'}",
                    ms(med([percentile(b.latencies, 99) for b in service])),
                    ms(med([percentile(b.latencies, 99) for b in raw])),
                    f"{sum(b.replayed for b in service) / tokens:.1%}" if tokens else "-",
                ]
            )
    table.notes += [
        f"{CONCURRENCY} concurrent runs each way; flat out: the batches of table 1; paced: "
        f"{min(CONCURRENCY, args.runs)} runs per repetition whose fake answer waits "
        f"{args.paced_delay * 1e3:g} ms between two tokens (a fast model), interleaved "
        "with table 1's batches.",
        "node -> SSE: the client's time.time() on receipt minus the event's timestamp, "
        "which the engine takes (time.time()) when the node emits the token, i.e. as the "
        "delta arrives at the node; same clock, same machine. Percentiles over every "
        "token a client got live, median over repetitions.",
        "fake -> ...: the fake writes each chunk's send time as its content. Flat out, "
        "the reader (the node's SDK, or the raw SDK) is the slower side and chunks queue "
        "in the socket buffers before it reads them: those columns are mostly that queue.",
        "tokens replayed: those the log had committed before the client's stream opened; "
        "they come as one chunk event (no latency taken).",
    ]
    return table


def rows_table(args: argparse.Namespace, results: dict[str, Measured]) -> Table:
    table = Table(
        "3. Durable log: events rows per 1,000 tokens",
        [
            "database",
            "fake",
            "events rows / 1,000 tokens",
            "node.token rows / 1,000 tokens",
            "server CPU s / 1,000 tokens",
        ],
        "llrrr",
    )
    for dialect, m in results.items():
        flat = 1000 / m.service_tokens if m.service_tokens else float("nan")
        paced = 1000 / m.paced_tokens if m.paced_tokens else float("nan")
        table.rows += [
            [
                dialect,
                f"flat out: {args.tokens} tokens",
                f"{m.rows[0] * flat:,.1f}",
                f"{m.rows[1] * flat:,.1f}",
                f"{m.server_cpu * flat:.3f}",
            ],
            [
                dialect,
                f"paced: {args.paced_tokens} tokens, {1 / args.paced_delay:g}/s",
                f"{m.paced_rows[0] * paced:,.1f}",
                f"{m.paced_rows[1] * paced:,.1f}",
                "-",
            ],
        ]
    table.notes += [
        "rows: the events table's rows added by the service batches (counted after each; "
        "all its runs had finished), per 1,000 tokens their SSE clients received, as "
        "app/runtime/journal.py at this revision writes them (see its docstring on "
        "tokens); server CPU: the server process over the flat-out batches.",
    ]
    problems = [p for m in results.values() for p in m.problems]
    table.notes += server_problems(problems)
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser("python -m bench.llm", __doc__, SECTIONS, QUICK)
    parser.add_argument("--tokens", type=int, default=500, help="tokens per answer (500)")
    parser.add_argument("--runs", type=int, help="runs per batch (default 150; quick 50)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; quick 1)")
    parser.add_argument(
        "--paced-tokens", type=int, default=100, help="tokens per paced answer (100)"
    )
    parser.add_argument(
        "--paced-delay",
        type=float,
        default=0.02,
        help="seconds between two tokens of a paced answer (0.02: 50 tokens/s)",
    )
    parser.add_argument("--fake-server", action="store_true", help=argparse.SUPPRESS)
    cli.add_quiet_wait(parser, max_wait=300.0)
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 50 if args.quick else 150
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    return args


def header(args: argparse.Namespace, pg: str) -> list[str]:
    return cli.header(
        args,
        loop=f"; event loop: uvloop {version('uvloop')} (here, in the fake and in the server)",
        lines=[
            f"postgres: {pg}; openai {version('openai')}, httpx {version('httpx')}, "
            f"sqlalchemy {version('sqlalchemy')}, asyncpg {version('asyncpg')}, "
            f"aiosqlite {version('aiosqlite')}",
            f"fake: tests/llm_fake.py in a subprocess, {args.tokens} tokens per answer, "
            "no delay between them",
            cli.mode_line(args),
        ],
    )


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    problem, pg = await postgres_ready()
    sections = cli.chosen(args, SECTIONS)
    if problem is not None and "postgres" in sections:
        log(f"Postgres is unreachable ({problem}); SQLite only")
        sections.remove("postgres")
    if args.max_wait > 0:
        await asyncio.to_thread(wait_for_quiet, args.max_load, args.max_wait)
    cli.print_header("Flowcore LLM streaming benchmark", header(args, pg), args.markdown)
    results: dict[str, Measured] = {}
    async with fake_server(args) as fake:
        for dialect in sections:
            results[dialect] = await measure(dialect, fake, args)
    emit(throughput_table(args, results), args.markdown)
    emit(latency_table(args, results), args.markdown)
    emit(rows_table(args, results), args.markdown)
    cli.print_footer(started, args.markdown)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.fake_server:
        cli.run_on_uvloop(run_fake_server(args))
    else:
        cli.run_on_uvloop(run(args))


if __name__ == "__main__":
    main()
