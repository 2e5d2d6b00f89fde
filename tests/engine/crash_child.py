"""The child process of ``test_crash_resume.py``.

``python -m tests.engine.crash_child run CKPT_DIR LEDGER RUN_ID SUMMARY`` runs a 50-node
layered workflow (10 layers of 5, each node after every node of the layer before) with
checkpoints in a ``FileCheckpointStore``; ``... resume ...`` resumes that run, in a new
process, from its latest checkpoint. Each node appends its id to the ``LEDGER`` file
(a side effect outside the engine) and then works for a while (a real sleep). ``SUMMARY``
gets a JSON report; the exit status is 0 when the run succeeded.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from app.engine import (
    BaseNode,
    ExecutionConfig,
    NodeContext,
    NodeRegistry,
    NodeResult,
    RunStatus,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowExecutor,
    create_workflow,
)
from app.engine.checkpoint import FileCheckpointStore

LAYERS = 10
WIDTH = 5
#: seconds of "work" per node: 10 layers take about a second
WORK = 0.1


def node_ids() -> list[str]:
    return [f"L{layer}_{i}" for layer in range(LAYERS) for i in range(WIDTH)]


class CrashLedgerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ledger: str
    work: float


def append_line(path: str, line: str) -> None:
    # one write() on an O_APPEND descriptor: a whole line or nothing, even under SIGKILL
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@NodeRegistry.register("crash_ledger")
class CrashLedgerNode(BaseNode):
    """Records its node id in the ledger file, then works for ``work`` seconds."""

    config_model = CrashLedgerConfig
    config: CrashLedgerConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        append_line(self.config.ledger, node_context.node_id)
        await asyncio.sleep(self.config.work)
        return NodeResult(output={"id": node_context.node_id})


def build_workflow(ledger: str) -> WorkflowDefinition:
    config = {"ledger": ledger, "work": WORK}
    nodes = [{"id": i, "type": "crash_ledger", "config": config} for i in node_ids()]
    edges = [
        {"source": f"L{layer}_{a}", "target": f"L{layer + 1}_{b}"}
        for layer in range(LAYERS - 1)
        for a in range(WIDTH)
        for b in range(WIDTH)
    ]
    return create_workflow({"id": "crash", "nodes": nodes, "edges": edges})


def executor(store: FileCheckpointStore) -> WorkflowExecutor:
    config = ExecutionConfig(enable_checkpoints=True, max_parallel_nodes=WIDTH)
    return WorkflowExecutor(config, checkpoint_store=store)


async def run(store: FileCheckpointStore, ledger: str, run_id: str) -> dict[str, Any]:
    result = await executor(store).execute(build_workflow(ledger), run_id=run_id)
    return {"status": result.status.value}


async def resume(store: FileCheckpointStore, run_id: str) -> dict[str, Any]:
    checkpoint = await store.latest(run_id)
    if checkpoint is None:
        return {"status": "no checkpoint"}
    summary: dict[str, Any] = {
        "checkpoint_id": checkpoint.id,
        "checkpoint_status": checkpoint.status,
        "completed": sorted(k for k, v in checkpoint.completed.items() if v.status == "succeeded"),
    }
    result = await executor(store).continue_execution(checkpoint)
    summary["status"] = result.status.value
    summary["outputs"] = sum(1 for r in result.node_results.values() if r.output is not None)
    final = await store.latest(run_id)
    assert final is not None
    summary["final_checkpoint"] = {"status": final.status, "completed": len(final.completed)}
    return summary


def main(argv: list[str]) -> int:
    mode, directory, ledger, run_id, summary_path = argv
    store = FileCheckpointStore(directory)
    if mode == "run":
        summary = asyncio.run(run(store, ledger, run_id))
    elif mode == "resume":
        summary = asyncio.run(resume(store, run_id))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    Path(summary_path).write_text(json.dumps(summary), encoding="utf-8")
    return 0 if summary["status"] == RunStatus.SUCCEEDED.value else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
