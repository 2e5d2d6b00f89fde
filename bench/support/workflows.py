"""The workflow shapes the benchmarks run, as raw definitions: chains, fan-outs and
independent roots of one kind of node."""

from __future__ import annotations

from typing import Any

Raw = dict[str, Any]

#: the pass-through node: its output is its input
NOOP: Raw = {"type": "noop"}


def chain_raw(n: int, node: Raw, workflow_id: str | None = None) -> Raw:
    """n0 -> n1 -> ... -> n(n-1); its id ``chain-<n>`` unless given."""
    return {
        "id": workflow_id or f"chain-{n}",
        "nodes": [{"id": f"n{i}", **node} for i in range(n)],
        "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)],
    }


def fanout_raw(n: int, node: Raw) -> Raw:
    """One root with an edge to each of the other n - 1 nodes."""
    return {
        "id": f"fanout-{n}",
        "nodes": [{"id": f"n{i}", **node} for i in range(n)],
        "edges": [{"source": "n0", "target": f"n{i}"} for i in range(1, n)],
    }


def roots_raw(n: int, node: Raw) -> Raw:
    """n nodes and no edges: every node is a root."""
    return {"id": f"roots-{n}", "nodes": [{"id": f"n{i}", **node} for i in range(n)]}
