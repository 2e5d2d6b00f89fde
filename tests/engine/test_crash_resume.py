"""Crash and resume for real: a child process running a 50-node workflow with a
``FileCheckpointStore`` is killed with SIGKILL mid-run; a new process resumes the run
from its latest checkpoint. A side-effect ledger the nodes write outside the engine
shows that every node ran and that nodes completed before that checkpoint ran exactly
once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.engine.crash_child import node_ids

ROOT = Path(__file__).parents[2]
CHILD = [sys.executable, "-m", "tests.engine.crash_child"]
#: a guard against a child that never gets going; never a timing assertion
DEADLINE = 30.0


def ledger_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1]  # complete lines only


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_a_killed_run_resumes_in_a_new_process_without_redoing_committed_nodes(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.txt"
    checkpoints = tmp_path / "ckpt"
    run_id = "crash-run"
    args = [str(checkpoints), str(ledger), run_id]

    with (tmp_path / "run.stderr").open("wb") as stderr:
        child = subprocess.Popen(
            [*CHILD, "run", *args, str(tmp_path / "run.json")],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + DEADLINE
            while len(ledger_lines(ledger)) < 20:
                if child.poll() is not None:
                    pytest.fail(
                        f"the child ended (rc={child.returncode}) before it was killed:\n"
                        + (tmp_path / "run.stderr").read_text(encoding="utf-8")
                    )
                if time.monotonic() > deadline:
                    pytest.fail("the child never got 20 nodes into the run")
                time.sleep(0.002)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(DEADLINE)
    assert child.returncode == -signal.SIGKILL
    before_kill = Counter(ledger_lines(ledger))
    assert not (tmp_path / "run.json").exists()  # it really did not finish
    # SIGKILL can land mid-write and leave a torn last checkpoint line (the store skips
    # it; test_checkpoints covers what happens to records appended after one)
    torn = not (checkpoints / f"{run_id}.jsonl").read_bytes().endswith(b"\n")

    resumed = subprocess.run(
        [*CHILD, "resume", *args, str(tmp_path / "resume.json")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary: dict[str, Any] = json.loads((tmp_path / "resume.json").read_text(encoding="utf-8"))
    assert summary["status"] == "succeeded"
    assert summary["checkpoint_status"] == "running"  # the last thing the killed run wrote

    ids = node_ids()
    runs = Counter(ledger_lines(ledger))
    committed = set(summary["completed"])
    # every node ran, and nothing else wrote to the ledger
    assert set(runs) == set(ids)
    assert len(ids) == 50
    # the resume really started from the middle of the run
    assert 0 < len(committed) < 50
    assert committed <= set(before_kill)
    # nodes the checkpoint recorded as completed ran exactly once
    assert {node_id: runs[node_id] for node_id in committed} == dict.fromkeys(committed, 1)
    # the rest ran once after the resume, plus once before it if they were in flight
    for node_id in set(ids) - committed:
        assert runs[node_id] == before_kill[node_id] + 1
    assert summary["outputs"] == 50
    if not torn:
        assert summary["final_checkpoint"] == {"status": "succeeded", "completed": 50}

    rerun = sorted(n for n in set(ids) - committed if before_kill[n])
    print(  # the numbers, for -s runs
        f"\nkilled after {sum(before_kill.values())} ledger lines; checkpoint "
        f"{summary['checkpoint_id']} had {len(committed)} completed; "
        f"{len(rerun)} in-flight nodes ran twice; ledger total {sum(runs.values())}; "
        f"torn last line: {torn}"
    )
