"""Engine benchmarks: prints tables, asserts nothing.

    python -m bench.engine                 # everything (about 2-3 minutes)
    python -m bench.engine --quick         # fewer repetitions and sizes
    python -m bench.engine --only overhead --only memory
    python -m bench.engine --markdown      # GitHub tables (for docs/benchmarks.md)

Sections:

``speed``      10 ms ``delay`` nodes, chains and fan-outs, against the asyncio floor
               (the same sleeps in a plain asyncio loop, same process).
``overhead``   ``noop`` nodes: microseconds per node, warm and cold.
``memory``     RSS and tracemalloc growth per node at 10,000 nodes, each in a fresh
               subprocess.
``langgraph``  the same no-op graphs as a LangGraph ``StateGraph`` (if installed).

Every timed sample is preceded by ``gc.collect()``; compared things are measured in
the same process and interleaved repetition by repetition; cells read
``median (min)`` over the repetitions. Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib.metadata
import json
import math
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypedDict

from app.engine import (
    ExecutionConfig,
    NodeStatus,
    RunStatus,
    WorkflowDefinition,
    WorkflowExecutor,
    create_workflow,
)
from app.engine.graph import compile_workflow

SECTIONS = ("speed", "overhead", "memory", "langgraph")
ROOT = Path(__file__).resolve().parent.parent
LIMITS = ExecutionConfig(max_nodes=20_000, max_edges=50_000)
DELAY = 0.01
#: the seed README's claims: nodes -> (sequential ms, parallel ms)
SEED_CLAIMS = {10: (100, 30), 50: (500, 120), 100: (1000, 200), 500: (5000, 800)}
#: a timed sample of a fast operation loops until it lasts at least this long
MIN_SAMPLE = 0.03
#: LangGraph runs of 10,000 nodes are cut off after this many seconds
LANGGRAPH_CAP = 30.0

Raw = dict[str, Any]
AsyncFn = Callable[[], Awaitable[object]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ tables


@dataclass
class Table:
    title: str
    headers: list[str]
    align: str  # one "l" or "r" per column
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self, markdown: bool) -> str:
        if markdown:
            lines = [f"### {self.title}", ""]
            lines.append("| " + " | ".join(self.headers) + " |")
            lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in self.align) + "|")
            lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
            if self.notes:
                lines.append("")
                lines.extend(f"- {note}" for note in self.notes)
            return "\n".join(lines) + "\n"
        widths = [
            max(len(self.headers[i]), *(len(row[i]) for row in self.rows))
            if self.rows
            else len(self.headers[i])
            for i in range(len(self.headers))
        ]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if a == "r" else c.ljust(w)
                for c, w, a in zip(cells, widths, self.align, strict=True)
            ).rstrip()

        out = [self.title, "=" * len(self.title), line(self.headers)]
        out.append("  ".join("-" * w for w in widths))
        out.extend(line(row) for row in self.rows)
        out.extend(f"  * {note}" for note in self.notes)
        return "\n".join(out) + "\n"


def emit(table: Table, markdown: bool) -> None:
    print(table.render(markdown), flush=True)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def cell(xs: Sequence[float], scale: float, digits: int = 1) -> str:
    """``median (min)`` of ``xs`` times ``scale``."""
    return f"{med(xs) * scale:,.{digits}f} ({min(xs) * scale:,.{digits}f})"


def pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.2f}"


# ------------------------------------------------------------------------------ timing


async def timed(fn: AsyncFn, inner: int = 1) -> float:
    """Seconds per call of ``fn``, over ``inner`` back-to-back calls."""
    gc.collect()
    start = time.perf_counter()
    for _ in range(inner):
        await fn()
    return (time.perf_counter() - start) / inner


async def calibrate(fn: AsyncFn) -> int:
    """Run ``fn`` once (the warm-up) and return how many calls make a sample."""
    once = await timed(fn)
    return max(1, math.ceil(MIN_SAMPLE / max(once, 1e-9)))


async def side_by_side(
    fns: dict[str, AsyncFn], reps: int, *, warm_up: bool = True
) -> dict[str, list[float]]:
    """Interleaved repetitions: rep 1 of every fn, then rep 2 of every fn, ..."""
    inner = {name: (await calibrate(fn)) if warm_up else 1 for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            samples[name].append(await timed(fn, inner[name]))
    return samples


# ------------------------------------------------------------------------ definitions


def chain_raw(n: int, node: Raw) -> Raw:
    return {
        "id": f"chain-{n}",
        "nodes": [{"id": f"n{i}", **node} for i in range(n)],
        "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)],
    }


def fanout_raw(n: int, node: Raw) -> Raw:
    """One root with an edge to each of the other n - 1 nodes."""
    return {
        "id": f"fanout-{n}",
        "nodes": [{"id": f"n{i}", **node} for i in range(n)],
        "edges": [{"source": "n0", "target": f"n{i}"} for i in range(1, n)],
    }


def roots_raw(n: int, node: Raw) -> Raw:
    """n nodes and no edges: every node is a root."""
    return {"id": f"roots-{n}", "nodes": [{"id": f"n{i}", **node} for i in range(n)]}


NOOP: Raw = {"type": "noop"}
DELAY_NODE: Raw = {"type": "delay", "config": {"seconds": DELAY}}
SHAPES: dict[str, Callable[[int, Raw], Raw]] = {"chain": chain_raw, "fan-out": fanout_raw}


def prepared(raw: Raw) -> WorkflowDefinition:
    definition = create_workflow(raw, limits=LIMITS)
    compile_workflow(definition)  # cached on the definition; execute() reuses it
    return definition


_warned: set[str] = set()


def check_engine(label: str, status: RunStatus, ran: int, expected: int) -> None:
    if (status is not RunStatus.SUCCEEDED or ran != expected) and label not in _warned:
        _warned.add(label)
        log(f"WARNING: {label}: status {status.value}, {ran}/{expected} nodes ran")


def engine_run(executor: WorkflowExecutor, definition: WorkflowDefinition, label: str) -> AsyncFn:
    n = len(definition.nodes)

    async def run() -> None:
        result = await executor.execute(definition, {})
        ran = sum(1 for r in result.node_results.values() if r.status is NodeStatus.SUCCEEDED)
        check_engine(label, result.status, ran, n)

    return run


# ------------------------------------------------------------------- the asyncio floor


async def floor_chain(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(DELAY)


async def floor_fanout(n: int, width: int) -> None:
    semaphore = asyncio.Semaphore(width)

    async def one() -> None:
        async with semaphore:
            await asyncio.sleep(DELAY)

    await asyncio.gather(*(one() for _ in range(n)))


# ------------------------------------------------------------------ section 1: speed


async def section_speed(args: argparse.Namespace) -> Table:
    sizes = [10, 50, 100] if args.quick else [10, 50, 100, 500]
    table = Table(
        "1. Execution speed: 10 ms delay nodes vs the asyncio floor",
        [
            "nodes",
            "chain engine ms",
            "chain floor ms",
            "overhead %",
            "fan-out engine ms",
            "fan-out floor ms",
            "overhead %",
            "speedup",
            "seed claim seq / par ms",
        ],
        "rrrrrrrrr",
    )
    chain_exec = WorkflowExecutor()
    fan_exec = WorkflowExecutor(ExecutionConfig(max_parallel_nodes=10))
    # warm the code paths (plugin loading, first task creation) before any timing
    await fan_exec.execute(prepared(roots_raw(4, {"type": "delay", "config": {"seconds": 0}})))
    overheads: dict[int, tuple[float, float]] = {}
    for n in sizes:
        reps = args.reps if n * DELAY <= 1.0 else min(args.reps, 3)
        log(f"speed: {n} nodes, {reps} reps")
        chain = prepared(chain_raw(n, DELAY_NODE))
        fan = prepared(roots_raw(n, DELAY_NODE))
        s = await side_by_side(
            {
                "chain": engine_run(chain_exec, chain, f"delay chain {n}"),
                "chain_floor": functools.partial(floor_chain, n),
                "fan": engine_run(fan_exec, fan, f"delay fan-out {n}"),
                "fan_floor": functools.partial(floor_fanout, n, 10),
            },
            reps,
            warm_up=False,
        )
        chain_ovh = med(s["chain"]) / med(s["chain_floor"]) - 1
        fan_ovh = med(s["fan"]) / med(s["fan_floor"]) - 1
        overheads[n] = (chain_ovh, fan_ovh)
        seq, par = SEED_CLAIMS[n]
        table.rows.append(
            [
                str(n),
                cell(s["chain"], 1e3),
                cell(s["chain_floor"], 1e3),
                f"{chain_ovh * 100:+.2f}",
                cell(s["fan"], 1e3),
                cell(s["fan_floor"], 1e3),
                f"{fan_ovh * 100:+.2f}",
                f"{med(s['chain']) / med(s['fan']):.1f}x",
                f"{seq} / {par}",
            ]
        )
    table.notes += [
        "chain: n0->n1->...; default WorkflowExecutor. fan-out: the same nodes with no "
        "edges (all roots), ExecutionConfig(max_parallel_nodes=10).",
        "floor: `for _ in range(n): await asyncio.sleep(0.01)`; fan-out: "
        "Semaphore(10) + gather of n sleeps. overhead % = median engine / median floor - 1.",
        "speedup = engine chain / engine fan-out (medians); the ideal with 10 at a time "
        "is min(n, 10)x.",
        f"{args.reps} repetitions (at most 3 for workflows sleeping more than 1 s in "
        "total), engine and floor interleaved; no warm-up run (definitions are compiled "
        "before timing).",
    ]
    last = max(sizes)
    chain_ovh, fan_ovh = overheads[last]
    met = "met" if max(chain_ovh, fan_ovh) <= 0.02 else "NOT met"
    table.notes.append(
        f"target (within 2% of the floor at {last} nodes): chain {chain_ovh * 100:+.2f}%, "
        f"fan-out {fan_ovh * 100:+.2f}% -> {met}."
    )
    return table


# --------------------------------------------------------------- section 2: overhead


@dataclass
class OverheadRow:
    shape: str
    n: int
    parallel: int
    warm: list[float]  # seconds per run
    create: list[float]  # seconds per create_workflow
    first: list[float]  # seconds per first execute (includes compiling)


async def measure_overhead(shape: str, n: int, parallel: int, reps: int) -> OverheadRow:
    make = SHAPES[shape]
    executor = WorkflowExecutor(ExecutionConfig(max_parallel_nodes=parallel))
    definition = prepared(make(n, NOOP))
    label = f"noop {shape} {n} p={parallel}"
    run = engine_run(executor, definition, label)
    inner = await calibrate(run)
    row = OverheadRow(shape, n, parallel, [], [], [])
    for _ in range(reps):
        # cold: create_workflow, then the first execute (which compiles)
        raws = [make(n, NOOP) for _ in range(inner)]
        gc.collect()
        t0 = time.perf_counter()
        definitions = [create_workflow(raw, limits=LIMITS) for raw in raws]
        t1 = time.perf_counter()
        for d in definitions:
            await executor.execute(d, {})
        t2 = time.perf_counter()
        row.create.append((t1 - t0) / inner)
        row.first.append((t2 - t1) / inner)
        del raws, definitions
        # warm: execute only, on an already compiled definition
        row.warm.append(await timed(run, inner))
    return row


async def section_overhead(args: argparse.Namespace) -> tuple[Table, list[OverheadRow]]:
    sizes = [10, 100, 1_000, 10_000]
    table = Table(
        "2. Engine overhead: noop nodes, microseconds per node",
        [
            "shape",
            "nodes",
            "max_parallel",
            "warm µs/node",
            "warm run ms",
            "create_workflow µs/node",
            "first execute µs/node",
            "cold total µs/node",
        ],
        "lrrrrrrr",
    )
    await WorkflowExecutor().execute(prepared(chain_raw(3, NOOP)))  # warm the code paths
    rows: list[OverheadRow] = []
    for shape, parallel in (("chain", 10), ("fan-out", 10), ("fan-out", 1000)):
        for n in sizes:
            log(f"overhead: {shape} {n} p={parallel}")
            row = await measure_overhead(shape, n, parallel, args.reps)
            rows.append(row)
            cold = [c + f for c, f in zip(row.create, row.first, strict=True)]
            table.rows.append(
                [
                    shape,
                    f"{n:,}",
                    str(parallel),
                    cell(row.warm, 1e6 / n),
                    cell(row.warm, 1e3, 2),
                    cell(row.create, 1e6 / n),
                    cell(row.first, 1e6 / n),
                    cell(cold, 1e6 / n),
                ]
            )
    table.notes += [
        "warm: `await executor.execute(workflow, {})` alone, on a definition created and "
        "compiled beforehand and after a warm-up run; fast runs are looped to >= 30 ms "
        "per sample.",
        "cold: `create_workflow(defn, limits=...)` (parse + validate) and the first "
        "execute (which compiles, then runs), on fresh definitions each repetition.",
        "chain: n0->...->n(n-1); fan-out: n0 -> each of the n-1 other nodes. "
        f"{args.reps} repetitions; cells are median (min).",
    ]
    worst = max(rows, key=lambda r: med(r.warm) / r.n)
    verdict = "met" if med(worst.warm) / worst.n <= 25e-6 else "NOT met"
    table.notes.append(
        f"target <= 25 µs/node (warm): worst row {worst.shape} {worst.n:,} "
        f"p={worst.parallel} at {med(worst.warm) / worst.n * 1e6:.1f} µs/node -> {verdict}."
    )
    for row in rows:
        if row.shape == "fan-out" and row.n == 10_000:
            cold_s = med(row.create) + med(row.first)
            table.notes.append(
                f"target 10,000-node fan-out < 0.5 s (p={row.parallel}): warm run "
                f"{med(row.warm):.3f} s -> {'met' if med(row.warm) < 0.5 else 'NOT met'}; "
                f"cold create_workflow + first execute {cold_s:.3f} s."
            )
    return table, rows


# ----------------------------------------------------------------- section 2b: memory


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, own process)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") <= _status_kb("VmRSS") + 64


async def _memory_child(spec: str) -> dict[str, Any]:
    shape, n_text, parallel_text = spec.split(":")
    n, parallel = int(n_text), int(parallel_text)
    make = SHAPES[shape]
    executor = WorkflowExecutor(ExecutionConfig(max_parallel_nodes=parallel))
    await executor.execute(prepared(chain_raw(3, NOOP)))  # load plugins, warm code paths
    raw = make(n, NOOP)
    gc.collect()
    rss0 = _status_kb("VmRSS")
    definition = create_workflow(raw, limits=LIMITS)
    compile_workflow(definition)
    gc.collect()
    rss1 = _status_kb("VmRSS")
    reset = _reset_peak()
    rss2 = _status_kb("VmRSS")
    result = await executor.execute(definition, {})
    hwm3 = _status_kb("VmHWM")
    status = result.status.value
    del result
    gc.collect()
    # the same two steps under tracemalloc (exact Python allocations, no allocator slack)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    result = await executor.execute(definition, {})
    after, peak = tracemalloc.get_traced_memory()
    del result
    gc.collect()
    tracemalloc.reset_peak()
    before_def, _ = tracemalloc.get_traced_memory()
    definition2 = create_workflow(raw, limits=LIMITS)
    compile_workflow(definition2)
    gc.collect()
    after_def, peak_def = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "status": status,
        "peak_reset": reset,
        "rss_definition": (rss1 - rss0) * 1024,
        "rss_execution_peak": (hwm3 - rss2) * 1024,
        "tm_execution_peak": peak - before,
        "tm_execution_retained": after - before,
        "tm_definition_retained": after_def - before_def,
        "tm_definition_peak": peak_def - before_def,
    }


def section_memory(args: argparse.Namespace) -> Table:
    n = 10_000
    table = Table(
        f"2b. Memory: bytes per node at {n:,} noop nodes (fresh subprocess each)",
        [
            "shape",
            "max_parallel",
            "definition+compile RSS",
            "definition+compile tracemalloc",
            "execute peak RSS",
            "execute peak tracemalloc",
            "execute retained (result)",
            "total RSS",
        ],
        "lrrrrrrr",
    )
    notes: list[str] = []
    worst_def = worst_exec = worst_total = 0.0
    for shape, parallel in (("chain", 10), ("fan-out", 10), ("fan-out", 1000)):
        log(f"memory: {shape} {n} p={parallel} (subprocess)")
        proc = subprocess.run(
            [sys.executable, "-m", "bench.engine", "--memory-child", f"{shape}:{n}:{parallel}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            table.rows.append([shape, str(parallel), "error", "", "", "", "", ""])
            notes.append(f"{shape} p={parallel}: child failed: {proc.stderr.strip()[-300:]}")
            continue
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        if not data["peak_reset"]:
            notes.append(
                f"{shape} p={parallel}: could not reset VmHWM; its peak RSS may include "
                "the definition's own peak."
            )
        if data["status"] != "succeeded":
            notes.append(f"{shape} p={parallel}: the run ended {data['status']}")
        table.rows.append(
            [
                shape,
                str(parallel),
                f"{data['rss_definition'] / n:,.0f}",
                f"{data['tm_definition_retained'] / n:,.0f}"
                f" (peak {data['tm_definition_peak'] / n:,.0f})",
                f"{data['rss_execution_peak'] / n:,.0f}",
                f"{data['tm_execution_peak'] / n:,.0f}",
                f"{data['tm_execution_retained'] / n:,.0f}",
                f"{(data['rss_definition'] + data['rss_execution_peak']) / n:,.0f}",
            ]
        )
        worst_def = max(worst_def, data["rss_definition"] / n)
        worst_exec = max(worst_exec, data["rss_execution_peak"] / n)
        worst_total = max(worst_total, (data["rss_definition"] + data["rss_execution_peak"]) / n)
    table.notes += [
        "RSS: VmRSS before/after create_workflow + compile (after gc); execution: VmHWM "
        "after execute minus VmRSS before it, VmHWM reset through /proc/self/clear_refs.",
        "tracemalloc: the same steps repeated in the same child under tracemalloc "
        "(Python allocations only, exact); 'retained' is what the RunResult keeps.",
        "one measurement per shape (RSS growth is deterministic to within a page or two).",
        "total RSS = definition+compile RSS + execute peak RSS: the growth of a process "
        "that creates and runs the workflow once.",
        *notes,
    ]

    def verdict(x: float) -> str:
        return f"{x:,.0f} B -> {'met' if x < 2048 else 'NOT met'}"

    table.notes.append(
        "target < 2 KB (2,048 B) RSS growth per node, worst shape: execution alone "
        f"{verdict(worst_exec)}; definition+compile {verdict(worst_def)}; "
        f"total {verdict(worst_total)}."
    )
    return table


# ------------------------------------------------------------------ section 3: LangGraph


class LGState(TypedDict):
    steps: Annotated[int, operator.add]


async def _lg_noop_async(state: LGState) -> dict[str, int]:
    return {"steps": 1}


def _lg_noop_sync(state: LGState) -> dict[str, int]:
    return {"steps": 1}


async def _lg_delay(state: LGState) -> dict[str, int]:
    await asyncio.sleep(DELAY)
    return {"steps": 1}


def lg_graph(shape: str, n: int, fn: Callable[..., Any]) -> Any:
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(LGState)
    for i in range(n):
        graph.add_node(f"n{i}", fn)
    graph.add_edge(START, "n0")
    if shape == "chain":
        for i in range(n - 1):
            graph.add_edge(f"n{i}", f"n{i + 1}")
        graph.add_edge(f"n{n - 1}", END)
    else:
        for i in range(1, n):
            graph.add_edge("n0", f"n{i}")
            graph.add_edge(f"n{i}", END)
    return graph.compile()


def lg_run(graph: Any, n: int, label: str) -> AsyncFn:
    config = {"recursion_limit": n + 10}

    async def run() -> None:
        state = await graph.ainvoke({"steps": 0}, config)
        if state.get("steps") != n and label not in _warned:
            _warned.add(label)
            log(f"WARNING: {label}: {state.get('steps')} of {n} nodes ran")

    return run


async def section_langgraph(args: argparse.Namespace) -> list[Table]:
    sizes = [10, 100, 1_000] if args.quick else [10, 100, 1_000, 10_000]
    table = Table(
        "3. Engine vs LangGraph: noop nodes, microseconds per node (warm)",
        [
            "shape",
            "nodes",
            "engine µs/node",
            "LangGraph async µs/node",
            "LangGraph / engine",
            "LangGraph sync-fn µs/node",
            "engine cold µs/node",
            "LangGraph cold µs/node",
        ],
        "lrrrrrrr",
    )
    engine_exec = WorkflowExecutor()
    await engine_exec.execute(prepared(chain_raw(3, NOOP)))
    await lg_run(lg_graph("chain", 3, _lg_noop_async), 3, "lg warm-up")()
    ratios: list[tuple[str, int, float]] = []
    capped: list[str] = []
    for shape in SHAPES:
        for n in sizes:
            log(f"langgraph: {shape} {n}")
            big = n >= 10_000
            # cold: build + first run, for both
            t0 = time.perf_counter()
            definition = create_workflow(SHAPES[shape](n, NOOP), limits=LIMITS)
            await engine_exec.execute(definition, {})
            engine_cold = time.perf_counter() - t0
            gc.collect()
            t0 = time.perf_counter()
            graph = lg_graph(shape, n, _lg_noop_async)
            lg_built = time.perf_counter()
            lg_first: float | None = None
            try:
                async with asyncio.timeout(LANGGRAPH_CAP):
                    await lg_run(graph, n, f"langgraph {shape} {n}")()
                lg_first = time.perf_counter() - lg_built
            except TimeoutError:
                capped.append(f"{shape} {n:,}")
            lg_cold = None if lg_first is None else lg_built - t0 + lg_first
            fns = {"engine": engine_run(engine_exec, definition, f"noop {shape} {n}")}
            sync_cell = "-"
            if big:
                # one LangGraph run only (the cold one above), timed without warm-up
                s = await side_by_side(fns, args.reps)
                lg_samples = [] if lg_first is None else [lg_first]
            else:
                fns["lg"] = lg_run(graph, n, f"langgraph {shape} {n}")
                sync_graph = lg_graph(shape, n, _lg_noop_sync)
                fns["lg_sync"] = lg_run(sync_graph, n, f"langgraph sync {shape} {n}")
                s = await side_by_side(fns, args.reps)
                lg_samples = s["lg"]
                sync_cell = cell(s["lg_sync"], 1e6 / n)
            if lg_samples:
                ratio = med(lg_samples) / med(s["engine"])
                ratios.append((shape, n, ratio))
                lg_cell = cell(lg_samples, 1e6 / n) + (" *" if big else "")
                ratio_cell = f"{ratio:.1f}x"
            else:
                lg_cell, ratio_cell = f"> {LANGGRAPH_CAP:.0f} s", "-"
            table.rows.append(
                [
                    shape,
                    f"{n:,}",
                    cell(s["engine"], 1e6 / n),
                    lg_cell,
                    ratio_cell,
                    sync_cell,
                    f"{engine_cold * 1e6 / n:,.1f}",
                    "-" if lg_cold is None else f"{lg_cold * 1e6 / n:,.1f}",
                ]
            )
            del graph, definition
    version = importlib.metadata.version("langgraph")
    table.notes += [
        f"langgraph {version}: StateGraph over a TypedDict with one `Annotated[int, "
        "operator.add]` key; every node returns {'steps': 1}; chain START->n0->...->END, "
        "fan-out START->n0, n0->each leaf, each leaf->END; "
        "`await graph.ainvoke({'steps': 0}, {'recursion_limit': n + 10})`.",
        "'async' nodes are `async def`; 'sync-fn' nodes are plain functions (LangGraph "
        "runs those in a thread pool under ainvoke). The ratio uses the async nodes, "
        "LangGraph's faster variant here.",
        "engine: the same shapes of noop nodes, default WorkflowExecutor "
        "(max_parallel_nodes=10); LangGraph runs all leaves of a fan-out in one step.",
        "cold: definition built + validated/compiled + first run, one measurement.",
        f"warm: {args.reps} repetitions after a warm-up, engine and LangGraph interleaved.",
    ]
    if not args.quick:
        table.notes.append(
            "* 10,000 nodes on LangGraph: a single run (the cold one, no warm-up; "
            f"capped at {LANGGRAPH_CAP:.0f} s); the 'cold' column adds graph building."
        )
    if capped:
        table.notes.append(f"LangGraph runs cut off at {LANGGRAPH_CAP:.0f} s: {', '.join(capped)}.")
    if ratios:
        worst = min(ratios, key=operator.itemgetter(2))
        verdict = "met" if worst[2] >= 10 else "NOT met"
        table.notes.append(
            f"target (engine at least 10x below LangGraph): smallest ratio {worst[2]:.1f}x "
            f"({worst[0]} {worst[1]:,}) -> {verdict}."
        )

    n = 50 if args.quick else 100
    log(f"langgraph: {DELAY * 1000:.0f} ms delay chain of {n}")
    delay_table = Table(
        f"3b. {DELAY * 1000:.0f} ms delay chain of {n} nodes: engine vs LangGraph vs asyncio floor",
        ["runner", "ms", "overhead % vs floor"],
        "lrr",
    )
    definition = prepared(chain_raw(n, DELAY_NODE))
    graph = lg_graph("chain", n, _lg_delay)
    s = await side_by_side(
        {
            "engine": engine_run(engine_exec, definition, f"delay chain {n}"),
            "langgraph": lg_run(graph, n, f"langgraph delay chain {n}"),
            "floor": functools.partial(floor_chain, n),
        },
        min(args.reps, 3),
    )
    for name, label in (
        ("engine", "Flowcore engine"),
        ("langgraph", "LangGraph"),
        ("floor", "asyncio floor"),
    ):
        delay_table.rows.append([label, cell(s[name], 1e3), pct(med(s[name]), med(s["floor"]))])
    delay_table.notes.append(
        f"{min(args.reps, 3)} repetitions after a warm-up, interleaved; LangGraph nodes are "
        f"`async def` doing `await asyncio.sleep({DELAY})`."
    )
    return [table, delay_table]


# ---------------------------------------------------------------------------- header


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None


def revision() -> str:
    head = _git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0:
        return "unknown (not a git checkout)"
    diff = _git("diff", "--quiet", "HEAD", "--", "app")
    dirty = diff is not None and diff.returncode == 1
    return head.stdout.strip() + (" + uncommitted changes in app/" if dirty else "")


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def header(args: argparse.Namespace) -> list[str]:
    try:
        langgraph = importlib.metadata.version("langgraph")
    except importlib.metadata.PackageNotFoundError:
        langgraph = "not installed"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; flowcore {revision()}",
        f"python: {platform.python_implementation()} {platform.python_version()} "
        f"({platform.platform()})",
        f"cpu: {cpu_model()}; {os.cpu_count()} CPUs ({affinity} usable)",
        f"event loop: {type(asyncio.get_event_loop_policy()).__name__}; langgraph {langgraph}",
        f"mode: {'quick' if args.quick else 'full'}, {args.reps} repetitions; "
        "cells are median (min)",
        f"load average (1, 5, 15 min) at start: {loadavg()}",
    ]


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--no-langgraph", action="store_true", help="skip the LangGraph section")
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 3 quick)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    return args


def selected(args: argparse.Namespace) -> Iterable[str]:
    chosen = args.only or SECTIONS
    for section in SECTIONS:
        if section not in chosen:
            continue
        if section == "langgraph":
            if args.no_langgraph:
                continue
            try:
                import langgraph.graph  # noqa: F401
            except ImportError:
                log("langgraph is not installed (uv sync --extra bench); skipping section 3")
                continue
        yield section


async def run_sections(args: argparse.Namespace, sections: list[str]) -> None:
    for section in sections:
        started = time.perf_counter()
        if section == "speed":
            emit(await section_speed(args), args.markdown)
        elif section == "overhead":
            emit((await section_overhead(args))[0], args.markdown)
        elif section == "memory":
            emit(section_memory(args), args.markdown)
        else:
            for table in await section_langgraph(args):
                emit(table, args.markdown)
        log(f"{section}: {time.perf_counter() - started:.1f} s")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(asyncio.run(_memory_child(args.memory_child))))
        return
    started = time.perf_counter()
    lines = header(args)
    if args.markdown:
        print("\n".join(f"- {line}" for line in lines) + "\n")
    else:
        print("Flowcore engine benchmark\n" + "\n".join(lines) + "\n")
    asyncio.run(run_sections(args, list(selected(args))))
    footer = (
        f"total time {time.perf_counter() - started:.0f} s; load average at the end: {loadavg()}"
    )
    print(f"- {footer}" if args.markdown else footer, flush=True)


if __name__ == "__main__":
    main()
