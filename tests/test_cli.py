"""The ``flowcore`` command line, in-process and as a real subprocess."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main

ROOT = Path(__file__).resolve().parents[1]
ORDER = str(ROOT / "examples" / "order-pipeline.json")
ORDER_INPUT = json.dumps(
    {
        "order_id": "A-1001",
        "items": [{"sku": "pen", "qty": 3, "price": 2.5}, {"sku": "ink", "qty": 1, "price": 12.0}],
    }
)


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def final_json(text: str) -> object:
    """The pretty-printed output that follows the event lines."""
    start = text.index("\n{") + 1 if not text.startswith("{") else 0
    return json.loads(text[start:])


def test_run_prints_every_event_then_the_output() -> None:
    code, text = run_cli("run", ORDER, "--input", ORDER_INPUT)
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["1", "run.started"]
    seqs = [int(line.split()[0]) for line in lines if line[:5].strip().isdigit()]
    assert seqs == list(range(1, len(seqs) + 1))
    assert any("lines[1]/price" in line for line in lines)  # body events are shown too
    assert any(line.split()[1] == "run.succeeded" for line in lines if line[:5].strip().isdigit())
    output = final_json(text)
    assert output == {
        "order": {"order_id": "A-1001", "lines": 2, "needs_review": True},
        "lines": [{"sku": "pen", "total": 7.5}, {"sku": "ink", "total": 12.0}],
        "route": "manual review",
    }


def test_run_takes_the_other_branch_for_a_small_order() -> None:
    small = json.dumps({"order_id": "B-7", "items": [{"sku": "pen", "qty": 1, "price": 2.5}]})
    code, text = run_cli("run", ORDER, "--input", small, "--quiet")
    assert code == 0
    output = final_json(text)
    assert isinstance(output, dict)
    assert output["route"] == "fast track"


def test_bad_input_is_rejected_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli("run", ORDER, "--input", '{"order_id": "x"}')
    assert code == 2
    assert "missing required property 'items'" in capsys.readouterr().err


def test_a_failing_run_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flow = tmp_path / "fail.yaml"
    flow.write_text("id: f\nnodes:\n  - id: boom\n    type: fail\n    config: {message: broken}\n")
    code, text = run_cli("run", str(flow))
    assert code == 1
    assert "node.failed" in text
    assert "broken" in capsys.readouterr().err


def test_validate_reports_every_problem(tmp_path: Path) -> None:
    flow = tmp_path / "bad.json"
    flow.write_text(
        json.dumps(
            {
                "id": "bad",
                "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "nope"}],
                "edges": [{"source": "a", "target": "ghost"}],
            }
        )
    )
    code, text = run_cli("validate", str(flow))
    assert code == 2
    assert "unknown node 'ghost'" in text
    assert "unknown node type 'nope'" in text
    assert run_cli("validate", ORDER) == (0, "valid\n")


def test_nodes_lists_the_builtin_types() -> None:
    code, text = run_cli("nodes")
    assert code == 0
    listed = {line.split()[0] for line in text.splitlines()}
    assert {"noop", "transform", "delay", "fail", "http", "map", "loop", "subworkflow", "wait"} <= (
        listed
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "asyncio"),
        (["--loop", "uvloop"], "uvloop"),
        (["--config", '{"event_loop_policy": "uvloop"}'], "uvloop"),
    ],
)
def test_the_event_loop_policy_is_honoured(extra: list[str], expected: str) -> None:
    # a real process: the event loop policy is process-wide
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "run",
            ORDER,
            "--input",
            ORDER_INPUT,
            "-q",
            "--loop-check",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"event loop: {expected}")


def test_a_workflows_own_config_can_ask_for_uvloop(tmp_path: Path) -> None:
    flow = tmp_path / "uv.json"
    flow.write_text(
        json.dumps(
            {
                "id": "uv",
                "config": {"event_loop_policy": "uvloop"},
                "nodes": [{"id": "a", "type": "noop"}],
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", str(flow), "-q", "--loop-check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("event loop: uvloop")
