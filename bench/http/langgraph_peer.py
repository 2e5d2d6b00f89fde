"""The peer of the durable section: LangGraph running the same chain with its Postgres
checkpointer (AsyncPostgresSaver), from the ``bench`` extra."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from bench.http.accounting import ServiceBatch, measured
from bench.support.databases import pg_transactions, plain_dsn
from bench.support.load import Outcome, drive, run_batch
from bench.vs_langgraph import lg_graph, lg_noop_async

#: LangGraph's pool: as many connections as the service's default pool (10 + 10 overflow)
LG_POOL = 20


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


async def langgraph_batch(
    url: str, n: int, runs: int, concurrency: int, warmup: int, *, pooled: bool, durability: str
) -> ServiceBatch:
    """A batch of ``runs`` invocations of an ``n``-node chain, each on a new thread, from
    ``concurrency`` workers; ``durability`` as LangGraph's ``ainvoke`` takes it."""
    before = await pg_transactions(url)
    async with langgraph_saver(url, pooled) as saver:
        graph = lg_graph("chain", n, lg_noop_async, saver)
        threads = 0

        async def one(_: int) -> Outcome:
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

        workers = range(concurrency)
        if warmup:
            await drive(warmup, workers, one)
        batch = await measured(url, run_batch(runs, workers, one))
    batch.xacts_per_run = (await pg_transactions(url) - before) / (runs + warmup)
    return batch
