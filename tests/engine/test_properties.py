"""Property tests of the scheduler over random DAGs (hypothesis).

The executor runs under ``asyncio.run`` inside synchronous ``@given`` tests, one event
loop per example, so hypothesis and pytest-asyncio never share a loop.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engine import (
    EventType,
    ExecutionConfig,
    NodeStatus,
    RunResult,
    RunStatus,
    WorkflowExecutor,
    WorkflowValidationError,
    create_workflow,
)
from tests.engine.conftest import Probe, RecordingSink, fresh_probe, probe_node

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@dataclass(frozen=True)
class Dag:
    n: int
    #: (source, target, condition) with source < target; condition None, "true", "false"
    edges: tuple[tuple[int, int, str | None], ...]
    #: the order nodes are listed in the definition (the scheduler must not care)
    listing: tuple[int, ...]

    def definition(self, extra_edges: tuple[tuple[int, int], ...] = ()) -> dict[str, object]:
        edges: list[dict[str, object]] = []
        for source, target, condition in self.edges:
            edge: dict[str, object] = {"source": f"n{source}", "target": f"n{target}"}
            if condition is not None:
                edge["condition"] = condition
            edges.append(edge)
        for source, target in extra_edges:
            edges.append({"source": f"n{source}", "target": f"n{target}"})
        return {
            "id": "random",
            "nodes": [probe_node(f"n{i}") for i in self.listing],
            "edges": edges,
        }

    def parents(self, j: int) -> list[tuple[int, str | None]]:
        return [(s, c) for s, t, c in self.edges if t == j]

    def expected_to_run(self) -> list[bool]:
        """A node runs iff it is a root, or an edge from a parent that ran is taken."""
        runs = [False] * self.n
        for j in range(self.n):  # index order is a topological order
            parents = self.parents(j)
            runs[j] = not parents or any(runs[s] and c != "false" for s, c in parents)
        return runs


@st.composite
def dags(draw: st.DrawFn, conditional: bool = False) -> Dag:
    n = draw(st.integers(1, 40))
    conditions = st.sampled_from([None, "true", "false"]) if conditional else st.none()
    edges: list[tuple[int, int, str | None]] = []
    for target in range(1, n):
        sources = draw(st.sets(st.integers(0, target - 1), max_size=min(target, 4)))
        edges.extend((source, target, draw(conditions)) for source in sorted(sources))
    listing = draw(st.permutations(range(n)))
    return Dag(n, tuple(edges), tuple(listing))


def run(dag: Dag, max_parallel: int) -> tuple[RunResult, Probe, RecordingSink]:
    probe = fresh_probe()
    sink = RecordingSink()
    workflow = create_workflow(dag.definition())
    executor = WorkflowExecutor(
        ExecutionConfig(max_parallel_nodes=max_parallel), event_sinks=[sink]
    )
    result = asyncio.run(executor.execute(workflow))
    return result, probe, sink


@SETTINGS
@given(dag=dags(), max_parallel=st.integers(1, 8))
def test_every_node_runs_once_in_edge_order_within_the_parallel_limit(
    dag: Dag, max_parallel: int
) -> None:
    result, probe, sink = run(dag, max_parallel)
    assert result.status is RunStatus.SUCCEEDED
    names = [f"n{i}" for i in range(dag.n)]
    assert sorted(probe.starts()) == sorted(names)  # each exactly once
    assert sorted(probe.ends()) == sorted(names)
    for source, target, _ in dag.edges:
        assert probe.position("end", f"n{source}") < probe.position("start", f"n{target}")
    assert 1 <= probe.max_running <= max_parallel
    assert all(r.status is NodeStatus.SUCCEEDED for r in result.node_results.values())
    assert [e.seq for e in sink.events] == list(range(1, len(sink.events) + 1))
    started = [e.node_id for e in sink.of(EventType.NODE_STARTED)]
    assert sorted(n or "" for n in started) == sorted(names)


@SETTINGS
@given(dag=dags(conditional=True), max_parallel=st.integers(1, 8))
def test_a_node_runs_iff_a_taken_edge_leads_to_it(dag: Dag, max_parallel: int) -> None:
    result, probe, sink = run(dag, max_parallel)
    assert result.status is RunStatus.SUCCEEDED
    expected = dag.expected_to_run()
    should_run = {f"n{i}" for i in range(dag.n) if expected[i]}
    should_skip = {f"n{i}" for i in range(dag.n) if not expected[i]}
    assert sorted(probe.starts()) == sorted(should_run)
    assert {k for k, r in result.node_results.items() if r.status is NodeStatus.SUCCEEDED} == (
        should_run
    )
    assert {k for k, r in result.node_results.items() if r.status is NodeStatus.SKIPPED} == (
        should_skip
    )
    skipped_events = [e.node_id or "" for e in sink.of(EventType.NODE_SKIPPED)]
    assert sorted(skipped_events) == sorted(should_skip)  # one event per skipped node
    assert probe.max_running <= max_parallel
    for source, target, _ in dag.edges:
        if expected[source] and expected[target]:
            assert probe.position("end", f"n{source}") < probe.position("start", f"n{target}")


@st.composite
def dags_with_a_back_edge(draw: st.DrawFn) -> tuple[Dag, tuple[int, int]]:
    dag = draw(dags().filter(lambda d: bool(d.edges)))
    ancestors: list[set[int]] = [set() for _ in range(dag.n)]
    for source, target, _ in sorted(dag.edges, key=lambda e: e[1]):
        ancestors[target] |= ancestors[source] | {source}
    descendant = draw(st.sampled_from([j for j in range(dag.n) if ancestors[j]]))
    ancestor = draw(st.sampled_from(sorted(ancestors[descendant])))
    return dag, (descendant, ancestor)


@SETTINGS
@given(case=dags_with_a_back_edge())
def test_a_back_edge_is_rejected_as_a_cycle(case: tuple[Dag, tuple[int, int]]) -> None:
    dag, back_edge = case
    with pytest.raises(WorkflowValidationError) as info:
        create_workflow(dag.definition(extra_edges=(back_edge,)))
    cycles = [issue for issue in info.value.issues if issue.code == "cycle"]
    assert len(cycles) == 1
    assert "cycle" in cycles[0].message
    # the reported path is a closed walk along real edges, through the back edge
    path = cycles[0].message.split(": ", 1)[1].split(" -> ")
    assert path[0] == path[-1]
    steps = set(itertools.pairwise(path))
    edges = {(f"n{s}", f"n{t}") for s, t, _ in dag.edges}
    source, target = back_edge
    edges.add((f"n{source}", f"n{target}"))
    assert steps <= edges
    assert (f"n{source}", f"n{target}") in steps
    assert cycles[0].node == path[0]
