"""The threads of ``SqliteStore``: each owns one ``sqlite3`` connection and runs the
callables that event loops queue for it. The writer takes what is queued when it comes
round as one transaction (group commit: ``BEGIN IMMEDIATE``, a ``SAVEPOINT`` per job so a
failing one is rolled back alone, one ``COMMIT``) and only then answers every caller; the
reader runs its jobs one by one. Each loop is woken once per batch."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
#: the most writes one transaction takes (a batch never waits to fill up)
MAX_BATCH = 256
_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class SqliteWorker:
    """A thread owning one connection, running the callables queued from event loops.
    The writer runs each batch in one transaction; the reader runs them one by one."""

    def __init__(self, path: str, name: str, *, writes: bool) -> None:
        self._path, self._name, self._writes = path, name, writes
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            with self._started:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name=self._name)
                    self._thread.daemon = True
                    self._thread.start()
        self._jobs.put((job, future, loop))
        return future

    def stop(self) -> None:
        """Finish the queued jobs, close the connection, end the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(10)

    def _serve(self) -> None:
        connection = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=30000")
            while (job := self._jobs.get()) is not None:
                batch = [job]
                while len(batch) < MAX_BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        self._jobs.put(None)  # stop after this batch
                        break
                    batch.append(job)
                run = self._transact if self._writes else self._each
                _answer(batch, run(connection, [fn for fn, _, _ in batch]))
        finally:
            connection.close()

    @staticmethod
    def _each(connection: sqlite3.Connection, jobs: list[Callable[..., Any]]) -> list[Any]:
        outcomes: list[Any] = []
        for fn in jobs:
            try:
                outcomes.append((True, fn(connection)))
            except BaseException as exc:  # handed to the caller, which raises it
                outcomes.append((False, exc))
        return outcomes

    @staticmethod
    def _transact(connection: sqlite3.Connection, jobs: list[Callable[..., Any]]) -> list[Any]:
        outcomes: list[Any] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for fn in jobs:
                connection.execute("SAVEPOINT job")
                try:
                    outcomes.append((True, fn(connection)))
                except BaseException as exc:
                    connection.execute("ROLLBACK TO job")
                    outcomes.append((False, exc))
                connection.execute("RELEASE job")
            connection.execute("COMMIT")
        except BaseException as exc:  # BEGIN or COMMIT failed: none of the batch holds
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return [(False, exc)] * len(jobs)
        return outcomes


def _answer(batch: list[_Job], outcomes: list[Any]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for (_, future, loop), outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, answers in by_loop.items():
        # one wake-up of each loop for the whole batch (a loop that closed: no one waits)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, answers)


def _settle(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, (ok, value) in answers:
        if future.done():  # its caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
