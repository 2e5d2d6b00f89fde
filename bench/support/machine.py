"""The machine a benchmark runs on: progress lines, the CPU, the revision measured, the
load average (and waiting for it to fall), and what /proc says of a process."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def log(message: str) -> None:
    """Progress goes to stderr; stdout is for the tables."""
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def version(package: str) -> str:
    """An installed package's version, or "not installed"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


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
    """``label`` if given (a clean export of a commit), else HEAD, marked when app/ has
    uncommitted changes."""
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


def wait_for_quiet(threshold: float, limit: float) -> None:
    """Wait, up to ``limit`` seconds (``math.inf``: for as long as it takes), until the
    1-minute load average is below ``threshold``: other work on the machine skews every
    number measured here."""
    started = time.monotonic()
    announced = False
    while (load := os.getloadavg()[0]) >= threshold:
        waited = time.monotonic() - started
        if waited >= limit:
            log(f"load average still {load:.2f} after {waited:.0f} s; measuring anyway")
            return
        if not announced:
            log(f"waiting for the 1-minute load average ({load:.2f}) to fall below {threshold}")
            announced = True
        time.sleep(5)
    if announced:
        log(f"load average {os.getloadavg()[0]:.2f} after {time.monotonic() - started:.0f} s")


def status_kb(field_name: str, pid: int | str = "self") -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM...); -1 if absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
