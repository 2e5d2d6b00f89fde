"""Redis for the tests: the machine's server on 127.0.0.1:6379 for contract suites, and a
private ``redis-server`` subprocess that a test may stop, restart, pause (SIGSTOP: a hung
Redis) and resume.

With ``CI=true`` an unreachable Redis (or a missing ``redis-server`` binary) fails the
tests; elsewhere they are skipped with a message that says how to enable them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

REDIS_URL = os.environ.get("FLOWCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HOW_TO_ENABLE = (
    "Redis is not reachable on 127.0.0.1:6379; start one there (or set "
    "FLOWCORE_TEST_REDIS_URL) to run the Redis tests (with CI=true they fail instead)"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _skip_or_fail(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


_redis_error: list[str | None] = []


def _ping(host: str, port: int, timeout: float = 1.0) -> None:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        sock.settimeout(timeout)
        reply = sock.recv(64)
    if not reply.startswith(b"+PONG"):
        raise ConnectionError(f"unexpected reply {reply!r}")


def require_redis() -> str:
    """The shared Redis URL; skips (or, with CI=true, fails) when it does not answer."""
    if not _redis_error:
        from urllib.parse import urlparse

        parsed = urlparse(REDIS_URL)
        try:
            _ping(parsed.hostname or "127.0.0.1", parsed.port or 6379)
            _redis_error.append(None)
        except OSError as exc:
            _redis_error.append(f"{type(exc).__name__}: {exc}")
    error = _redis_error[0]
    if error is not None:
        _skip_or_fail(f"{HOW_TO_ENABLE} [{error}]")
    return REDIS_URL


def unique_prefix() -> str:
    """A key prefix of its own for one test (tests share the machine's Redis)."""
    return f"flowcore-test-{uuid.uuid4().hex[:10]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on an ephemeral port (nothing kept on disk)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _skip_or_fail("redis-server is not installed (apt install redis-server)")
        assert binary is not None
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                _ping("127.0.0.1", self.port, timeout=0.5)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill it (SIGKILL: connections drop at once)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        """Freeze it: connections stay open and nothing answers (a hung Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


async def bounded(call: Awaitable[Any]) -> Any:
    """A call that must return (not hang) while Redis is down: well over the link's
    timeout, so it only fails when something waits on Redis without one."""
    async with asyncio.timeout(3.0):
        return await call
