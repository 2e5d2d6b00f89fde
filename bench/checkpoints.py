"""Section ``checkpoints``: what ``enable_checkpoints`` costs per node, with
``FileCheckpointStore`` and ``InMemoryCheckpointStore``, at 10, 100 and 1,000 nodes.

The workloads are those of the ``features`` section (``chain`` of noop nodes, whose
outputs nest deeper node by node; ``chain-const``, whose outputs have a constant size;
``fan-out``). Incremental checkpoints should cost the same per node at every size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from app.engine import (
    ExecutionConfig,
    FileCheckpointStore,
    InMemoryCheckpointStore,
    WorkflowDefinition,
    WorkflowExecutor,
)
from bench.common import AsyncFn, Table, cell, engine_run, log, med, prepared, side_by_side
from bench.features import WORKLOADS, short_error

SIZES = (10, 100, 1_000)
FSYNC_ROW = ("chain", 100)


@dataclass
class Sizes:
    """What one run wrote (one file per run)."""

    total: int
    records: int
    first: int
    last: int
    median_rest: float  # records 2..n


@dataclass
class Row:
    shape: str
    n: int
    fsync: bool
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, Sizes] = field(default_factory=dict)


def filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on (from /proc/mounts)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def _config(interval: int) -> ExecutionConfig:
    return ExecutionConfig(enable_checkpoints=True, checkpoint_interval=interval)


def _fresh_memory_store(executor: WorkflowExecutor, run: AsyncFn) -> AsyncFn:
    """Every run on a new in-memory store (an old one would keep every run's records)."""

    async def fn() -> None:
        executor.checkpoint_store = InMemoryCheckpointStore()
        await run()

    return fn


async def _probe(
    definition: WorkflowDefinition, directory: Path, interval: int, fsync: bool
) -> Sizes:
    """One run into an empty directory; the sizes of what it wrote."""
    executor = WorkflowExecutor(
        _config(interval), checkpoint_store=FileCheckpointStore(directory, fsync=fsync)
    )
    await executor.execute(definition, {}, run_id="probe")
    return _sizes(directory / "probe.jsonl")


def _sizes(path: Path) -> Sizes:
    sizes = [len(line) + 1 for line in path.read_bytes().splitlines()]  # with the newline
    return Sizes(
        sum(sizes),
        len(sizes),
        sizes[0],
        sizes[-1],
        statistics.median(sizes[1:]) if len(sizes) > 1 else 0.0,
    )


def _count_files(directory: Path) -> int:
    return sum(1 for _ in directory.rglob("*.jsonl"))


async def measure(shape: str, n: int, fsync: bool, reps: int, tmp: Path) -> Row:
    make, node = WORKLOADS[shape]
    definition = prepared(make(n, node))
    row = Row(shape, n, fsync)
    tag = f"{shape}-{n}{'-fsync' if fsync else ''}"
    executors: dict[str, WorkflowExecutor] = {"base": WorkflowExecutor()}
    for interval in (1, 10):
        store = FileCheckpointStore(tmp / f"{tag}-file{interval}", fsync=fsync)
        executors[f"file{interval}"] = WorkflowExecutor(_config(interval), checkpoint_store=store)
        if not fsync:
            executors[f"memory{interval}"] = WorkflowExecutor(_config(interval))
    fns: dict[str, AsyncFn] = {}
    for key, executor in executors.items():
        run = engine_run(executor, definition, f"checkpoints {key} {tag}")
        fn = _fresh_memory_store(executor, run) if key.startswith("memory") else run
        try:  # one run first: drop variants that fail
            await fn()
        except Exception as exc:
            row.errors[key] = short_error(exc)
            continue
        fns[key] = fn
    row.samples = await side_by_side(fns, reps)
    for interval in (1, 10):
        key = f"file{interval}"
        if key not in row.errors:
            row.sizes[key] = await _probe(
                definition, tmp / f"{tag}-probe{interval}", interval, fsync
            )
    return row


def _label(row: Row) -> str:
    return f"{row.shape}{' (fsync=True)' if row.fsync else ''}"


async def section_checkpoints(args: argparse.Namespace) -> Table:
    table = Table(
        "5. Checkpoints: cost per node (warm, µs per node over the same run without)",
        [
            "shape",
            "nodes",
            "no checkpoints µs/node",
            "file, interval 1: +µs/node",
            "file, interval 10: +µs/node",
            "memory, interval 1: +µs/node",
            "memory, interval 10: +µs/node",
            "file B/node (1 / 10)",
            "records (1 / 10)",
            "first record B",
            "median record B",
            "last record B",
        ],
        "lrrrrrrrrrrr",
    )
    with tempfile.TemporaryDirectory(prefix="flowcore-bench-checkpoints-") as tmp_text:
        tmp = Path(tmp_text)
        rows: list[Row] = []
        plan = [(shape, n, False) for shape in WORKLOADS for n in SIZES]
        plan.append((*FSYNC_ROW, True))
        for shape, n, fsync in plan:
            log(f"checkpoints: {shape} {n:,}{' fsync' if fsync else ''}")
            rows.append(await measure(shape, n, fsync, args.reps, tmp))
        kind = filesystem(tmp)
        files = _count_files(tmp)
    growth: dict[str, list[tuple[int, float, float]]] = {}
    for row in rows:
        n = row.n
        base = row.samples.get("base")
        cells = [_label(row), f"{n:,}", cell(base, 1e6 / n) if base else "-"]
        for key in ("file1", "file10", "memory1", "memory10"):
            if key in row.errors:
                cells.append(row.errors[key])
            elif key not in row.samples or base is None:
                cells.append("-")
            else:
                delta = (med(row.samples[key]) - med(base)) * 1e6 / n
                cells.append(f"{delta:+,.1f}")
                if key == "file1" and not row.fsync:
                    per_node = row.sizes["file1"].total / n
                    growth.setdefault(row.shape, []).append((n, delta, per_node))
        one, ten = row.sizes.get("file1"), row.sizes.get("file10")
        cells.append(f"{one.total / n:,.0f} / {ten.total / n:,.0f}" if one and ten else "-")
        cells.append(f"{one.records:,} / {ten.records:,}" if one and ten else "-")
        cells += (
            [f"{one.first:,}", f"{one.median_rest:,.0f}", f"{one.last:,}"] if one else ["-"] * 3
        )
        table.rows.append(cells)
    table.notes += [
        "the same compiled definition run by executors that differ only in "
        "ExecutionConfig(enable_checkpoints=True, checkpoint_interval=1 | 10) and the store; "
        f"all variants of a row interleaved in one process, {args.reps} repetitions "
        "after a warm-up run, each looped to >= 30 ms; +µs/node = (median - median without "
        "checkpoints) / nodes.",
        "file: FileCheckpointStore(tmpdir), one JSON-lines file per run, appended from a "
        f"worker thread; the directory is on {kind} ({files:,} run files written). memory: "
        "InMemoryCheckpointStore, a new one for every run.",
        "sizes: one more run per interval into an empty directory; B/node = the run's "
        ".jsonl size / nodes; record sizes (interval 1) include the newline; the first "
        "record also holds the definition and the input; median record: records 2..n.",
    ]
    for shape, points in growth.items():
        if len(points) < 2:
            continue
        points.sort()
        (n0, d0, b0), (n1, d1, b1) = points[-2], points[-1]
        flat = d1 <= max(d0 * 1.5, d0 + 2) and b1 <= b0 * 1.5
        steps = ", ".join(f"{d:+.1f} µs and {b:,.0f} B at {n:,}" for n, d, b in points)
        table.notes.append(
            f"{shape}, file, interval 1, per node: {steps} -> from {n0:,} to {n1:,} nodes "
            f"the cost per node {'does not grow' if flat else 'GROWS'}."
        )
    return table
