"""A plugin for the service crash tests, loaded by the server processes through
``FLOWCORE_PLUGINS=ledger_nodes`` (this directory is on their ``PYTHONPATH``).

The ``ledger`` node type (optionally held at a gate until the test creates the file
``FLOWCORE_TEST_GATE`` names) appends ``"<run_id> <node_id>\\n"`` to the file named by
``FLOWCORE_TEST_LEDGER`` when it *starts* — a side effect outside the service that
survives a SIGKILL — then works for ``config.sleep`` seconds (a real sleep). Its output
is its node id and its depth in the graph (1 + the deepest parent), so a run's output
shows that outputs restored from a checkpoint flowed on correctly.

Fault injection (``FLOWCORE_TEST_FAULT``) stops the server dead at a chosen point and
marks the ledger with ``"<run_id> @<point>"``, so a test can SIGKILL it exactly there:

- ``stall-after-final-checkpoint``: right after ``Store.commit_progress`` committed a
  run's final checkpoint (status ``succeeded``, ``failed`` or ``cancelled``, with the
  run's terminal event);
- ``stall-checkpoint-of:<node_id>``: the checkpoint that completes ``<node_id>`` is held
  back (as if its transaction were slow) until the journal's event flusher has committed
  the node's ``node.completed`` event on its own — or for 2 s if it never does — and is
  then never written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.engine import BaseNode, NodeContext, NodeRegistry, NodeResult, WorkflowContext

LEDGER_ENV = "FLOWCORE_TEST_LEDGER"
GATE_ENV = "FLOWCORE_TEST_GATE"
FAULT_ENV = "FLOWCORE_TEST_FAULT"
STALL_AFTER_FINAL_CHECKPOINT = "stall-after-final-checkpoint"
#: the ledger's "node id" for the stall marker
FINAL_CHECKPOINT_MARKER = "@final_checkpoint"
STALL_CHECKPOINT_OF = "stall-checkpoint-of"
CHECKPOINT_STALLED_MARKER = "@checkpoint_stalled"


class LedgerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sleep: float = Field(0.0, ge=0, description="Seconds of real work after the ledger line.")
    gate: bool = Field(False, description="First wait until the file GATE_ENV names exists.")


def append_line(path: str, line: str) -> None:
    """One ``write()`` on an ``O_APPEND`` descriptor: a whole line or nothing, even under
    SIGKILL and with several processes appending to the same file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def _exists(path: str) -> bool:
    return os.path.exists(path)


@NodeRegistry.register("ledger")
class LedgerNode(BaseNode):
    """Records ``<run_id> <node_id>`` in the ledger file, then sleeps ``sleep`` seconds.
    With ``gate`` it first waits for the test to open the gate (create the file)."""

    config_model = LedgerConfig
    config: LedgerConfig
    cacheable = False

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        if self.config.gate:
            gate = os.environ[GATE_ENV]
            # the test opens the gate from another process: nothing to await but the file
            while not _exists(gate):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        append_line(os.environ[LEDGER_ENV], f"{node_context.run_id} {node_context.node_id}")
        await asyncio.sleep(self.config.sleep)
        depths = [
            int(parent["depth"])
            for parent in node_context.input.values()
            if isinstance(parent, dict) and "depth" in parent
        ]
        return NodeResult(
            output={"node": node_context.node_id, "depth": 1 + max(depths, default=0)}
        )


def _stall_after_final_checkpoint() -> None:
    from app.store.repository import Lease, Store

    commit_progress = Store.commit_progress

    async def stalling(
        self: Store, lease: Lease, records: Sequence[Any], *args: Any, **kwargs: Any
    ) -> None:
        await commit_progress(self, lease, records, *args, **kwargs)
        final = [r.status for r in records if r.status in ("succeeded", "failed", "cancelled")]
        if final:
            marker = f"{lease.run_id} {FINAL_CHECKPOINT_MARKER}:{final[-1]}"
            append_line(os.environ[LEDGER_ENV], marker)
            await asyncio.Event().wait()  # until the test kills the process

    Store.commit_progress = stalling  # type: ignore[method-assign,assignment]


def _stall_checkpoint_of(node_id: str) -> None:
    from app.runtime.journal import RunJournal

    append = RunJournal.append

    def completion_pending(journal: RunJournal) -> bool:
        return any(
            e.node_id == node_id and e.type.value == "node.completed" for e in journal.pending
        )

    async def stalling(self: RunJournal, records: list[Any]) -> None:
        if not any(node_id in r.completed for r in records):
            await append(self, records)
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 2.0
        while completion_pending(self) and loop.time() < give_up:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the flusher runs every FLOWCORE_EVENT_FLUSH_SECONDS
        append_line(os.environ[LEDGER_ENV], f"{self.lease.run_id} {CHECKPOINT_STALLED_MARKER}")
        await asyncio.Event().wait()  # until the test kills the process

    RunJournal.append = stalling  # type: ignore[method-assign]


_fault, _, _argument = os.environ.get(FAULT_ENV, "").partition(":")
if _fault == STALL_AFTER_FINAL_CHECKPOINT:
    _stall_after_final_checkpoint()
elif _fault == STALL_CHECKPOINT_OF:
    _stall_checkpoint_of(_argument)
