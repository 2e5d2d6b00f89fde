"""The benchmarks still start, and what they share still means what the tables say.

Each benchmark's command line imports every module of it, so ``--help`` fails on a
broken import; the engine's ``speed`` section runs end to end (seconds). The smallest
run of every section takes minutes (the commands are in docs/benchmarks*.md), too long
for this suite. Figures are never checked: a benchmark asserts nothing.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.support.load import drive
from bench.support.stats import med, percentile, spread

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ["bench.engine", "bench.http", "bench.redis", "bench.parked", "bench.llm"]


def bench(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("module", BENCHMARKS)
def test_every_benchmark_imports_all_of_its_sections(module: str) -> None:
    proc = bench(module, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


@pytest.mark.slow
def test_the_engine_speed_section_prints_its_table() -> None:
    proc = bench("bench.engine", "--only", "speed", "--quick", "--reps", "1", "--markdown")
    assert proc.returncode == 0, proc.stderr
    assert "### 1. Execution speed: 10 ms delay nodes vs the asyncio floor" in proc.stdout
    first_cells = [
        line.split("|")[1].strip() for line in proc.stdout.splitlines() if line[:2] == "| "
    ]
    assert first_cells == ["nodes", "10", "50", "100"]


@pytest.mark.slow
def test_the_llm_benchmark_prints_its_tables() -> None:
    # tiny numbers: the fake, a server on SQLite, five runs each way (seconds)
    argv = ("--only", "sqlite", "--quick", "--runs", "5", "--max-wait", "0", "--markdown")
    proc = bench("bench.llm", *argv, "--tokens", "20", "--paced-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    assert "### 1. Tokens/s: 50 concurrent streaming runs" in proc.stdout
    assert "### 2. Token latency" in proc.stdout
    assert "### 3. Durable log" in proc.stdout
    first_cells = [
        line.split("|")[1].strip() for line in proc.stdout.splitlines() if line[:2] == "| "
    ]
    assert first_cells == ["database", "sqlite"] + ["database", "sqlite", "sqlite"] * 2


def test_percentiles_are_nearest_rank() -> None:
    xs = [float(x) for x in range(100, 0, -1)]
    assert (percentile(xs, 50), percentile(xs, 99), percentile(xs, 100)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert math.isnan(med([]))


def test_a_spread_is_the_median_and_the_range() -> None:
    assert spread([3.0, 1.0, 2.0]) == "2.0 (1.0-3.0)"
    assert spread([1234.5]) == "1,234.5"
    assert spread([]) == "-"


async def test_drive_keeps_one_call_per_worker_in_flight() -> None:
    in_flight, most = 0, 0

    async def one(worker: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return worker

    outcomes, _wall, _cpu = await drive(7, range(3), one)
    assert len(outcomes) == 7
    assert set(outcomes) == {0, 1, 2}
    assert most == 3
