"""Table 3b: the cross-replica hop alone: each run streamed at once from A (executing)
and from B; ``node.completed`` read on B - read on A."""

from __future__ import annotations

import argparse

from bench.redis.replicas import PairBatch
from bench.redis.targets import Results
from bench.support.stats import med, ms, percentile, spread
from bench.support.tables import Table


def hop_table(
    args: argparse.Namespace, pair_batches: dict[int, list[PairBatch]], results: Results
) -> Table:
    """Table 3b: the same events read on A and on B at once; the difference is the hop."""
    table = Table(
        "3b. The cross-replica hop: each run streamed at once from A (executing) and from B; "
        "node.completed read on B - read on A",
        [
            "concurrent runs",
            "runs/s",
            "events counted",
            "hop p50 ms",
            "hop p95 ms",
            "hop p99 ms",
            "hop max ms",
            "on A p99 ms",
            "on B p99 ms",
            "out of order or gaps",
            "failed",
        ],
        "rrrrrrrrrrl",
    )
    errors: list[str] = []
    for concurrency in args.sse_clients:
        group = pair_batches.get(concurrency)
        if not group:
            continue
        hop = {q: med([percentile(b.hops, q) for b in group]) for q in (50, 95, 99)}
        pairs = [p for b in group for p in b.pairs]
        lags_a = med([percentile([x for p in b.pairs for x in p.a.lags], 99) for b in group])
        lags_b = med([percentile([x for p in b.pairs for x in p.b.lags], 99) for b in group])
        table.rows.append(
            [
                str(concurrency),
                spread([b.rate for b in group]),
                f"{sum(len(b.hops) for b in group):,}",
                ms(hop[50]),
                ms(hop[95]),
                ms(hop[99]),
                ms(max((max(b.hops) for b in group if b.hops), default=float("nan"))),
                ms(lags_a),
                ms(lags_b),
                str(sum(1 for p in pairs if p.a.broken or p.b.broken)),
                f"{sum(1 for p in pairs if not p.ok)}/{len(pairs)}",
            ]
        )
        errors += [w.error for p in pairs for w in (p.a, p.b) if w.error is not None]
        results.hop_p99[concurrency] = hop[99]
    table.notes += [
        "with Redis, on the same pair of servers as table 3, after its batches at each load: "
        "a client on A POSTs a run and reads its stream while a client on B reads the same "
        "run's stream (so twice the streams of table 3 at the same number of runs). Hop: "
        "for each node.completed emitted once both streams were open, time.time() when "
        "this process read it from B minus when it read it from A: Redis pub/sub and B's "
        "stream, without A's commit and without the emission-to-read time both share. "
        "p50/p95/p99: median over rounds; on A / on B p99: node.completed latency as in "
        "table 3, of these streams.",
    ]
    if errors:
        table.notes.append(f"failed: {len(errors)}, the first: {errors[0][:200]}")
    return table
