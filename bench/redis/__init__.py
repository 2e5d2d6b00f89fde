"""Redis and /metrics benchmarks of the HTTP service on Postgres: prints tables, asserts
nothing.

    python -m bench.redis                  # everything (about 4 minutes)
    python -m bench.redis --quick          # one round of smaller batches (about 1¼ min)
    python -m bench.redis --only cost      # or --only sse
    python -m bench.redis --only cost --cost-configs none,redis --rounds 6   # Redis vs none only
    python -m bench.redis --sse-clients 50,5,150   # the loads of the sse section
    python -m bench.redis --markdown       # GitHub tables (for docs/benchmarks-redis.md)

Sections:

``cost``  One replica (``python -m app.cli serve`` in a subprocess, a fresh scratch
          Postgres database per batch) and 100 concurrent clients, each looping: POST
          /v1/runs of a 10-node ``noop`` chain, then read the run's SSE stream to its
          terminal event. Four configurations, interleaved round by round in a rotating
          order: no Redis; Redis (FLOWCORE_REDIS_URL, a unique FLOWCORE_REDIS_PREFIX);
          no Redis with a scraper (a separate process, like Prometheus) GETting /metrics
          every 1 s; every 0.1 s. Table 1 is Redis vs none, table 2 the scrapers vs none.
``sse``   Two replicas on one Postgres (and one Redis): A executes (dispatcher on), B
          serves the API only (FLOWCORE_DISPATCHER_ENABLED=false). 50 (then 5) concurrent
          clients POST runs of a chain of 10 ``delay`` nodes (0.02 s) and read their SSE
          streams on B, or for reference on A. Latency of a ``node.completed`` event = the
          client's clock when it reads the event - the event's ``timestamp`` (when A
          emitted it; one machine, one clock). With Redis, and without (B then only
          polls the database log, every 0.25 s).

Progress goes to stderr, tables to stdout. The servers' warnings and errors (from their
JSON logs) are listed under the tables.

One module per table: cost.py runs the cost section's batches and cost_tables.py prints
tables 1 and 2 (scraper.py is the /metrics scraper process); replicas.py watches runs
across replicas, sse.py runs the sse section and prints table 3, hops.py table 3b;
targets.py table 4; cli.py the command line. What other benchmarks share is in
bench.support.
"""

#: the nodes of every chain the sections run
CHAIN = 10
