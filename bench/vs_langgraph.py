"""Section ``langgraph``: the same noop graphs (and a 10 ms delay chain) as a LangGraph
``StateGraph``, in the same process as the engine, interleaved with it."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib.metadata
import operator
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from app.engine import WorkflowExecutor, create_workflow
from bench.common import (
    DELAY,
    DELAY_NODE,
    LIMITS,
    NOOP,
    SHAPES,
    AsyncFn,
    Table,
    cell,
    chain_raw,
    engine_run,
    floor_chain,
    log,
    med,
    pct,
    prepared,
    side_by_side,
    warned,
)

#: LangGraph runs of 10,000 nodes are cut off after this many seconds
LANGGRAPH_CAP = 30.0


class LGState(TypedDict):
    steps: Annotated[int, operator.add]


async def lg_noop_async(state: LGState) -> dict[str, int]:
    return {"steps": 1}


def _lg_noop_sync(state: LGState) -> dict[str, int]:
    return {"steps": 1}


async def _lg_delay(state: LGState) -> dict[str, int]:
    await asyncio.sleep(DELAY)
    return {"steps": 1}


def lg_graph(shape: str, n: int, fn: Callable[..., Any], checkpointer: Any = None) -> Any:
    """A ``StateGraph`` of ``n`` nodes running ``fn``, chained or fanned out from n0, as
    the engine's shapes are; compiled with ``checkpointer`` (none: in memory only)."""
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
    return graph.compile(checkpointer=checkpointer)


def lg_run(graph: Any, n: int, label: str) -> AsyncFn:
    config = {"recursion_limit": n + 10}

    async def run() -> None:
        state = await graph.ainvoke({"steps": 0}, config)
        if state.get("steps") != n and label not in warned:
            warned.add(label)
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
    await lg_run(lg_graph("chain", 3, lg_noop_async), 3, "lg warm-up")()
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
            graph = lg_graph(shape, n, lg_noop_async)
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
