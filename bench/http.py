"""Service benchmarks: durable runs over HTTP and in-process; prints tables, asserts nothing.

    python -m bench.http                   # everything (~2 minutes, after a quiet machine)
    python -m bench.http --quick           # smaller batches, one repetition
    python -m bench.http --only durable    # or --only http
    python -m bench.http --markdown        # GitHub tables (for docs/benchmarks-http.md)

Sections:

``durable``  In-process, on Postgres, no HTTP: Flowcore's service machinery (Store,
             Dispatcher, RunJournal: claims, leases, fenced commits of node results,
             checkpoints and events) running 10-node chains for 100 concurrent
             submitters, next to LangGraph with its Postgres checkpointer
             (AsyncPostgresSaver) running the same chain for 100 concurrent threads; then
             the cost per durable node for chains of 10, 100 and 1,000 nodes.
``http``     End to end: ``python -m app.cli serve`` in a subprocess, 100 concurrent
             httpx clients each doing POST /v1/runs and then reading the run's SSE stream
             to its terminal event (or POST /v1/runs?wait=30), on Postgres, on Postgres
             with Redis (FLOWCORE_REDIS_URL; skipped when Redis does not answer, or with
             --no-redis) and on SQLite.

``python -m bench.redis`` goes further into Redis: what it costs a run over more rounds,
the cost of /metrics scraping under load, and live events across replicas.

Every measurement gets a fresh database (Postgres: a scratch database created on the
admin database and dropped afterwards; SQLite: a temporary file), migrated to head.
Compared things run in the same process, interleaved repetition by repetition. The run
waits for the machine's 1-minute load average to fall below 1.0 first. Progress goes
to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import importlib.metadata
import logging
import operator
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypedDict

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.engine import create_workflow
from app.runtime.wiring import build
from app.store.db import is_postgres
from app.store.models import NodeResultRow, Run
from app.store.notifications import Notification, RunFinished
from app.store.postgres import PostgresStore
from app.store.records import StoredWorkflow
from app.store.repository import Store
from bench._service import (
    backend_cpu,
    drop_stale_databases,
    percentile,
    pg_backends,
    pg_transactions,
    plain_dsn,
    postgres_unavailable,
    postgres_version,
    scratch_database,
    scratch_postgres,
    serve,
    wait_for_quiet,
)
from bench.common import Table, cpu_model, emit, loadavg, log, revision
from bench.redis import REDIS_URL, RedisProbe, redis_env, unique_prefix

SECTIONS = ("durable", "http")
Raw = dict[str, Any]

#: concurrent clients (HTTP) and submitters/threads (in-process, LangGraph)
CLIENTS = 100
#: the pass-through node of the issue's workload: its output is its input
NOOP: Raw = {"type": "noop"}
#: a node whose output has a constant size, like LangGraph's ``return {"steps": 1}``
STEP: Raw = {"type": "transform", "config": {"output": {"steps": "1"}}}
TERMINAL = frozenset({"run.succeeded", "run.failed", "run.cancelled"})
#: the service's settings for the benchmark; everything else is the default
SERVER_ENV = {"FLOWCORE_MAX_CONCURRENT_RUNS": str(CLIENTS), "FLOWCORE_POLL_SECONDS": "0.1"}
#: LangGraph's pool: as many connections as the service's default pool (10 + 10 overflow)
LG_POOL = 20
#: the issue's figure for LangGraph + AsyncPostgresSaver on this machine (runs/s)
ISSUE_LANGGRAPH_RATE = 58.0


def chain(n: int, node: Raw) -> Raw:
    return {
        "id": f"chain-{node['type']}-{n}",
        "nodes": [{"id": f"n{i}", **node} for i in range(n)],
        "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)],
    }


# ------------------------------------------------------------------------ batches


@dataclass(slots=True)
class Outcome:
    latency: float  # seconds from submitting the run to seeing it finish
    ok: bool
    first_event: float | None = None  # seconds from opening the SSE stream to its first event
    error: str | None = None


@dataclass
class Batch:
    """``runs`` runs driven by at most ``concurrency`` clients at a time."""

    runs: int
    concurrency: int
    wall: float
    outcomes: list[Outcome]
    cpu: float  # CPU seconds of this process during the batch
    server_cpu: float | None = None  # CPU seconds of the server process
    xacts_per_run: float | None = None  # Postgres transactions per run
    commits_per_run: float | None = None  # Flowcore: commit_progress transactions per run
    db_cpu: float | None = None  # CPU seconds of the database's Postgres backends
    connections: int | None = None  # connections to the database at the end of the batch
    node_results: int | None = None  # Flowcore: node results in the database afterwards

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


async def drive(total: int, concurrency: int, one: Callable[[], Awaitable[Outcome]]) -> Batch:
    """``total`` calls of ``one`` from ``concurrency`` workers, each starting its next
    call when its previous one finished."""
    left = total
    outcomes: list[Outcome] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            outcomes.append(await one())

    workers = min(concurrency, total)
    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Batch(total, workers, wall, outcomes, cpu)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}" if seconds == seconds else "-"


def spread(xs: Sequence[float], digits: int = 1) -> str:
    """``median (min-max)``, or the value alone when there is one."""
    if len(xs) == 1:
        return f"{xs[0]:,.{digits}f}"
    return f"{med(xs):,.{digits}f} ({min(xs):,.{digits}f}-{max(xs):,.{digits}f})"


def db_cpu(batches: Sequence[Batch]) -> str:
    """Median Postgres backend CPU per run, in ms."""
    values = [b.db_cpu / b.runs for b in batches if b.db_cpu is not None]
    return f"{med(values) * 1e3:.1f}" if values else "-"


def connections(batches: Sequence[Batch]) -> str:
    values = [b.connections for b in batches if b.connections is not None]
    return str(max(values)) if values else "-"


def failures(batches: Sequence[Batch]) -> str:
    failed = sum(b.failed for b in batches)
    return f"{failed}/{sum(b.runs for b in batches)}"


# --------------------------------------------------------------- Flowcore in-process


class _Counting(Store):
    """A store counting the fenced progress commits the journals make."""

    commits = 0

    async def commit_progress(self, *args: Any, **kwargs: Any) -> None:
        self.commits += 1
        await super().commit_progress(*args, **kwargs)


class CountingStore(_Counting):
    pass


class CountingPostgresStore(_Counting, PostgresStore):
    pass


def counting_store(engine: AsyncEngine) -> _Counting:
    return CountingPostgresStore(engine) if is_postgres(engine) else CountingStore(engine)


class InProcessService:
    """One replica as ``app.runtime.wiring.build`` wires it, minus HTTP: a Store (one
    that counts its commits), the live bus and a Dispatcher that claims, leases and
    executes runs with durable journals.

    The dispatcher's log is captured, not printed: a run it logs an error for is
    counted as failed at once (one that fails to commit its failure never gets an
    outcome, see the noop chain of 1,000 nodes), and the error goes into the table."""

    def __init__(self, url: str, max_concurrent_runs: int = CLIENTS) -> None:
        self.settings = Settings(
            database_url=url,
            max_concurrent_runs=max_concurrent_runs,
            poll_seconds=0.1,
            replica_id="bench-in-process",
        )
        self._waiting: dict[str, asyncio.Future[str | None]] = {}
        #: run id -> outcome, of the runs of the batch being measured
        self.submitted: dict[str, Outcome] = {}
        self._log = logging.getLogger("flowcore.runtime")
        self._handler = _Capture(self._on_log)

    def _on_log(self, record: logging.LogRecord) -> None:
        run_id = record.args[0] if isinstance(record.args, tuple) and record.args else None
        future = self._waiting.get(run_id) if isinstance(run_id, str) else None
        if future is not None and not future.done() and record.levelno >= logging.ERROR:
            error = record.exc_info[1] if record.exc_info else None
            message = record.getMessage() + (f": {error!r}" if error is not None else "")
            future.set_result(message)

    def _on_notification(self, notification: Notification) -> None:
        future = (
            self._waiting.get(notification.run_id)
            if isinstance(notification, RunFinished)
            else None
        )
        if future is not None and not future.done():
            future.set_result(None)  # its outcome is committed

    async def add_workflow(self, raw: Raw) -> StoredWorkflow:
        definition = create_workflow(raw, limits=self.settings.execution_config())
        data = definition.model_dump(mode="json", exclude_none=True)
        return await self.store.create_workflow_version(definition.id, definition.name, data)

    async def run(self, workflow: StoredWorkflow) -> Outcome:
        """Queue a run and wait for its outcome to be committed."""
        run_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = future
        start = time.perf_counter()
        try:
            await self.store.create_run(run_id, workflow, {}, None, None, None)
            error = await future
        finally:
            del self._waiting[run_id]
        outcome = Outcome(time.perf_counter() - start, error is None, error=error)
        self.submitted[run_id] = outcome
        return outcome

    async def check(self, batch: Batch) -> None:
        """The batch's runs that did not succeed become failures (with the first
        error); counts the node results in the database."""
        async with self.engine.connect() as conn:
            failed = (
                await conn.execute(
                    select(Run.id, Run.status, Run.error).where(
                        Run.id.in_(list(self.submitted)), Run.status != "succeeded"
                    )
                )
            ).all()
            batch.node_results = int(
                (await conn.execute(select(func.count()).select_from(NodeResultRow))).scalar_one()
            )
        for row in failed:
            outcome = self.submitted[row.id]
            if outcome.ok:
                outcome.ok = False
                outcome.error = str((row.error or {}).get("message", row.status))
        for outcome in self.submitted.values():
            if outcome.error and len(outcome.error) > 200:
                outcome.error = outcome.error[:199] + "…"

    async def __aenter__(self) -> InProcessService:
        self._log.addHandler(self._handler)
        self._log.propagate = False
        self.runtime = await build(self.settings, store_factory=counting_store, dispatcher=True)
        store = self.runtime.store
        assert isinstance(store, _Counting)
        self.store = store
        self.engine = self.runtime.engine
        self.store.notifier.subscribe(self._on_notification)
        await self.runtime.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            # stopping cancels the claim loop, perhaps in the middle of a query: the pool
            # then logs a CancelledError while it closes that connection
            with quiet("sqlalchemy.pool"):
                await self.runtime.close()
                gc.collect()  # tasks that died with an exception are reported now, quietly
        finally:
            self._log.removeHandler(self._handler)
            self._log.propagate = True


class _Capture(logging.Handler):
    """Hands log records to a callback instead of printing them."""

    def __init__(self, callback: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.DEBUG)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(record)


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """Silence a logger for a while (asyncio's "Task exception was never retrieved")."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def flowcore_batch(
    url: str, node: Raw, n: int, runs: int, concurrency: int, warmup: int
) -> Batch:
    """A batch of ``runs`` runs of an ``n``-node chain through the service machinery."""
    before = await pg_transactions(url)
    async with InProcessService(url, max(concurrency, 1)) as service:
        workflow = await service.add_workflow(chain(n, node))
        one = functools.partial(service.run, workflow)
        if warmup:
            await drive(warmup, concurrency, one)
        commits = service.store.commits
        service.submitted.clear()
        batch = await measured(url, drive(runs, concurrency, one))
        batch.commits_per_run = (service.store.commits - commits) / runs
        await service.check(batch)
    batch.xacts_per_run = (await pg_transactions(url) - before) / (runs + warmup)
    return batch


# ------------------------------------------------------------------------- LangGraph


class LGState(TypedDict):
    steps: Annotated[int, operator.add]


async def _lg_step(state: LGState) -> dict[str, int]:
    return {"steps": 1}


def langgraph_available() -> str | None:
    """None if LangGraph and its Postgres checkpointer import, else why not."""
    try:
        import langgraph.checkpoint.postgres.aio
        import langgraph.graph  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


@contextlib.asynccontextmanager
async def langgraph_saver(url: str, pooled: bool) -> AsyncIterator[Any]:
    """An AsyncPostgresSaver (tables set up) on a pool of LG_POOL connections, or on
    one connection (``from_conn_string``, as LangGraph's documentation shows it)."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow, dict_row
    from psycopg_pool import AsyncConnectionPool

    dsn = plain_dsn(url)
    if pooled:
        kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        async with AsyncConnectionPool[AsyncConnection[DictRow]](
            dsn, min_size=LG_POOL, max_size=LG_POOL, kwargs=kwargs, open=False
        ) as pool:
            saver = AsyncPostgresSaver(pool)
            await saver.setup()
            yield saver
    else:
        async with AsyncPostgresSaver.from_conn_string(dsn) as saver:
            await saver.setup()
            yield saver


def lg_chain(n: int, checkpointer: Any) -> Any:
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(LGState)
    for i in range(n):
        graph.add_node(f"n{i}", _lg_step)
    graph.add_edge(START, "n0")
    for i in range(n - 1):
        graph.add_edge(f"n{i}", f"n{i + 1}")
    graph.add_edge(f"n{n - 1}", END)
    return graph.compile(checkpointer=checkpointer)


async def langgraph_batch(
    url: str, n: int, runs: int, concurrency: int, warmup: int, *, pooled: bool, durability: str
) -> Batch:
    before = await pg_transactions(url)
    async with langgraph_saver(url, pooled) as saver:
        graph = lg_chain(n, saver)
        threads = 0

        async def one() -> Outcome:
            nonlocal threads
            threads += 1
            config = {"configurable": {"thread_id": f"t{threads}"}, "recursion_limit": n + 10}
            start = time.perf_counter()
            try:
                state = await graph.ainvoke({"steps": 0}, config, durability=durability)
            except Exception as exc:
                return Outcome(time.perf_counter() - start, False, error=repr(exc)[:160])
            ok = state.get("steps") == n
            return Outcome(time.perf_counter() - start, ok, error=None if ok else repr(state))

        if warmup:
            await drive(warmup, concurrency, one)
        batch = await measured(url, drive(runs, concurrency, one))
    batch.xacts_per_run = (await pg_transactions(url) - before) / (runs + warmup)
    return batch


async def measured(url: str, batch: Awaitable[Batch]) -> Batch:
    """``batch``, with the CPU its database's backends used meanwhile and the number of
    connections to the database at its end."""
    before = await pg_backends(url)
    result = await batch
    after = await pg_backends(url)
    result.db_cpu = backend_cpu(before, after)
    result.connections = len(after)
    return result


# --------------------------------------------------------------- section 1: durable


@dataclass
class Runner:
    key: str
    label: str
    measure: Callable[[str], Awaitable[Batch]]  # given a fresh database URL
    batches: list[Batch] = field(default_factory=list)


@dataclass
class Results:
    """What the targets table needs from the sections."""

    flowcore_rate: float | None = None
    langgraph_rate: float | None = None
    langgraph_label: str = ""
    per_node: dict[int, tuple[float, float]] = field(default_factory=dict)  # n -> (seq, conc)
    http: dict[tuple[str, str], float] = field(default_factory=dict)  # (db, mode) -> runs/s
    #: (db, mode) -> server CPU seconds per run
    http_cpu: dict[tuple[str, str], float] = field(default_factory=dict)


async def section_durable(args: argparse.Namespace, results: Results) -> list[Table]:
    runs, warmup = args.durable_runs, 20
    runners = [
        Runner(
            "flowcore",
            "Flowcore: Store + Dispatcher + RunJournal (noop nodes)",
            lambda url: flowcore_batch(url, NOOP, 10, runs, CLIENTS, warmup),
        )
    ]
    lg_missing = None if args.no_langgraph else langgraph_available()
    if not args.no_langgraph and lg_missing is None:
        for key, label, pooled, durability, count in (
            ("lg-pool", f"LangGraph, pool of {LG_POOL}, durability=async", True, "async", runs),
            ("lg-conn", "LangGraph, one connection, durability=async", False, "async", runs),
            ("lg-sync", f"LangGraph, pool of {LG_POOL}, durability=sync", True, "sync", runs // 2),
        ):
            runners.append(
                Runner(
                    key,
                    label,
                    functools.partial(
                        _lg_measure, n=10, runs=count, pooled=pooled, durability=durability
                    ),
                )
            )
    for rep in range(args.reps):
        for runner in runners:
            log(f"durable: {runner.label}, repetition {rep + 1}/{args.reps}")
            async with scratch_postgres(migrate=runner.key == "flowcore") as url:
                runner.batches.append(await runner.measure(url))

    table = Table(
        f"1. Durable runs in-process on Postgres: 10-node chains, {CLIENTS} concurrent",
        [
            "runner",
            "runs/s",
            "ms per durable node",
            "p50 ms",
            "p99 ms",
            "CPU ms/run",
            "DB CPU ms/run",
            "DB xacts/run",
            "DB conns",
            "vs best LangGraph",
            "failed",
        ],
        "lrrrrrrrrrl",
    )
    lg_async = [r for r in runners if r.key in ("lg-pool", "lg-conn")]
    best = max(lg_async, key=lambda r: med([b.rate for b in r.batches]), default=None)
    best_rate = med([b.rate for b in best.batches]) if best is not None else None
    for runner in runners:
        rates = [b.rate for b in runner.batches]
        versus = f"{med(rates) / best_rate:.2f}x" if best_rate else "-"
        table.rows.append(
            [
                runner.label,
                spread(rates),
                f"{med([b.wall / (b.runs * 10) for b in runner.batches]) * 1e3:.2f}",
                ms(med([percentile(b.latencies, 50) for b in runner.batches])),
                ms(med([percentile(b.latencies, 99) for b in runner.batches])),
                f"{med([b.cpu / b.runs for b in runner.batches]) * 1e3:.1f}",
                db_cpu(runner.batches),
                f"{med([b.xacts_per_run or 0.0 for b in runner.batches]):.1f}",
                connections(runner.batches),
                versus,
                failures(runner.batches),
            ]
        )
    flowcore = runners[0]
    results.flowcore_rate = med([b.rate for b in flowcore.batches])
    if best is not None and best_rate is not None:
        results.langgraph_rate, results.langgraph_label = best_rate, best.label
    commits = med([b.commits_per_run or 0.0 for b in flowcore.batches])
    table.notes += [
        f"each runner: {CLIENTS} concurrent submitters, each starting its next run when its "
        f"previous one finished; {runs} runs per batch (LangGraph durability=sync: "
        f"{runs // 2}) after {warmup} warm-up runs; {args.reps} repetition(s), runners "
        "interleaved, each batch in a fresh database. runs/s: median (min-max).",
        "Flowcore: Store.create_run, then the Dispatcher (max_concurrent_runs=100, "
        "LISTEN/NOTIFY wake-ups) claims the run, executes it with a RunJournal and commits "
        "its outcome; a run is done when its outcome is committed. The store's hot path "
        "runs single-statement transactions on an asyncpg pool as large as the default "
        "SQLAlchemy pool (10 + 10), which keeps the rest. Node results, checkpoints and "
        f"events commit in fenced transactions: {commits:.1f} commit_progress transactions "
        "per run (the engine writes checkpoints behind the run; the journal lets a running "
        "run's records wait up to commit_window_seconds (0.02 s) to commit together).",
        "LangGraph: StateGraph of 10 `async def` nodes returning {'steps': 1}, compiled "
        "with AsyncPostgresSaver; `await graph.ainvoke({'steps': 0}, {'configurable': "
        "{'thread_id': <new>}}, durability=...)`; durability=async (the default) writes "
        "each step's checkpoint while the next step runs, like Flowcore's journal; sync "
        "waits for it.",
        "ms per durable node: batch wall time / (runs x 10). CPU ms/run: this process's CPU "
        "time per run (Postgres runs in other processes). DB CPU ms/run: CPU of the "
        "Postgres backends connected to the scratch database during the batch (/proc; "
        "not the WAL writer or checkpointer), per run. DB xacts/run: commits + rollbacks "
        "pg_stat_database counted in the scratch database, per run (warm-up included). "
        "DB conns: connections to the scratch database at the end of the batch (Flowcore: "
        "both pools and its LISTEN connection).",
    ]
    if lg_missing is not None:
        table.notes.append(f"LangGraph's Postgres checkpointer is not installed: {lg_missing}")
    return [table, await _per_node_table(args, results)]


async def _lg_measure(url: str, *, n: int, runs: int, pooled: bool, durability: str) -> Batch:
    return await langgraph_batch(url, n, runs, CLIENTS, 10, pooled=pooled, durability=durability)


async def _per_node_table(args: argparse.Namespace, results: Results) -> Table:
    concurrency = 5 if args.quick else 10
    sequential = {10: 5, 100: 3, 1000: 2} if args.quick else {10: 10, 100: 5, 1000: 3}
    table = Table(
        "2. Cost per durable node (Flowcore in-process, Postgres) by chain length",
        [
            "node",
            "nodes",
            "1 at a time: ms/run",
            "ms/node",
            f"{concurrency} at a time: runs",
            "runs/s",
            "ms/node",
            "commits/run",
            "node results",
            "failed",
        ],
        "lrrrrrrrrl",
    )
    errors: list[str] = []
    for node, label in ((STEP, "transform"), (NOOP, "noop")):
        for n in (10, 100, 1000):
            log(f"durable: {label} chain of {n}")
            doomed = node is NOOP and n == 1000  # one run shows how it ends
            count = 1 if doomed else sequential[n]
            with quiet("asyncio"):
                async with scratch_postgres() as url:
                    single = await flowcore_batch(url, node, n, count, 1, 0 if doomed else 1)
            batches = [single]
            conc_cells = ["-", "-", "-"]
            if node is STEP:
                runs = max(concurrency, (1000 if args.quick else 2000) // n)
                async with scratch_postgres() as url:
                    conc = await flowcore_batch(url, node, n, runs, concurrency, 0)
                batches.append(conc)
                per_node = conc.wall / (conc.runs * n)
                conc_cells = [str(runs), f"{conc.rate:,.1f}", f"{per_node * 1e3:.3f}"]
                results.per_node[n] = (med(single.latencies) / n, per_node)
            latency = med(single.latencies)
            error = next((b.first_error for b in batches if b.first_error), None)
            if error:
                errors.append(f"{label} {n}: {error}")
            table.rows.append(
                [
                    label,
                    f"{n:,}",
                    ms(latency) if single.failed < single.runs else "-",
                    f"{latency / n * 1e3:.3f}" if single.failed < single.runs else "-",
                    *conc_cells,
                    f"{batches[-1].commits_per_run or 0:.1f}",
                    f"{sum(b.node_results or 0 for b in batches):,}",
                    failures(batches),
                ]
            )
    table.notes += [
        "1 at a time: runs one after another (no warm-up beyond one run), latency from "
        "create_run to the committed outcome, median; ms/node = that / nodes.",
        f"{concurrency} at a time: a batch of `runs` runs, {concurrency} in flight; ms/node = "
        "batch wall time / (runs x nodes). commits/run: commit_progress transactions.",
        "transform: `{'type': 'transform', 'config': {'output': {'steps': '1'}}}`, a "
        "constant-size output (like LangGraph's {'steps': 1}). noop passes its input "
        "through, so node i's output nests node i-1's: a chain's outputs and events grow "
        "as n^2 (noop rows: 1 at a time only).",
        "node results: rows in node_results afterwards (warm-up included).",
    ]
    table.notes += [f"failed: {e}" for e in errors]
    return table


# ------------------------------------------------------------------- section 2: http


async def sse_run(client: httpx.AsyncClient, workflow_id: str) -> Outcome:
    """POST a run, then read its event stream to the end (the server closes it after
    the terminal event; reading to the end keeps the connection reusable)."""
    start = time.perf_counter()
    try:
        response = await client.post("/v1/runs", json={"workflow_id": workflow_id})
        response.raise_for_status()
        run_id = response.json()["run_id"]
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


@contextlib.asynccontextmanager
async def http_clients(base_url: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    """CLIENTS clients of one keep-alive connection each. (One client with a pool of
    CLIENTS connections does the same requests, but httpcore's pool scans all of its
    connections, polling each socket, on every request and response: with 100 of them
    that took ~15 ms of the load generator's CPU per run, on the CPUs the server
    shares.)"""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(60.0))
            )
            for _ in range(CLIENTS)
        ]
        yield clients


async def http_batch(
    dialect: str, mode: str, runs: int, warmup: int, probes: int
) -> tuple[Batch, list[Outcome]]:
    """A fresh database and server; ``runs`` runs from CLIENTS clients after a warm-up;
    then (SSE) ``probes`` runs one at a time on the idle server. ``dialect`` is
    "postgres", "postgres+redis" (the server on Redis too, under a prefix of its own,
    deleted afterwards) or "sqlite"."""
    database, _, with_redis = dialect.partition("+")
    prefix = unique_prefix() if with_redis else None
    try:
        return await _http_batch(database, redis_env(prefix), mode, runs, warmup, probes)
    finally:
        if prefix is not None:
            probe = RedisProbe(REDIS_URL)
            try:
                await probe.forget(prefix)
            finally:
                await probe.close()


async def _http_batch(
    database: str, env: dict[str, str], mode: str, runs: int, warmup: int, probes: int
) -> tuple[Batch, list[Outcome]]:
    async with scratch_database(database) as url:
        before = await pg_transactions(url) if database == "postgres" else None
        async with (
            serve(url, {**SERVER_ENV, **env}) as server,
            http_clients(server.base_url) as clients,
        ):
            response = await clients[0].post("/v1/workflows", json=chain(10, NOOP))
            response.raise_for_status()
            run = sse_run if mode == "sse" else wait_run
            workflow_id = response.json()["id"]

            async def one() -> Outcome:
                client = clients.pop()  # a worker's own keep-alive connection
                try:
                    return await run(client, workflow_id)
                finally:
                    clients.append(client)

            await drive(warmup, CLIENTS, one)
            server_cpu = server.cpu()
            work = drive(runs, CLIENTS, one)
            batch = await (measured(url, work) if database == "postgres" else work)
            batch.server_cpu = server.cpu() - server_cpu
            idle = [await one() for _ in range(probes)] if mode == "sse" else []
        if before is not None:
            total = warmup + runs + len(idle)
            batch.xacts_per_run = (await pg_transactions(url) - before) / total
    return batch, idle


async def section_http(args: argparse.Namespace, results: Results) -> list[Table]:
    runs, warmup, probes = args.http_runs, (20 if args.quick else 50), 10
    dialects = ["postgres", "postgres+redis", "sqlite"] if not args.no_postgres else ["sqlite"]
    if "postgres+redis" in dialects and (args.no_redis or await redis_unavailable()):
        dialects.remove("postgres+redis")
    modes = ("sse", "wait")
    batches: dict[tuple[str, str], list[Batch]] = {(d, m): [] for d in dialects for m in modes}
    idle: dict[str, list[Outcome]] = {d: [] for d in dialects}
    for rep in range(args.http_reps):
        for dialect in dialects:
            for mode in modes:
                log(f"http: {dialect}, {mode}, {runs} runs, repetition {rep + 1}/{args.http_reps}")
                batch, probe = await http_batch(dialect, mode, runs, warmup, probes)
                batches[dialect, mode].append(batch)
                idle[dialect] += probe

    names = {"postgres": "Postgres", "postgres+redis": "Postgres + Redis", "sqlite": "SQLite"}
    mode_names = {"sse": "POST + SSE", "wait": "POST ?wait=30"}
    table = Table(
        f"3. End to end over HTTP: 10-node noop chain, {CLIENTS} concurrent clients",
        [
            "database",
            "client",
            "runs/s",
            "p50 ms",
            "p99 ms",
            "SSE first event p50 / p99 ms",
            "server CPU ms/run",
            "client CPU ms/run",
            "DB CPU ms/run",
            "DB xacts/run",
            "DB conns",
            "failed",
        ],
        "llrrrrrrrrrl",
    )
    errors: list[str] = []
    for (dialect, mode), group in batches.items():
        rates = [b.rate for b in group]
        results.http[dialect, mode] = med(rates)
        results.http_cpu[dialect, mode] = med([(b.server_cpu or 0.0) / b.runs for b in group])
        firsts = [b.first_events for b in group if b.first_events]
        first_cell = (
            f"{ms(med([percentile(f, 50) for f in firsts]))} / "
            f"{ms(med([percentile(f, 99) for f in firsts]))}"
            if firsts
            else "-"
        )
        xacts = [b.xacts_per_run for b in group if b.xacts_per_run is not None]
        table.rows.append(
            [
                names[dialect],
                mode_names[mode],
                spread(rates),
                ms(med([percentile(b.latencies, 50) for b in group])),
                ms(med([percentile(b.latencies, 99) for b in group])),
                first_cell,
                f"{med([(b.server_cpu or 0.0) / b.runs for b in group]) * 1e3:.1f}",
                f"{med([b.cpu / b.runs for b in group]) * 1e3:.1f}",
                db_cpu(group),
                f"{med(xacts):.1f}" if xacts else "-",
                connections(group),
                failures(group),
            ]
        )
        errors += [f"{names[dialect]} {mode}: {b.first_error}" for b in group if b.first_error]
    table.notes += [
        f"`python -m app.cli serve --no-migrate` in a subprocess with {SERVER_ENV} and "
        "otherwise default settings (pool of 10 + 10 connections, uvicorn on uvloop with "
        "its access log), on a fresh migrated database per row and repetition.",
        f"{CLIENTS} workers, each with its own httpx.AsyncClient and keep-alive "
        "connection, each looping: POST /v1/runs, then GET /v1/runs/{id}/events read to "
        "the end of the stream (or: POST /v1/runs?wait=30, answered when the run finished). "
        f"{runs} runs per batch after {warmup} warm-up runs; {args.http_reps} "
        "repetition(s); runs/s: median (min-max).",
        "latency: POST sent -> terminal `event:` line read (SSE) or response read (wait). "
        "SSE first event: GET sent -> first `event:` line (the `: stream open` comment "
        "before it does not count).",
        "server CPU: the server process's user + system CPU during the batch (/proc); "
        "client CPU: this process's. DB CPU: the Postgres backends' (see table 1). DB "
        "xacts/run: pg_stat_database commits + rollbacks over the server's life (warm-up "
        "and idle probes included) per run.",
        f"on this machine the server, Postgres and the clients share {_cpus()} CPUs.",
    ]
    if "postgres+redis" in dialects:
        table.notes.append(
            f"Postgres + Redis: FLOWCORE_REDIS_URL={REDIS_URL} and a FLOWCORE_REDIS_PREFIX of "
            "its own per batch (cache, breakers, live events over pub/sub; wake-ups stay on "
            "NOTIFY). With one replica its streams need no channel: what Redis costs here "
            "is publishing each run's events for other replicas."
        )
    else:
        table.notes.append("Postgres + Redis: not measured (--no-redis, or Redis unreachable).")
    table.notes += [f"failed: {e}" for e in errors]

    idle_table = Table(
        "4. SSE on an idle server: one client, one run at a time (10-node noop chain)",
        ["database", "runs", "first event p50 ms", "first event max ms", "POST -> terminal p50 ms"],
        "lrrrr",
    )
    for dialect, outcomes in idle.items():
        idle_firsts = [o.first_event for o in outcomes if o.first_event is not None]
        idle_table.rows.append(
            [
                names[dialect],
                str(len(outcomes)),
                ms(percentile(idle_firsts, 50)),
                ms(max(idle_firsts)) if idle_firsts else "-",
                ms(percentile([o.latency for o in outcomes], 50)),
            ]
        )
    idle_table.notes.append(
        f"{probes} runs after each Postgres/SQLite SSE batch, on the same server, one at a "
        "time; first event: GET sent -> first `event:` line."
    )
    return [table, idle_table]


async def redis_unavailable() -> bool:
    probe = RedisProbe(REDIS_URL)
    try:
        problem = await probe.available()
    finally:
        await probe.close()
    if problem is not None:
        log(f"Redis at {REDIS_URL} does not answer ({problem}): no Postgres + Redis rows")
    return problem is not None


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------- targets


def targets_table(args: argparse.Namespace, results: Results) -> Table:
    table = Table(
        "5. Targets (issues 4 and 5)",
        ["target", "measured", "verdict"],
        "llr",
    )
    lg_rate = results.langgraph_rate
    lg_source = f"{results.langgraph_label}, measured here"
    if lg_rate is None:
        lg_rate, lg_source = ISSUE_LANGGRAPH_RATE, "the issue's figure (not measured in this run)"
    if results.flowcore_rate is not None:
        ratio = results.flowcore_rate / lg_rate
        table.rows.append(
            [
                "in-process >= 5x LangGraph's runs/s",
                f"{results.flowcore_rate:,.1f} vs {lg_rate:,.1f} runs/s = {ratio:.2f}x",
                "met" if ratio >= 5 else "NOT met",
            ]
        )
    for (dialect, mode), rate in results.http.items():
        ratio = rate / lg_rate
        table.rows.append(
            [
                f"HTTP >= 2x LangGraph's runs/s ({dialect}, {mode})",
                f"{rate:,.1f} vs {lg_rate:,.1f} runs/s = {ratio:.2f}x",
                "met" if ratio >= 2 else "NOT met",
            ]
        )
    for mode in ("sse", "wait"):
        with_redis = results.http_cpu.get(("postgres+redis", mode))
        without = results.http_cpu.get(("postgres", mode))
        if with_redis is None or not without:
            continue
        table.rows.append(
            [
                f"Redis adds <= 10% to a run's cost (issue 5): server CPU per run ({mode})",
                f"{with_redis * 1e3:.1f} vs {without * 1e3:.1f} ms = {with_redis / without:.3f}x",
                "met" if with_redis / without <= 1.10 else "NOT met",
            ]
        )
    per_node = results.per_node
    if all(n in per_node for n in (10, 100, 1000)):
        for index, label in ((0, "1 at a time"), (1, "concurrent")):
            cost = {n: per_node[n][index] * 1e3 for n in (10, 100, 1000)}  # ms per node
            # the cost of the nodes added, with the per-run costs taken out
            low = (cost[100] * 100 - cost[10] * 10) / 90
            high = (cost[1000] * 1000 - cost[100] * 100) / 900
            table.rows.append(
                [
                    f"cost per durable node constant, 10 -> 1,000 nodes ({label})",
                    " / ".join(f"{cost[n]:.3f}" for n in (10, 100, 1000))
                    + f" ms per node; marginal {low:.3f} (10->100), {high:.3f} ms "
                    f"(100->1,000) = {high / low:.2f}x",
                    (
                        "met"
                        if 0.8 <= high / low <= 1.25
                        else "met (falls)"
                        if high / low < 0.8
                        else "NOT met"
                    ),
                ]
            )
        table.notes.append(
            "constant: the marginal cost of a node from 100 to 1,000 nodes within 0.8-1.25x "
            "of that from 10 to 100 (marginal: (n2 x cost(n2) - n1 x cost(n1)) / (n2 - n1), "
            "which takes the per-run costs - create, claim, finish - out; the cost per "
            "node falls with n as those spread over more nodes); 'met (falls)': below 0.8x, "
            "a node of a long chain costs less than one of a short chain (group commit "
            "puts more nodes in each transaction), it does not grow."
        )
    if results.flowcore_rate is not None or results.http:
        table.notes.insert(
            0,
            f"LangGraph's runs/s: {lg_source}"
            + ("; the best of its durability=async runners." if results.langgraph_rate else "."),
        )
    return table


# ----------------------------------------------------------------------------- main


def header(args: argparse.Namespace, pg: str) -> list[str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; flowcore {revision()}",
        f"python: {platform.python_implementation()} {platform.python_version()} "
        f"({platform.platform()}); event loop: uvloop {version('uvloop')} (here and in "
        "the server)",
        f"cpu: {cpu_model()}; {os.cpu_count()} CPUs ({_cpus()} usable)",
        f"postgres: {pg}; sqlalchemy {version('sqlalchemy')}, asyncpg {version('asyncpg')}, "
        f"aiosqlite {version('aiosqlite')}, httpx {version('httpx')}",
        f"langgraph {version('langgraph')}, langgraph-checkpoint-postgres "
        f"{version('langgraph-checkpoint-postgres')}, psycopg {version('psycopg')}",
        f"mode: {'quick' if args.quick else 'full'}; load average (1, 5, 15 min) at the "
        f"start of measuring: {loadavg()}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller batches, one repetition")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument("--no-langgraph", action="store_true", help="skip LangGraph")
    parser.add_argument("--no-redis", action="store_true", help="skip the Postgres + Redis rows")
    parser.add_argument("--reps", type=int, help="in-process repetitions (default 3; quick 1)")
    parser.add_argument("--durable-runs", type=int, help="in-process runs per batch (200; 100)")
    parser.add_argument("--http-runs", type=int, help="HTTP runs per batch (default 300; 150)")
    parser.add_argument("--http-reps", type=int, default=1, help="HTTP repetitions (default 1)")
    parser.add_argument(
        "--max-load", type=float, default=1.0, help="wait for a 1-minute load below this"
    )
    parser.add_argument(
        "--max-wait", type=float, default=900.0, help="...for at most this many seconds (0: no)"
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.durable_runs is None:
        args.durable_runs = 100 if args.quick else 200
    if args.http_runs is None:
        args.http_runs = 150 if args.quick else 300
    return args


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    problem = await postgres_unavailable()
    args.no_postgres = problem is not None
    pg = await postgres_version() if problem is None else f"unreachable ({problem})"
    if problem is None and sys.platform == "linux":
        for name in await drop_stale_databases():
            log(f"dropped {name}, left behind by a benchmark that was killed")
    if args.max_wait > 0:
        await asyncio.to_thread(wait_for_quiet, args.max_load, args.max_wait)
    lines = header(args, pg)
    if args.markdown:
        print("\n".join(f"- {line}" for line in lines) + "\n", flush=True)
    else:
        print("Flowcore service benchmark\n" + "\n".join(lines) + "\n", flush=True)
    results = Results()
    sections = [s for s in SECTIONS if s in (args.only or SECTIONS)]
    if "durable" in sections and args.no_postgres:
        log(f"Postgres is unreachable ({problem}); skipping the in-process section")
        sections.remove("durable")
    for section in sections:
        began = time.perf_counter()
        tables = await (section_durable if section == "durable" else section_http)(args, results)
        for table in tables:
            emit(table, args.markdown)
        log(f"{section}: {time.perf_counter() - began:.0f} s")
    emit(targets_table(args, results), args.markdown)
    footer = f"total time {time.perf_counter() - started:.0f} s; load average at the end: "
    footer += loadavg()
    print(f"- {footer}" if args.markdown else footer, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if sys.platform != "win32":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
