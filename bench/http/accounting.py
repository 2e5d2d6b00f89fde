"""A batch of the service benchmark and what it cost the database: the Postgres
transactions, backend CPU and connections around it, and the cells they print as."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from bench.support.databases import backend_cpu, pg_backends
from bench.support.load import Batch
from bench.support.stats import med


@dataclass
class ServiceBatch(Batch):
    xacts_per_run: float | None = None  # Postgres transactions per run
    commits_per_run: float | None = None  # Flowcore: commit_progress transactions per run
    db_cpu: float | None = None  # CPU seconds of the database's Postgres backends
    connections: int | None = None  # connections to the database at the end of the batch
    node_results: int | None = None  # Flowcore: node results in the database afterwards


async def measured(url: str | None, batch: Awaitable[Batch]) -> ServiceBatch:
    """``batch``; on Postgres (``url`` given), with the CPU its database's backends used
    meanwhile and the number of connections to the database at its end."""
    before = await pg_backends(url) if url is not None else None
    result = await batch
    done = ServiceBatch(result.runs, result.wall, result.outcomes, result.cpu)
    if url is not None and before is not None:
        after = await pg_backends(url)
        done.db_cpu = backend_cpu(before, after)
        done.connections = len(after)
    return done


def db_cpu(batches: Sequence[ServiceBatch]) -> str:
    """Median Postgres backend CPU per run, in ms."""
    values = [b.db_cpu / b.runs for b in batches if b.db_cpu is not None]
    return f"{med(values) * 1e3:.1f}" if values else "-"


def connections(batches: Sequence[ServiceBatch]) -> str:
    values = [b.connections for b in batches if b.connections is not None]
    return str(max(values)) if values else "-"


def failures(batches: Sequence[ServiceBatch]) -> str:
    failed = sum(b.failed for b in batches)
    return f"{failed}/{sum(b.runs for b in batches)}"
