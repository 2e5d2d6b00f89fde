"""Section ``features``: the feature variants (cache, trace, metrics, all on), the time
each costs per node (4c, 4d); their memory is measured by bench/features_memory.py (4a,
4b).

Three workloads of noop-like nodes:

``chain``        n0 -> n1 -> ... of ``noop`` nodes. A noop passes its input (its parents'
                 outputs by id) through, so node i's output is nested i levels deep:
                 anything that serializes outputs (cache keys, checkpoints) does O(i)
                 work at node i.
``chain-const``  the same chain of ``transform`` nodes with ``output: {}``: a noop whose
                 output has a constant size, the cost of the feature itself.
``fan-out``      n0 -> each of the n - 1 other ``noop`` nodes (every leaf has the same
                 type, config and input, so with the default cache key they share one
                 cache entry).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.engine import (
    ExecutionConfig,
    InMemoryCache,
    MetricsCollector,
    RunResult,
    WorkflowDefinition,
    WorkflowExecutor,
)
from bench.common import (
    NOOP,
    AsyncFn,
    Raw,
    Table,
    cell,
    chain_raw,
    engine_run,
    fanout_raw,
    log,
    med,
    prepared,
    side_by_side,
)

#: a noop whose output does not grow along a chain (no expressions, output {})
CONST: Raw = {"type": "transform", "config": {"output": {}}}
WORKLOADS: dict[str, tuple[Callable[[int, Raw], Raw], Raw]] = {
    "chain": (chain_raw, NOOP),
    "chain-const": (chain_raw, CONST),
    "fan-out": (fanout_raw, NOOP),
}
#: the caches keep every node's result (the default cache_size is 1,000 entries)
CACHE_SIZE = 20_000
TIME_NODES = 1_000


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    seed: str  # the seed's claim for this row
    config: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] | None = None  # a per-node ``cache`` policy; "{id}" is replaced
    collector: bool = False
    cached: bool = False

    def executor(self) -> WorkflowExecutor:
        return WorkflowExecutor(
            ExecutionConfig(**self.config),
            metrics_collector=MetricsCollector() if self.collector else None,
        )

    def raw(self, shape: str, n: int) -> Raw:
        make, node = WORKLOADS[shape]
        raw = make(n, node)
        if self.policy is not None:
            for spec in raw["nodes"]:
                spec["cache"] = {
                    k: v.replace("{id}", spec["id"]) if isinstance(v, str) else v
                    for k, v in self.policy.items()
                }
        return raw


def clear_cache(executor: WorkflowExecutor) -> None:
    if isinstance(executor.cache, InMemoryCache):
        executor.cache.clear()


def cache_hits(result: RunResult) -> int:
    return sum(
        1 for r in result.node_results.values() if r.metadata and r.metadata.get("cache_hit")
    )


_CACHE = {"enable_cache": True, "cache_size": CACHE_SIZE}
VARIANTS = [
    Variant("base", "base (no features)", "per node ~100 KB"),
    Variant("cache", "enable_cache=True", "+20 MB", _CACHE, cached=True),
    Variant(
        "policy-ttl",
        "per-node cache: {ttl: 600}",
        "+20 MB",
        {"cache_size": CACHE_SIZE},
        policy={"ttl": 600},
        cached=True,
    ),
    Variant(
        "policy-key",
        "per-node cache: {key: 'k-<node id>'}",
        "+20 MB",
        {"cache_size": CACHE_SIZE},
        policy={"key": "k-{id}"},
        cached=True,
    ),
    Variant("trace-info", "trace_execution=True (INFO)", "+5 MB", {"trace_execution": True}),
    Variant(
        "trace-debug",
        "trace_execution=True, trace_level=DEBUG",
        "+5 MB",
        {"trace_execution": True, "trace_level": "DEBUG"},
    ),
    Variant("metrics", "collect_metrics=True", "+2 MB", {"collect_metrics": True}),
    Variant("collector", "metrics_collector=MetricsCollector()", "+2 MB", collector=True),
    Variant(
        "all",
        "all on: enable_cache + trace DEBUG + collect_metrics + MetricsCollector",
        "+27 MB (sum)",
        {**_CACHE, "trace_execution": True, "trace_level": "DEBUG", "collect_metrics": True},
        collector=True,
        cached=True,
    ),
]
BY_NAME = {v.name: v for v in VARIANTS}


def short_error(exc: BaseException) -> str:
    """What a table cell says about a run that raised: the exception's type."""
    return f"error: {type(exc).__name__}"


# ---------------------------------------------------------------------------- time


@dataclass
class Timed:
    samples: dict[str, list[float]]
    errors: dict[str, str]
    hits: dict[str, int]


def _clearing(executor: WorkflowExecutor, run: AsyncFn) -> AsyncFn:
    async def fn() -> None:
        clear_cache(executor)
        await run()

    return fn


async def time_shape(shape: str, n: int, reps: int) -> Timed:
    fns: dict[str, AsyncFn] = {}
    checks: dict[str, tuple[WorkflowExecutor, WorkflowDefinition, bool]] = {}
    base_def = prepared(VARIANTS[0].raw(shape, n))
    for variant in VARIANTS:
        definition = base_def if variant.policy is None else prepared(variant.raw(shape, n))
        paths = ["miss", "hit"] if variant.cached else [""]
        for path in paths:
            key = f"{variant.name}/{path}" if path else variant.name
            executor = variant.executor()
            run = engine_run(executor, definition, f"features {key} {shape} {n}")
            fns[key] = _clearing(executor, run) if path == "miss" else run
            checks[key] = (executor, definition, path == "miss")
    errors: dict[str, str] = {}
    hits: dict[str, int] = {}
    for key, (executor, definition, clear) in checks.items():
        try:  # one run first: drop variants that fail; count cache hits
            if clear:
                clear_cache(executor)
            result = await executor.execute(definition, {})
            if key.endswith("/hit"):
                result = await executor.execute(definition, {})
            hits[key] = cache_hits(result)
        except Exception as exc:
            errors[key] = short_error(exc)
            del fns[key]
    return Timed(await side_by_side(fns, reps), errors, hits)


async def time_table(args: argparse.Namespace) -> Table:
    n = TIME_NODES
    shapes = list(WORKLOADS)
    headers = ["feature", "path"]
    for shape in shapes:
        headers += [f"{shape} µs/node", "Δ µs/node"]
    headers.append("cache hits (" + " / ".join(shapes) + ")")
    table = Table(
        f"4c. Features: time per node, {n:,} nodes (warm, µs per node; Δ over base)",
        headers,
        "ll" + "r" * (2 * len(shapes) + 1),
    )
    results: dict[str, Timed] = {}
    for shape in shapes:
        log(f"features: time {shape} {n:,}")
        results[shape] = await time_shape(shape, n, args.reps)
    worst: tuple[float, str] = (-1e9, "")
    failures: list[str] = []
    for variant in VARIANTS:
        paths = ["miss", "hit"] if variant.cached else [""]
        for path in paths:
            key = f"{variant.name}/{path}" if path else variant.name
            label = {"miss": "first run (cache cleared)", "hit": "cache warm (hits)"}.get(path, "")
            row = [variant.label, label]
            hit_cells = []
            for shape in shapes:
                timed = results[shape]
                hit_cells.append(f"{timed.hits[key]:,}" if key in timed.hits else "-")
                if key in timed.errors:
                    row += [timed.errors[key], "-"]
                    failures.append(f"{key} on {shape}")
                    continue
                samples = timed.samples[key]
                base = med(timed.samples["base"])
                row.append(cell(samples, 1e6 / n))
                if key == "base":
                    row.append("")
                    continue
                delta = (med(samples) - base) * 1e6 / n
                row.append(f"{delta:+.1f}")
                worst = max(worst, (delta, f"{key} on {shape}"))
            row.append(" / ".join(hit_cells) if variant.cached else "")
            table.rows.append(row)
    table.notes += [
        f"warm: `await executor.execute(workflow, {{}})` on a compiled definition, after a "
        f"warm-up run; all rows of one shape interleaved in one process, {args.reps} "
        "repetitions, each looped to >= 30 ms; cells are median (min); Δ = median of the "
        "row - median of base, per node.",
        "first run (cache cleared): `cache.clear()` before every run, so every lookup "
        "that can miss does (the clear is inside the timed call, < 0.1 µs/node); "
        "cache warm: the same run again and again, every node served from the cache.",
        "cache hits: hits in one such run. In the fan-out every leaf has the same type, "
        "config and input, so with the default key the leaves share one entry: its first "
        "run is mostly hits too. The per-node key policy gives every node its own entry.",
        f"the cached variants use cache_size={CACHE_SIZE:,}; the metrics collector keeps "
        "its sliding window of 2,048 samples per node type full (steady state).",
    ]
    if failures:
        table.notes.append(
            "failed runs (the error is in the cell): " + ", ".join(failures) + "; see the "
            "reading in docs/benchmarks.md."
        )
    table.notes.append(
        f"target: no feature adds more than 5 µs/node: worst Δ {worst[0]:+.1f} µs/node "
        f"({worst[1]}) -> {'met' if worst[0] <= 5 else 'NOT met'}"
        + (" (among the runs that did not fail)" if failures else "")
        + "."
    )
    return table


async def nesting_table(args: argparse.Namespace) -> Table:
    """enable_cache on chains of noop nodes: the default key hashes the node's input,
    which along a noop chain nests one level deeper at every node."""
    sizes = [100, 300, 900, 1_000]
    table = Table(
        "4d. enable_cache on noop chains: µs per node by chain length (first run)",
        ["nodes", "no cache µs/node", "enable_cache µs/node", "Δ µs/node"],
        "rrrr",
    )
    variant = BY_NAME["cache"]
    for n in sizes:
        log(f"features: enable_cache on a noop chain of {n:,}")
        definition = prepared(chain_raw(n, NOOP))
        base = WorkflowExecutor()
        executor = variant.executor()
        fns = {
            "base": engine_run(base, definition, f"chain {n}"),
            "cache": _clearing(executor, engine_run(executor, definition, f"cached chain {n}")),
        }
        try:
            await fns["cache"]()
        except Exception as exc:  # reported in the table
            s = await side_by_side({"base": fns["base"]}, args.reps)
            table.rows.append([f"{n:,}", cell(s["base"], 1e6 / n), short_error(exc), "-"])
            continue
        s = await side_by_side(fns, args.reps)
        delta = (med(s["cache"]) - med(s["base"])) * 1e6 / n
        table.rows.append(
            [f"{n:,}", cell(s["base"], 1e6 / n), cell(s["cache"], 1e6 / n), f"{delta:+,.1f}"]
        )
    table.notes += [
        "ExecutionConfig(enable_cache=True), cache cleared before every run (all misses); "
        f"{args.reps} repetitions, interleaved with the same chain without the cache.",
        "a noop's output is its input, {parent id: parent output}, so node i's input is "
        "nested i levels deep and its default cache key (json.dumps + sha256 of type, "
        "config and input) costs O(i): the run costs O(n^2), and from about 983 levels "
        "json.dumps raises RecursionError, which escapes `execute()`.",
    ]
    return table
