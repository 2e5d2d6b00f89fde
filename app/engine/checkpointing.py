"""``CheckpointWriter``: the incremental checkpoint records of one run, numbered and
written in order by one background task.

The scheduler never waits for a store: a record is queued and the run goes on, while the
writer appends whatever piled up meanwhile in one batch. A store's error ends the writer
and is kept (``error``) for the executor, which then fails the run: a run whose state
could not be stored did not durably succeed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from app.engine.checkpoint import CheckpointRecord, CheckpointStore, NodeCheckpoint
from app.engine.dsl import WorkflowDefinition
from app.engine.ports import Clock
from app.engine.result import RunError

__all__ = ["CheckpointWriter"]


class CheckpointWriter:
    """Numbers a run's records and writes them in order.

    ``sequence`` is the last record's number (0 for a new run, the restored one's when
    resuming); ``parent`` the sequence the first new record continues from when that is
    not the one before it (resuming from an earlier checkpoint); ``seed`` a fork's
    restored nodes, written into its first record. The first record of a run carries
    the definition and the input.
    """

    def __init__(
        self,
        store: CheckpointStore,
        run_id: str,
        definition: WorkflowDefinition,
        input: Any,
        clock: Clock,
        *,
        sequence: int = 0,
        parent: int | None = None,
        seed: dict[str, NodeCheckpoint] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.definition = definition
        self.input = input
        self.clock = clock
        self.sequence = sequence
        self.parent = parent
        self.seed = seed
        #: what the store raised, once it did (nothing is written after it)
        self.error: BaseException | None = None
        self._queue: list[CheckpointRecord] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._write()
        )

    def write(
        self,
        status: str,
        completed: dict[str, NodeCheckpoint],
        variables: dict[str, Any],
        frontier: list[str],
        event_seq: int,
        pending: dict[str, dict[str, Any]],
        signals: dict[str, deque[Any]],
        error: RunError | None = None,
    ) -> None:
        """Queue the next record: the nodes ``completed`` since the last one, and a copy
        of the run's variables, frontier, pending delays and waits, and kept signals."""
        self.sequence += 1
        first = self.sequence == 1
        if self.seed is not None:  # a fork's chain starts with all it inherited
            completed = {**self.seed, **completed}
            self.seed = None
        parent, self.parent = self.parent, None
        self._queue.append(
            CheckpointRecord(
                run_id=self.run_id,
                sequence=self.sequence,
                created_at=self.clock.now(),
                event_seq=event_seq,
                status=status,
                completed=completed,
                variables=variables,
                frontier=frontier,
                pending={k: dict(v) for k, v in pending.items()},
                signals={name: list(kept) for name, kept in signals.items() if kept},
                workflow_id=self.definition.id,
                definition=(
                    self.definition.model_dump(mode="json", exclude_none=True) if first else None
                ),
                input=self.input if first else None,
                error=error.to_dict() if error else None,
                parent=parent,
            )
        )
        self._wake.set()

    async def _write(self) -> None:
        """Writes queued records in order, batching whatever piled up meanwhile."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if batch:
                try:
                    await self.store.append(batch)
                except Exception as exc:  # surfaced by the executor through `error`
                    self.error = exc
                    return
            if self._closing and not self._queue:
                return

    async def finish(self) -> None:
        """Write everything queued, then stop the writer."""
        task = self._task
        if task is None:
            return
        self._task = None
        self._closing = True
        self._wake.set()
        await asyncio.shield(task)
