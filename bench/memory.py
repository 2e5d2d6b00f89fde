"""Section ``memory``: RSS and tracemalloc growth per node at 10,000 noop nodes, each
shape in a fresh subprocess (``python -m bench.engine --memory-child shape:n:parallel``)."""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from typing import Any

from app.engine import ExecutionConfig, WorkflowExecutor, create_workflow
from app.engine.graph import compile_workflow
from bench.common import (
    LIMITS,
    NOOP,
    SHAPES,
    Table,
    chain_raw,
    log,
    prepared,
    reset_peak,
    run_child,
    status_kb,
)


async def memory_child(spec: str) -> dict[str, Any]:
    shape, n_text, parallel_text = spec.split(":")
    n, parallel = int(n_text), int(parallel_text)
    make = SHAPES[shape]
    executor = WorkflowExecutor(ExecutionConfig(max_parallel_nodes=parallel))
    await executor.execute(prepared(chain_raw(3, NOOP)))  # load plugins, warm code paths
    raw = make(n, NOOP)
    gc.collect()
    rss0 = status_kb("VmRSS")
    definition = create_workflow(raw, limits=LIMITS)
    compile_workflow(definition)
    gc.collect()
    rss1 = status_kb("VmRSS")
    reset = reset_peak()
    rss2 = status_kb("VmRSS")
    result = await executor.execute(definition, {})
    hwm3 = status_kb("VmHWM")
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
        data, error = run_child("--memory-child", f"{shape}:{n}:{parallel}")
        if data is None:
            table.rows.append([shape, str(parallel), "error", "", "", "", "", ""])
            notes.append(f"{shape} p={parallel}: child failed: {error}")
            continue
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
