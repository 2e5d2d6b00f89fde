"""What the engine benchmarks (bench.engine and its section modules) share: timing
interleaved samples, engine runs of prepared definitions, memory probes of a fresh
process, the asyncio floor. The pieces every benchmark shares live in bench.support;
the ones the engine's section modules use are re-exported here."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.engine import (
    ExecutionConfig,
    NodeStatus,
    RunStatus,
    WorkflowDefinition,
    WorkflowExecutor,
    create_workflow,
)
from app.engine.graph import compile_workflow
from bench.support.machine import ROOT, log, status_kb
from bench.support.stats import cell, med, pct
from bench.support.tables import Table, emit
from bench.support.workflows import NOOP, Raw, chain_raw, fanout_raw, roots_raw

__all__ = [
    "DELAY",
    "DELAY_NODE",
    "LIMITS",
    "MIN_SAMPLE",
    "NOOP",
    "ROOT",
    "SHAPES",
    "AsyncFn",
    "Raw",
    "Table",
    "calibrate",
    "cell",
    "chain_raw",
    "check_engine",
    "emit",
    "engine_run",
    "fanout_raw",
    "floor_chain",
    "floor_fanout",
    "log",
    "med",
    "pct",
    "prepared",
    "reset_peak",
    "roots_raw",
    "run_child",
    "side_by_side",
    "status_kb",
    "timed",
    "warned",
]

LIMITS = ExecutionConfig(max_nodes=20_000, max_edges=50_000)
DELAY = 0.01
#: a timed sample of a fast operation loops until it lasts at least this long
MIN_SAMPLE = 0.03

AsyncFn = Callable[[], Awaitable[object]]


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


DELAY_NODE: Raw = {"type": "delay", "config": {"seconds": DELAY}}
SHAPES: dict[str, Callable[[int, Raw], Raw]] = {"chain": chain_raw, "fan-out": fanout_raw}


def prepared(raw: Raw) -> WorkflowDefinition:
    definition = create_workflow(raw, limits=LIMITS)
    compile_workflow(definition)  # cached on the definition; execute() reuses it
    return definition


warned: set[str] = set()


def check_engine(label: str, status: RunStatus, ran: int, expected: int) -> None:
    if (status is not RunStatus.SUCCEEDED or ran != expected) and label not in warned:
        warned.add(label)
        log(f"WARNING: {label}: status {status.value}, {ran}/{expected} nodes ran")


def engine_run(executor: WorkflowExecutor, definition: WorkflowDefinition, label: str) -> AsyncFn:
    n = len(definition.nodes)

    async def run() -> None:
        result = await executor.execute(definition, {})
        ran = sum(1 for r in result.node_results.values() if r.status is NodeStatus.SUCCEEDED)
        check_engine(label, result.status, ran, n)

    return run


# ------------------------------------------------------------------------- memory probes


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, own process)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return status_kb("VmHWM") <= status_kb("VmRSS") + 64


def run_child(flag: str, spec: str) -> tuple[dict[str, Any] | None, str]:
    """Run ``python -m bench.engine <flag> <spec>`` in a fresh process; its last stdout
    line is JSON. Returns (data, "") or (None, the end of its stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.engine", flag, spec],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None, proc.stderr.strip()[-300:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


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
