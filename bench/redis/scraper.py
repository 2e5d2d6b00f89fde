"""The /metrics scraper: a separate process (like Prometheus) that GETs /metrics on a
fixed schedule while the measured runs go on, and reports its samples."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field

from bench.support.machine import ROOT


def scrape_child(url: str, period: float) -> None:
    """The scraper process (``--scrape-child URL PERIOD``): prints "ready", scrapes
    ``url`` every ``period`` seconds from "go" to "stop" on stdin (on one keep-alive
    connection, like Prometheus), then prints its samples as JSON."""
    import http.client
    import threading
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(host, port, timeout=10)

    connection = connect()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    latencies: list[float] = []
    sizes: list[int] = []
    errors: list[str] = []
    due = time.monotonic()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - started)
                sizes.append(len(body))
            else:
                errors.append(f"HTTP {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            connection.close()
            connection = connect()
        due = max(due + period, time.monotonic())  # a slow scrape delays the next one
        stop.wait(max(0.0, due - time.monotonic()))
    connection.close()
    print(json.dumps({"latencies": latencies, "sizes": sizes, "errors": errors}), flush=True)


@dataclass
class Scrapes:
    latencies: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Scraper:
    """A ``--scrape-child`` subprocess: start it, ``go``, then ``stop`` for its samples."""

    def __init__(self, base_url: str, period: float) -> None:
        self.url = f"{base_url}/metrics"
        self.period = period
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bench.redis", "--scrape-child", self.url, str(self.period)),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the scraper did not start: {line!r}")

    def go(self) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def stop(self) -> Scrapes:
        assert self.process is not None
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        await self.process.wait()
        data = json.loads(line)
        return Scrapes(data["latencies"], data["sizes"], data["errors"])

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
