"""Section ``cost``, tables 1 and 2: the configurations of bench/redis/cost_batch.py
interleaved round by round in a rotating order; table 1 is Redis vs none, table 2 the
scrapers vs none."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.redis import CHAIN
from bench.redis.cost_batch import COST_CONFIGS, IDLE_SCRAPES, CostBatch, CostConfig, cost_batch
from bench.redis.targets import Results
from bench.support.load import CLIENTS, SERVER_ENV
from bench.support.machine import loadavg, log
from bench.support.redis_probe import REDIS_URL, RedisProbe
from bench.support.server import server_problems
from bench.support.stats import med, ms, percentile, ratio, spread
from bench.support.tables import Table


@dataclass
class Rounds:
    """The batches of every configuration, over the rounds."""

    configs: list[CostConfig]
    batches: dict[str, list[CostBatch]]

    def rates(self, key: str) -> list[float]:
        return [b.rate for b in self.batches[key]]

    def server_cpu(self, key: str) -> list[float]:
        return [b.server_cpu / b.runs for b in self.batches[key]]

    def failed(self, key: str) -> str:
        group = self.batches[key]
        return f"{sum(b.failed for b in group)}/{sum(b.runs for b in group)}"

    def p(self, key: str, q: float) -> float:
        """The ``q``-th percentile of the latency, median over the rounds."""
        return med([percentile(b.latencies, q) for b in self.batches[key]])


async def section_cost(
    args: argparse.Namespace, probe: RedisProbe | None, results: Results
) -> list[Table]:
    configs = [
        c
        for c in COST_CONFIGS
        if (probe is not None or not c.redis) and (c.key in args.cost_configs or c.key == "none")
    ]
    batches: dict[str, list[CostBatch]] = {c.key: [] for c in configs}
    problems: list[str] = []
    for round_ in range(args.rounds):
        shift = round_ % len(configs)
        for config in configs[shift:] + configs[:shift]:
            log(f"cost: {config.label}, round {round_ + 1}/{args.rounds}")
            batch = await cost_batch(config, args.runs, args.warmup, probe, problems)
            batches[config.key].append(batch)
            log(
                f"  {batch.rate:.1f} runs/s, server CPU {batch.server_cpu / batch.runs * 1e3:.1f}"
                f" ms/run, failed {batch.failed}, load {loadavg()}"
            )
    rounds = Rounds(configs, batches)
    return [redis_table(args, rounds, results), scrape_table(rounds, problems, results)]


def redis_table(args: argparse.Namespace, rounds: Rounds, results: Results) -> Table:
    table1 = Table(
        f"1. Redis on one replica: {CHAIN}-node noop chain, {CLIENTS} concurrent clients "
        "(POST + SSE to the end), Postgres",
        [
            "configuration",
            "runs/s",
            "p50 ms",
            "p99 ms",
            "server CPU ms/run",
            "Redis server CPU ms/run",
            "Redis commands/run",
            "client CPU ms/run",
            "failed",
        ],
        "lrrrrrrrl",
    )
    for key in ("none", "redis"):
        if key not in rounds.batches:
            continue
        group = rounds.batches[key]
        redis_cpu = [b.redis_cpu / b.runs for b in group if b.redis_cpu is not None]
        commands = [b.redis_commands / b.runs for b in group if b.redis_commands is not None]
        table1.rows.append(
            [
                next(c.label for c in rounds.configs if c.key == key),
                spread(rounds.rates(key)),
                ms(rounds.p(key, 50)),
                ms(rounds.p(key, 99)),
                spread([x * 1e3 for x in rounds.server_cpu(key)]),
                spread([x * 1e3 for x in redis_cpu], 2) if redis_cpu else "-",
                f"{med(commands):.1f}" if commands else "-",
                f"{med([b.cpu / b.runs for b in group]) * 1e3:.1f}",
                rounds.failed(key),
            ]
        )
    if "redis" in rounds.batches:
        none_cpu, redis_cpu_run = med(rounds.server_cpu("none")), med(rounds.server_cpu("redis"))
        redis_server = [
            b.redis_cpu / b.runs for b in rounds.batches["redis"] if b.redis_cpu is not None
        ]
        table1.rows.append(
            [
                "Redis / no Redis",
                ratio(med(rounds.rates("redis")), med(rounds.rates("none"))),
                ratio(rounds.p("redis", 50), rounds.p("none", 50)),
                ratio(rounds.p("redis", 99), rounds.p("none", 99)),
                ratio(redis_cpu_run, none_cpu),
                "",
                "",
                "",
                "",
            ]
        )
        paired_cpu = [
            r.server_cpu / n.server_cpu
            for r, n in zip(rounds.batches["redis"], rounds.batches["none"], strict=False)
        ]
        paired_rate = [
            r.rate / n.rate
            for r, n in zip(rounds.batches["redis"], rounds.batches["none"], strict=False)
        ]
        table1.notes.append(
            "Redis / no Redis per round (server CPU per run; runs/s): "
            + ", ".join(f"{c:.3f}x; {r:.3f}x" for c, r in zip(paired_cpu, paired_rate, strict=True))
        )
        results.redis_cpu_ratio = redis_cpu_run / none_cpu
        results.redis_rate_ratio = med(rounds.rates("redis")) / med(rounds.rates("none"))
        if redis_server:
            results.redis_total_ratio = (redis_cpu_run + med(redis_server)) / none_cpu
    else:
        table1.notes.append(f"Redis at {REDIS_URL} is unreachable: its rows are missing.")
    table1.notes += [
        f"each batch: a fresh scratch Postgres database and server, {args.warmup} warm-up "
        f"runs, then {args.runs} runs from {CLIENTS} clients (one keep-alive connection "
        "each), each looping POST /v1/runs, GET /v1/runs/{id}/events read to the end; "
        f"{args.rounds} round(s), the configurations of tables 1 and 2 interleaved in a "
        "rotating order. Cells: median (min-max) over rounds; p50/p99: median over rounds.",
        f"server settings: {SERVER_ENV}, otherwise the defaults; Redis: FLOWCORE_REDIS_URL="
        f"{REDIS_URL} and a FLOWCORE_REDIS_PREFIX of its own per batch (cache, breakers, "
        "live events over pub/sub; dispatcher wake-ups stay on NOTIFY: "
        "FLOWCORE_REDIS_WAKEUPS unset).",
        "server CPU: the server process's user + system CPU over the measured runs (/proc). "
        "Redis server CPU and commands: INFO deltas of the whole Redis server over the "
        "same runs (anything else using that Redis counts too). Client CPU: the bench "
        "process's.",
    ]
    return table1


def scrape_table(rounds: Rounds, problems: list[str], results: Results) -> Table:
    table2 = Table(
        "2. /metrics scraping under the same load (no Redis)",
        [
            "scraper",
            "runs/s",
            "p50 ms",
            "p99 ms",
            "server CPU ms/run",
            "CPU vs none",
            "scrapes",
            "scrape p50 ms",
            "scrape p99 ms",
            "scrape max ms",
            "response KiB",
            "failed",
        ],
        "lrrrrrrrrrrl",
    )
    scrape_errors: list[str] = []
    for key, label in (("none", "none"), ("scrape-1", "every 1 s"), ("scrape-0.1", "every 0.1 s")):
        if key not in rounds.batches:
            continue
        group = rounds.batches[key]
        scrapes = [b.scrapes for b in group if b.scrapes is not None]
        cells = ["-"] * 5
        if scrapes:
            lat = [s.latencies for s in scrapes]
            sizes = [size for s in scrapes for size in s.sizes]
            cells = [
                str(sum(len(x) for x in lat)),
                ms(med([percentile(x, 50) for x in lat])),
                ms(med([percentile(x, 99) for x in lat])),
                ms(max((max(x) for x in lat if x), default=float("nan"))),
                f"{med(sizes) / 1024:.1f} (max {max(sizes) / 1024:.1f})" if sizes else "-",
            ]
            scrape_errors += [e for s in scrapes for e in s.errors]
        table2.rows.append(
            [
                label,
                spread(rounds.rates(key)),
                ms(rounds.p(key, 50)),
                ms(rounds.p(key, 99)),
                spread([x * 1e3 for x in rounds.server_cpu(key)]),
                ratio(med(rounds.server_cpu(key)), med(rounds.server_cpu("none"))),
                *cells,
                rounds.failed(key),
            ]
        )
        results.scrape_cpu_ratio[label] = med(rounds.server_cpu(key)) / med(
            rounds.server_cpu("none")
        )
    table2.notes += [
        "the scraper is a separate process (stdlib http.client, one keep-alive connection, "
        "like Prometheus) that GETs /metrics on a fixed schedule while the measured runs "
        "go on; scrape latency: request sent -> body read, in that process. Response: the "
        "body's size, median (max) over the scrapes.",
        "none: the same batches as table 1's no-Redis row.",
    ]
    idle = [
        b.idle_scrape
        for key in rounds.batches
        for b in rounds.batches[key]
        if b.idle_scrape is not None
    ]
    if idle:
        table2.notes.append(
            f"on the idle server after each scraper batch, {len(idle) * IDLE_SCRAPES} scrapes one "
            f"after another: {med([i[0] for i in idle]) * 1e3:.2f} ms of server CPU per "
            f"scrape; latency p50 {ms(med([i[1] for i in idle]))} ms, p99 "
            f"{ms(med([i[2] for i in idle]))} ms (from the bench process)."
        )
    if scrape_errors:
        table2.notes.append(
            f"failed scrapes: {len(scrape_errors)}, the first: {scrape_errors[0][:200]}"
        )
    errors = [
        f"{key}: {b.first_error}"
        for key, group in rounds.batches.items()
        for b in group
        if b.failed
    ]
    notes = [f"failed runs: {e}" for e in errors[:5]]
    notes += server_problems(problems)
    table2.notes += notes
    return table2
