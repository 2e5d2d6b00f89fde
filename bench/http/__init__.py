"""Service benchmarks: durable runs over HTTP and in-process; prints tables, asserts nothing.

    python -m bench.http                   # everything (~2 minutes, after a quiet machine)
    python -m bench.http --quick           # smaller batches, one repetition
    python -m bench.http --only durable    # or --only http, --only delays
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
``delays``   In-process, Postgres and SQLite: 200 ``delay`` nodes of 10 ms as a fan-out
             (10 at a time) and as a chain, against the asyncio floor in the same
             process, and a single 10-node run on an idle service (issue 11's targets).
``auth``     End to end as ``http`` (POST + SSE), with API keys off, on, and on with rate
             limits, interleaved, on Postgres and SQLite: what authentication costs a run
             in server CPU (issue 12's target: < 5%).

``python -m bench.redis`` goes further into Redis: what it costs a run over more rounds,
the cost of /metrics scraping under load, and live events across replicas.

Every measurement gets a fresh database (Postgres: a scratch database created on the
admin database and dropped afterwards; SQLite: a temporary file), migrated to head.
Compared things run in the same process, interleaved repetition by repetition. The run
waits for the machine's 1-minute load average to fall below 1.0 first. Progress goes
to stderr, tables to stdout.

One module per table: durable.py (1), per_node.py (2), endtoend.py (3, 4), targets.py
(5), delays.py (6), auth.py (7); inprocess.py and langgraph_peer.py are the two runners
of table 1, cli.py the command line. What other benchmarks share is in bench.support.
"""

from bench.http.inprocess import (
    CountingPostgresStore,
    CountingSqliteStore,
    CountingStore,
    InProcessService,
    counting_store,
)

__all__ = [
    "CountingPostgresStore",
    "CountingSqliteStore",
    "CountingStore",
    "InProcessService",
    "counting_store",
]
