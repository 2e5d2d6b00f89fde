"""The command line every benchmark shares: the common flags (``--quick``, ``--only``,
``--markdown``, ``--revision``, waiting for a quiet machine), the header that says what
was measured where, and the footer."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from bench.support.machine import cpu_model, cpus, loadavg, revision


def parser(
    prog: str, doc: str | None, sections: Sequence[str], quick: str
) -> argparse.ArgumentParser:
    """A parser with the flags of every benchmark; ``quick`` says what --quick does."""
    result = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    result.add_argument("--quick", action="store_true", help=quick)
    result.add_argument(
        "--only",
        action="append",
        choices=sections,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(sections)}",
    )
    result.add_argument("--markdown", action="store_true", help="print GitHub tables")
    result.add_argument(
        "--revision", help="the revision to print in the header (for a clean export of a commit)"
    )
    return result


def add_quiet_wait(result: argparse.ArgumentParser, max_wait: float) -> None:
    """``--max-load`` and ``--max-wait``: how quiet the machine should be before measuring
    (see ``machine.wait_for_quiet``), and how long to wait for it (0: not at all)."""
    result.add_argument(
        "--max-load", type=float, default=1.0, help="wait for a 1-minute load below this"
    )
    result.add_argument(
        "--max-wait",
        type=float,
        default=max_wait,
        help=f"...for at most this many seconds (default {max_wait:g}; 0: do not wait)",
    )


def chosen(args: argparse.Namespace, sections: Sequence[str]) -> list[str]:
    """The sections ``--only`` asked for (all by default), in their order."""
    return [s for s in sections if s in (args.only or sections)]


def header(args: argparse.Namespace, *, loop: str, lines: Sequence[str]) -> list[str]:
    """The date and revision, Python (``loop``: what runs the event loop), the CPU, then
    ``lines``."""
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; flowcore {revision(args.revision)}",
        f"python: {platform.python_implementation()} {platform.python_version()} "
        f"({platform.platform()}){loop}",
        f"cpu: {cpu_model()}; {os.cpu_count()} CPUs ({cpus()} usable)",
        *lines,
    ]


def mode_line(args: argparse.Namespace) -> str:
    return (
        f"mode: {'quick' if args.quick else 'full'}; load average (1, 5, 15 min) at the "
        f"start of measuring: {loadavg()}"
    )


def print_header(title: str, lines: Sequence[str], markdown: bool) -> None:
    if markdown:
        print("\n".join(f"- {line}" for line in lines) + "\n", flush=True)
    else:
        print(title + "\n" + "\n".join(lines) + "\n", flush=True)


def print_footer(started: float, markdown: bool) -> None:
    """The total time (since ``started``, a ``time.perf_counter()``) and the load."""
    footer = f"total time {time.perf_counter() - started:.0f} s; load average at the end: "
    footer += loadavg()
    print(f"- {footer}" if markdown else footer, flush=True)


def run_on_uvloop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop, as the service runs (asyncio's loop on Windows)."""
    if sys.platform != "win32":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main)


def numbers(text: str) -> list[int]:
    """An argparse ``type``: comma-separated whole numbers ("50,20,5")."""
    return [int(part) for part in text.split(",") if part.strip()]
