"""Section ``features``, memory: the seed's "Memory Usage" table re-measured. The base
executor's RSS in a fresh interpreter (4a), and bytes per node at 10,000 nodes for every
feature variant of bench/features.py, each in a fresh subprocess (4b:
``python -m bench.engine --features-child variant:shape:nodes``)."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tracemalloc
from typing import Any

from app.engine import create_workflow
from app.engine.graph import compile_workflow
from bench.common import (
    LIMITS,
    NOOP,
    ROOT,
    Table,
    chain_raw,
    log,
    med,
    prepared,
    reset_peak,
    run_child,
    status_kb,
)
from bench.features import (
    BY_NAME,
    CACHE_SIZE,
    VARIANTS,
    WORKLOADS,
    cache_hits,
    clear_cache,
    short_error,
)

MEMORY_NODES = 10_000

# ------------------------------------------------------------------- base executor RSS

_READ_RSS = (
    "print(*[l.split()[1] for l in open('/proc/self/status') "
    "if l.split(':')[0] in ('VmRSS', 'RssAnon', 'RssFile')])"
)
_ENGINE_STEPS = f"""
import pydantic, pydantic_core
{_READ_RSS}
import app.engine
{_READ_RSS}
executor = app.engine.WorkflowExecutor()
{_READ_RSS}
import asyncio
workflow = app.engine.create_workflow({{"id": "w", "nodes": [{{"id": "a", "type": "noop"}}]}})
asyncio.run(executor.execute(workflow, {{}}))
{_READ_RSS}
workflow = app.engine.create_workflow(
    {{"id": "e", "nodes": [{{"id": "a", "type": "noop"}}], "output": {{"v": "input.v + 1"}}}}
)
asyncio.run(executor.execute(workflow, {{"v": 1}}))
{_READ_RSS}
"""
_LANGGRAPH_STEPS = f"""
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
{_READ_RSS}
class S(TypedDict):
    x: int
graph = StateGraph(S)
graph.add_node("a", lambda state: {{"x": 1}})
graph.add_edge(START, "a")
graph.add_edge("a", END)
graph.compile().invoke({{"x": 0}})
{_READ_RSS}
"""
#: VmRSS, RssAnon, RssFile in kB
Rss = tuple[int, int, int]


def _rss_steps(code: str) -> list[Rss] | None:
    """(VmRSS, RssAnon, RssFile) in kB at each point ``code`` prints them, in a fresh
    interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        log(f"features: rss child failed: {proc.stderr.strip()[-300:]}")
        return None
    steps: list[Rss] = []
    for line in proc.stdout.splitlines():
        rss, anon, file = (int(x) for x in line.split())
        steps.append((rss, anon, file))
    return steps


def base_rss_table(reps: int) -> Table:
    table = Table(
        "4a. Base executor: RSS of a fresh process",
        [
            "process",
            "RSS MB",
            "over bare python MB",
            "of which anonymous MB",
            "of which file-backed MB",
            "seed claim",
        ],
        "lrrrrl",
    )
    runs: dict[str, list[list[Rss]]] = {"bare": [], "engine": [], "langgraph": []}
    codes = {"bare": _READ_RSS, "engine": _ENGINE_STEPS, "langgraph": _LANGGRAPH_STEPS}
    try:
        import langgraph.graph  # noqa: F401
    except ImportError:
        del codes["langgraph"]
    for _ in range(reps):  # interleaved, like everything else
        for name, code in codes.items():
            steps = _rss_steps(code)
            if steps:
                runs[name].append(steps)
    if not runs["bare"]:
        table.notes.append("the bare interpreter failed to report its RSS")
        return table

    def step(name: str, i: int) -> Rss:
        samples = [steps[i] for steps in runs[name]]
        return (
            round(med([s[0] for s in samples])),
            round(med([s[1] for s in samples])),
            round(med([s[2] for s in samples])),
        )

    bare = step("bare", 0)
    rows: list[tuple[str, str, int, str]] = [("bare python (`python -c`)", "bare", 0, "")]
    rows += [
        ("`import pydantic` (what the engine's models need)", "engine", 0, ""),
        ("+ `import app.engine` (its models; not the CEL library)", "engine", 1, ""),
        ("+ `WorkflowExecutor()`", "engine", 2, "~10 MB"),
        ("+ a first 1-node run (loads app.nodes)", "engine", 3, ""),
        ("+ a run with an expression (loads the CEL library)", "engine", 4, ""),
    ]
    if runs["langgraph"]:
        rows += [
            ("langgraph: `import langgraph.graph`", "langgraph", 0, ""),
            ("langgraph: + compile and invoke a 1-node graph", "langgraph", 1, ""),
        ]
    for label, name, i, seed in rows:
        if not runs[name]:
            continue
        rss, anon, file = step(name, i)
        if name == "bare":
            table.rows.append(
                [
                    label,
                    f"{rss / 1024:,.1f}",
                    "",
                    f"{anon / 1024:,.1f}",
                    f"{file / 1024:,.1f}",
                    seed,
                ]
            )
            continue
        table.rows.append(
            [
                label,
                f"{rss / 1024:,.1f}",
                f"{(rss - bare[0]) / 1024:+,.1f}",
                f"{(anon - bare[1]) / 1024:+,.1f}",
                f"{(file - bare[2]) / 1024:+,.1f}",
                seed,
            ]
        )
    table.notes += [
        f"VmRSS, RssAnon (heap: private to the process) and RssFile (mapped files: the "
        f"interpreter's and extension modules' code, shared between processes) from "
        f"/proc/self/status inside a fresh `python -c ...`; median of {reps} processes "
        "each. The engine steps run in one process, one after the other.",
    ]
    return table


# --------------------------------------------------------------- memory (subprocesses)


async def features_child(spec: str) -> dict[str, Any]:
    """One variant, one shape, in this (fresh) process: the first run (cache empty)
    under RSS and under tracemalloc, then (cached variants) a second run, all hits."""
    name, shape, n_text = spec.split(":")
    variant, n = BY_NAME[name], int(n_text)
    executor = variant.executor()
    await executor.execute(prepared(chain_raw(3, NOOP)))  # load plugins, warm code paths
    clear_cache(executor)
    raw = variant.raw(shape, n)
    gc.collect()
    rss0 = status_kb("VmRSS")
    definition = create_workflow(raw, limits=LIMITS)
    compile_workflow(definition)
    gc.collect()
    rss1 = status_kb("VmRSS")
    peak_reset = reset_peak()
    rss2 = status_kb("VmRSS")
    try:
        result = await executor.execute(definition, {})
    except Exception as exc:
        return {"error": short_error(exc)}
    hwm = status_kb("VmHWM")
    out: dict[str, Any] = {
        "status": result.status.value,
        "peak_reset": peak_reset,
        "hits_first": cache_hits(result),
        "rss_definition": (rss1 - rss0) * 1024,
        "rss_run_peak": (hwm - rss2) * 1024,
    }
    del result
    clear_cache(executor)
    if executor.metrics_collector is not None:
        executor.metrics_collector.reset()
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    result = await executor.execute(definition, {})
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    out["tm_run_peak"] = peak - before
    out["tm_run_retained"] = after - before  # the result + what the executor keeps
    del result
    if variant.cached:
        gc.collect()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = await executor.execute(definition, {})
        out["hits_second"] = cache_hits(result)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
        out["tm_hit_peak"] = peak - before
        out["tm_hit_retained"] = after - before
        del result
    tracemalloc.stop()
    return out


def memory_table(n: int) -> Table:
    shapes = list(WORKLOADS)
    headers = ["feature", "path", "seed claim"]
    for shape in shapes:
        headers += [f"{shape}: run peak RSS", f"{shape}: peak tm", f"{shape}: retained tm"]
    headers.append("Δ MB over base at 10,000 (retained tm, worst shape)")
    table = Table(
        f"4b. Features: memory, bytes per node at {n:,} nodes (fresh subprocess each)",
        headers,
        "lll" + "r" * (3 * len(shapes) + 1),
    )
    data: dict[tuple[str, str], dict[str, Any] | None] = {}
    notes: list[str] = []
    for variant in VARIANTS:
        for shape in shapes:
            log(f"features: memory {variant.name} {shape} {n:,} (subprocess)")
            got, error = run_child("--features-child", f"{variant.name}:{shape}:{n}")
            if got is None:
                notes.append(f"{variant.name} {shape}: child failed: {error}")
            elif "error" not in got and got["status"] != "succeeded":
                notes.append(f"{variant.name} {shape}: the run ended {got['status']}")
            data[variant.name, shape] = got

    def per_node(got: dict[str, Any] | None, key: str) -> str:
        if got is None:
            return "failed"
        if "error" in got:
            return got["error"] if key == "rss_run_peak" else "-"
        return f"{got[key] / n:,.0f}" if key in got else "-"

    def delta_mb(name: str, key: str) -> str:
        worst: float | None = None
        for shape in shapes:
            got, base = data[name, shape], data["base", shape]
            if got and base and key in got and "tm_run_retained" in base:
                d = (got[key] - base["tm_run_retained"]) / 2**20 * (10_000 / n)
                worst = d if worst is None else max(worst, d)
        return "-" if worst is None else f"{worst:+,.2f}"

    for variant in VARIANTS:
        paths = [("first run", "rss_run_peak", "tm_run_peak", "tm_run_retained")]
        if variant.cached:
            paths.append(("second run (hits)", "", "tm_hit_peak", "tm_hit_retained"))
        for path, rss_key, peak_key, kept_key in paths:
            row = [variant.label, path if variant.cached else "", variant.seed]
            for shape in shapes:
                got = data[variant.name, shape]
                row += [
                    per_node(got, rss_key) if rss_key else "-",
                    per_node(got, peak_key),
                    per_node(got, kept_key),
                ]
            row.append("" if variant.name == "base" else delta_mb(variant.name, kept_key))
            table.rows.append(row)
    for variant in VARIANTS:
        hits = []
        for shape in shapes:
            got = data[variant.name, shape]
            if variant.cached and got and "error" not in got:
                hits.append(f"{shape} {got['hits_first']:,} then {got['hits_second']:,}")
        if hits:
            notes.append(
                f"cache hits of {n:,} nodes, first run then second, {variant.name}: "
                + "; ".join(hits)
                + "."
            )
    definition_rows = []
    for name in ("base", "policy-ttl"):
        cells = [
            f"{shape} {got['rss_definition'] / n:,.0f} B"
            for shape in shapes
            if (got := data[name, shape]) and "rss_definition" in got
        ]
        definition_rows.append(f"{name}: {', '.join(cells)}")
    table.notes += [
        "run peak RSS: VmHWM after the first execute minus VmRSS before it (VmHWM reset "
        "through /proc/self/clear_refs); the definition is created and compiled before.",
        "peak tm / retained tm: the same run again under tracemalloc, after clearing the "
        "cache and resetting the metrics collector; 'retained' is what is still allocated "
        "after the run with its RunResult alive: the result and its trace, the cache "
        "entries, the collector's samples.",
        "second run (hits): the same definition again on the now-filled cache "
        "(tracemalloc only; RSS would reuse the first run's freed arenas).",
        f"the cached variants use cache_size={CACHE_SIZE:,} so that every node's result "
        "stays cached (the default, 1,000, would cap the cache at 1,000 entries).",
        "Δ MB: (retained tm of the row - retained tm of base) scaled to 10,000 nodes, the "
        "largest over the shapes, next to the seed's claim.",
        "definition+compile RSS per node (measured in the same children): "
        + "; ".join(definition_rows)
        + " (a per-node cache policy adds a CachePolicy to every node).",
        *notes,
    ]
    all_rss = [
        got["rss_run_peak"] / n
        for shape in shapes
        if (got := data["all", shape]) and "rss_run_peak" in got
    ]
    all_kept = [
        got["tm_run_retained"] / n
        for shape in shapes
        if (got := data["all", shape]) and "tm_run_retained" in got
    ]
    failed = [shape for shape in shapes if (got := data["all", shape]) is None or "error" in got]
    if all_rss and all_kept:
        worst = max(max(all_rss), max(all_kept))
        table.notes.append(
            "target < 2 KB per node with all features on (the run, first run): worst run "
            f"peak RSS {max(all_rss):,.0f} B, worst retained {max(all_kept):,.0f} B -> "
            f"{'met' if worst < 2048 else 'NOT met'}"
            + (f" (the run failed on: {', '.join(failed)})" if failed else "")
            + "."
        )
    return table


def child_main(spec: str) -> str:
    return json.dumps(asyncio.run(features_child(spec)))
