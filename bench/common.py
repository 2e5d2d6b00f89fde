"""Shared pieces of the engine benchmarks: tables, timing, workflow shapes, memory probes."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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

ROOT = Path(__file__).resolve().parent.parent
LIMITS = ExecutionConfig(max_nodes=20_000, max_edges=50_000)
DELAY = 0.01
#: a timed sample of a fast operation loops until it lasts at least this long
MIN_SAMPLE = 0.03

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


def status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return -1


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


# ---------------------------------------------------------------- the machine


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


def revision(label: str | None = None) -> str:
    if label:
        return label
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
