"""The service under test: ``python -m app.cli serve`` in a subprocess on a free port,
ready once /readyz answers, stopped gracefully; what it logged, summed up for a table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.support.machine import ROOT, cpu_seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``python -m app.cli serve`` in a subprocess."""

    process: asyncio.subprocess.Process
    base_url: str
    log_path: Path
    name: str = "server"

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


def logged_problems(name: str, log_path: Path) -> list[str]:
    """The warnings and errors a server logged (its log is JSON lines; anything else on
    it, a traceback before logging was configured, counts too)."""
    found: list[str] = []
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                found.append(f"{name}: {line.strip()[:200]}")
            continue
        if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
            message = f"{entry.get('logger')}: {entry.get('message')}"
            exc = str(entry.get("exc") or "").strip().splitlines()
            if exc:
                message += f" ({exc[-1][:160]})"
            found.append(f"{name}: {entry['level']} {message[:300]}")
    return found


@contextlib.asynccontextmanager
async def serve(
    database_url: str,
    env: dict[str, str],
    *,
    name: str = "server",
    problems: list[str] | None = None,
) -> AsyncIterator[Server]:
    """The service on a free port against an already migrated database; ready once
    /readyz answers 200; stopped with SIGTERM (a graceful shutdown) on the way out, when
    the warnings and errors it logged go to ``problems`` (if given)."""
    port = free_port()
    environ = {
        **os.environ,
        "FLOWCORE_DATABASE_URL": database_url,
        "FLOWCORE_REPLICA_ID": f"bench-{name}-{port}",
        # API keys off but where a row turns them on (bench.http --only auth)
        "FLOWCORE_AUTH": "disabled",
        **env,
    }
    if "FLOWCORE_REDIS_URL" not in env:  # on Redis only where a row asks for it
        environ.pop("FLOWCORE_REDIS_URL", None)
    fd, log_name = tempfile.mkstemp(prefix=f"flowcore-bench-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-migrate"),
            cwd=ROOT,
            env=environ,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", Path(log_name), name)
    try:
        await wait_ready(server.base_url, process, server.log_path)
        yield server
    finally:
        stuck = False
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                stuck = True
                process.kill()
                await process.wait()
        if problems is not None:
            if stuck:
                problems.append(f"{name}: did not stop within 20 s of SIGTERM")
            problems += logged_problems(name, server.log_path)
        with contextlib.suppress(OSError):
            server.log_path.unlink()


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


async def wait_ready(
    base_url: str, process: asyncio.subprocess.Process, log_path: Path, timeout: float = 30.0
) -> None:
    """Until the server's /readyz says 200; raises with its log's tail if it exits."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as client:
        while True:
            if process.returncode is not None:
                tail = _log_tail(log_path)
                raise RuntimeError(f"the server exited ({process.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in time")
            await asyncio.sleep(0.1)


def server_problems(problems: list[str], limit: int = 8) -> list[str]:
    """Table notes for what servers logged (see ``serve``'s ``problems``)."""
    if not problems:
        return ["the servers logged no warning or error."]
    distinct: dict[str, int] = {}
    for problem in problems:
        distinct[problem] = distinct.get(problem, 0) + 1
    lines = [f"the servers logged {len(problems)} warning(s)/error(s):"]
    lines += [f"  {count}x {text}" for text, count in list(distinct.items())[:limit]]
    if len(distinct) > limit:
        lines.append(f"  ... and {len(distinct) - limit} more distinct ones")
    return lines
