"""Table 4: the targets, from what the sections measured (``Results``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.support.stats import ms
from bench.support.tables import Table

REDIS_COST_LIMIT = 1.10  # Redis adds at most 10% to the server's CPU per run
CROSS_P99_LIMIT = 0.050  # seconds


@dataclass
class Results:
    redis_cpu_ratio: float | None = None
    redis_total_ratio: float | None = None
    redis_rate_ratio: float | None = None
    scrape_cpu_ratio: dict[str, float] = field(default_factory=dict)
    #: (concurrent runs, "A" or "B") -> p99 of node.completed with Redis
    sse_p99: dict[tuple[int, str], float] = field(default_factory=dict)
    #: concurrent runs -> p99 of the hop (the same event read on B - read on A)
    hop_p99: dict[int, float] = field(default_factory=dict)


def targets_table(results: Results) -> Table:
    table = Table("4. Targets", ["target", "measured", "verdict"], "llr")
    limit = f"{(REDIS_COST_LIMIT - 1) * 100:.0f}%"
    if results.redis_cpu_ratio is not None:
        table.rows.append(
            [
                f"Redis adds <= {limit} to a run's cost: server CPU per run",
                f"{results.redis_cpu_ratio:.3f}x no Redis's "
                f"(runs/s {results.redis_rate_ratio or float('nan'):.3f}x)",
                "met" if results.redis_cpu_ratio <= REDIS_COST_LIMIT else "NOT met",
            ]
        )
    if results.redis_total_ratio is not None:
        table.rows.append(
            [
                f"... counting the Redis server's CPU too (<= {limit})",
                f"{results.redis_total_ratio:.3f}x",
                "met" if results.redis_total_ratio <= REDIS_COST_LIMIT else "NOT met",
            ]
        )
    for (concurrency, name), p99 in sorted(results.sse_p99.items(), reverse=True):
        if name != "B":
            continue
        same = results.sse_p99.get((concurrency, "A"))
        table.rows.append(
            [
                f"cross-replica SSE p99 < {CROSS_P99_LIMIT * 1e3:.0f} ms (node.completed, "
                f"{concurrency} concurrent runs)",
                f"{ms(p99)} ms" + (f" (same replica: {ms(same)} ms)" if same is not None else ""),
                "met" if p99 < CROSS_P99_LIMIT else "NOT met",
            ]
        )
    for concurrency, p99 in sorted(results.hop_p99.items(), reverse=True):
        table.rows.append(
            [
                f"... the hop alone (table 3b), {concurrency} concurrent runs",
                f"{ms(p99)} ms",
                "met" if p99 < CROSS_P99_LIMIT else "NOT met",
            ]
        )
    if not table.rows:
        table.notes.append("nothing measured (Redis unreachable, or sections skipped)")
    return table
