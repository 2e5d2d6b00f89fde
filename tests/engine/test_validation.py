"""``create_workflow`` / ``validate_workflow``: every rejection names the node or edge,
the field and the reason, and every problem of a definition is reported at once."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest

import app.engine.validation as validation_module
from app.engine import (
    BaseNode,
    ExecutionConfig,
    NodeRegistry,
    NodeSpec,
    ValidationIssue,
    WorkflowDefinition,
    WorkflowValidationError,
    create_workflow,
    validate_workflow,
)

Raw = dict[str, Any]

LIMIT_KNOBS = [
    "max_nodes",
    "max_edges",
    "max_expression_length",
    "max_nesting_depth",
    "max_definition_bytes",
]


# ------------------------------------------------------------------------------ helpers


def node(node_id: str, type_: str = "noop", **fields: Any) -> Raw:
    return {"id": node_id, "type": type_, **fields}


def edge(source: str, target: str, condition: str | None = None) -> Raw:
    raw: Raw = {"source": source, "target": target}
    if condition is not None:
        raw["condition"] = condition
    return raw


def workflow(*nodes: Raw, edges: Iterable[Raw] = (), **top: Any) -> Raw:
    return {"id": "wf", "nodes": list(nodes), "edges": list(edges), **top}


def of_code(issues: list[ValidationIssue], code: str) -> list[ValidationIssue]:
    return [issue for issue in issues if issue.code == code]


def the_one(issues: list[ValidationIssue], code: str) -> ValidationIssue:
    """The single issue with ``code`` (fails when there are none or several)."""
    found = of_code(issues, code)
    assert len(found) == 1, f"expected one {code!r} issue, got {issues!r}"
    return found[0]


def where(issues: list[ValidationIssue]) -> set[tuple[str, str | None, str | None, str | None]]:
    """(code, node, edge, field) of every issue, to compare 'what was reported'."""
    return {(issue.code, issue.node, issue.edge, issue.field) for issue in issues}


def cycle_path(issue: ValidationIssue) -> list[str]:
    match = re.search(r"cycle: (\S+(?: -> \S+)+)$", issue.message)
    assert match, f"no 'x -> y' path in {issue.message!r}"
    return match.group(1).split(" -> ")


def assert_same_cycle(path: list[str], cycle: list[str]) -> None:
    """``path`` is the closed walk ``cycle`` (e.g. a -> b -> c -> a), from any start."""
    assert path[0] == path[-1], f"{path} is not closed"
    walk = path[:-1]
    assert sorted(walk) == sorted(cycle), f"{path} is not the cycle {cycle}"
    start = cycle.index(walk[0])
    assert walk == cycle[start:] + cycle[:start], f"{path} does not follow the edges of {cycle}"


# ---------------------------------------------------------------------- valid definitions


VALID: Raw = workflow(
    node("fetch", "transform", config={"output": {"total": "input.total"}}),
    node("big", "transform", config={"output": {"vip": "nodes.fetch.output.total > 1000"}}),
    node("notify", "wait", config={"signal": "order-{{ input.order_id }}"}, fallback="log"),
    node("log", "transform", config={"output": {"logged": "true"}}),
    edges=[edge("fetch", "big"), edge("big", "notify", "nodes.big.output.vip")],
    config={"max_parallel_nodes": 4, "node_timeout": 30},
    output={"vip": "nodes.big.output.vip"},
)


def _as_yaml(raw: Raw) -> str:
    # JSON is a YAML subset, but a flow-style first line would be routed to the JSON
    # parser; a leading comment forces the YAML path while keeping the content exact.
    return "# yaml\n" + json.dumps(raw, indent=2)


@pytest.mark.parametrize(
    "make_source",
    [
        pytest.param(lambda raw: raw, id="dict"),
        pytest.param(json.dumps, id="json-text"),
        pytest.param(lambda raw: json.dumps(raw).encode(), id="json-bytes"),
        pytest.param(lambda raw: "\n  " + json.dumps(raw), id="json-leading-space"),
        pytest.param(_as_yaml, id="yaml-text"),
        pytest.param(WorkflowDefinition.model_validate, id="definition"),
    ],
)
def test_a_valid_definition_is_accepted_with_the_same_nodes(
    make_source: Callable[[Raw], Any],
) -> None:
    source = make_source(VALID)
    assert validate_workflow(source) == []
    definition = create_workflow(source)
    assert isinstance(definition, WorkflowDefinition)
    assert definition.nodes == [NodeSpec.model_validate(n) for n in VALID["nodes"]]
    assert [(e.source, e.target, e.condition) for e in definition.edges] == [
        ("fetch", "big", None),
        ("big", "notify", "nodes.big.output.vip"),
    ]
    assert definition.output == VALID["output"]
    assert definition.config == VALID["config"]


def test_yaml_in_block_style_is_accepted() -> None:
    text = """
id: from-yaml
nodes:
  - id: a
    type: transform
    config:
      output:
        doubled: "input.n * 2"
  - id: b
    type: noop
edges:
  - source: a
    target: b
"""
    definition = create_workflow(text)
    assert definition.id == "from-yaml"
    assert [(n.id, n.type) for n in definition.nodes] == [("a", "transform"), ("b", "noop")]
    assert definition.nodes[0].config == {"output": {"doubled": "input.n * 2"}}


def test_the_yaml_loader_is_the_flowcore_formats_entry_point() -> None:
    (yaml_ep,) = entry_points(group="flowcore.formats", name="yaml")
    loader = yaml_ep.load()
    assert loader("a: [1, 2]") == {"a": [1, 2]}


def test_yaml_text_without_a_formats_entry_point_is_a_parse_issue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The engine has no YAML dependency of its own: without the plugin, YAML is refused.
    monkeypatch.setattr(validation_module, "entry_points", lambda **_: [])
    (issue,) = validate_workflow("id: x\nnodes: []\n")
    assert issue.code == "parse"
    assert "flowcore.formats" in issue.message
    # JSON needs no plugin
    assert validate_workflow('{"id": "x", "nodes": [{"id": "a", "type": "noop"}]}') == []


def test_a_valid_fallback_chain_and_nested_bodies_are_accepted() -> None:
    definition = create_workflow(
        workflow(
            node("a", fallback="b"),
            node("b", fallback="c"),
            node("c"),
            node(
                "m",
                "map",
                config={
                    "items": "input.items",
                    "workflow": workflow(
                        node("x", "transform", config={"output": {"y": "item * 2"}}),
                        node(
                            "inner",
                            "loop",
                            config={"while": "last.n < 3", "workflow": workflow(node("z"))},
                        ),
                        edges=[edge("x", "inner")],
                    ),
                },
            ),
            node("one", "map", config={"items": "[1, 2]", "node": node("n")}),
        )
    )
    assert [n.id for n in definition.nodes] == ["a", "b", "c", "m", "one"]


# ------------------------------------------------------------------------ graph structure


def test_duplicate_node_ids_are_rejected() -> None:
    issues = validate_workflow(workflow(node("a"), node("b"), node("a")))
    issue = the_one(issues, "duplicate_id")
    assert (issue.node, issue.field) == ("a", "id")
    assert "duplicate" in issue.message


def test_edges_to_and_from_unknown_nodes_are_rejected_naming_the_edge_and_end() -> None:
    issues = validate_workflow(
        workflow(node("a"), node("b"), edges=[edge("a", "ghost"), edge("phantom", "b")])
    )
    assert where(issues) == {
        ("unknown_node", None, "a->ghost", "target"),
        ("unknown_node", None, "phantom->b", "source"),
    }
    messages = {issue.edge: issue.message for issue in issues}
    assert "'ghost'" in messages["a->ghost"]
    assert "'phantom'" in messages["phantom->b"]


def test_a_duplicate_edge_is_rejected() -> None:
    issues = validate_workflow(workflow(node("a"), node("b"), edges=[edge("a", "b")] * 2))
    assert the_one(issues, "duplicate_edge").edge == "a->b"


@pytest.mark.parametrize(
    ("nodes", "edges", "cycle"),
    [
        pytest.param(["a", "b"], [("a", "b"), ("b", "a")], ["a", "b"], id="2-cycle"),
        pytest.param(
            ["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")], ["a", "b", "c"], id="3-cycle"
        ),
        pytest.param(["a"], [("a", "a")], ["a"], id="self-loop"),
        pytest.param(
            ["start", "x", "y", "z", "end"],
            [("start", "x"), ("x", "y"), ("y", "z"), ("z", "x"), ("start", "end")],
            ["x", "y", "z"],
            id="behind-a-valid-prefix",
        ),
    ],
)
def test_a_cycle_is_rejected_with_its_path(
    nodes: list[str], edges: list[tuple[str, str]], cycle: list[str]
) -> None:
    issues = validate_workflow(
        workflow(*(node(n) for n in nodes), edges=[edge(s, t) for s, t in edges])
    )
    issue = the_one(issues, "cycle")
    path = cycle_path(issue)
    assert_same_cycle(path, cycle)
    assert issue.node in cycle
    assert len(issues) == 1  # the prefix and the exit node are fine


def test_the_cycle_path_is_printed_as_arrows() -> None:
    (issue,) = validate_workflow(workflow(node("a"), edges=[edge("a", "a")]))
    assert issue.message.endswith("a -> a")


def test_every_disjoint_cycle_is_reported() -> None:
    issues = validate_workflow(
        workflow(
            node("a"),
            node("b"),
            node("c"),
            node("d"),
            edges=[edge("a", "b"), edge("b", "a"), edge("c", "d"), edge("d", "c")],
        )
    )
    cycles = of_code(issues, "cycle")
    assert len(cycles) == 2
    paths = sorted(sorted(cycle_path(issue)[:-1]) for issue in cycles)
    assert paths == [["a", "b"], ["c", "d"]]


# ------------------------------------------------------------------ node types and configs


def test_an_unknown_node_type_is_rejected_listing_the_known_types() -> None:
    issue = the_one(validate_workflow(workflow(node("a"), node("b", "teleport"))), "unknown_type")
    assert (issue.node, issue.field) == ("b", "type")
    assert "'teleport'" in issue.message
    for known in ("noop", "transform", "map", "loop"):
        assert known in issue.message


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        pytest.param(node("n", "transform"), "config.output", "required", id="transform-no-output"),
        pytest.param(
            node("n", "delay", config={"seconds": 1, "sleepy": True}),
            "config.sleepy",
            "extra",
            id="delay-unknown-key",
        ),
        pytest.param(
            node(
                "n",
                "map",
                config={"items": "[1]", "node": node("x"), "workflow": workflow(node("y"))},
            ),
            "config",
            "exactly one",
            id="map-node-and-workflow",
        ),
        pytest.param(
            node("n", "map", config={"items": "[1]"}), "config", "exactly one", id="map-no-body"
        ),
        pytest.param(
            node("n", "fail", config={"times": 0}),
            "config.times",
            "greater than",
            id="fail-times-0",
        ),
        pytest.param(
            node("n", "wait", config={}), "config.signal", "required", id="wait-no-signal"
        ),
        pytest.param(
            node("n", "loop", config={"while": "true", "workflow": {}, "max_iterations": 0}),
            "config.max_iterations",
            "greater than",
            id="loop-zero-iterations",
        ),
        pytest.param(
            node("n", "noop", config={"anything": 1}), "config.anything", "extra", id="noop-config"
        ),
    ],
)
def test_a_config_failing_its_node_types_model_is_rejected(
    spec: Raw, field: str, reason: str
) -> None:
    issues = validate_workflow(workflow(node("ok"), spec))
    issue = the_one(issues, "config")
    assert issue.node == "n"
    assert issue.field is not None
    assert issue.field.startswith(field)
    assert reason in issue.message.lower()
    assert len(issues) == 1


# ------------------------------------------------------------------------------ expressions


@pytest.mark.parametrize(
    ("definition", "node_id", "edge_label", "field", "line", "column"),
    [
        pytest.param(
            workflow(node("a"), node("b"), edges=[edge("a", "b", "nodes.a.output ==")]),
            None,
            "a->b",
            "condition",
            1,
            18,
            id="edge-condition",
        ),
        pytest.param(
            workflow(node("t", "transform", config={"output": {"x": "input.n +* 2"}})),
            "t",
            None,
            "config.output.x",
            1,
            10,
            id="transform-output",
        ),
        pytest.param(
            workflow(node("a"), output={"result": "input.("}),
            None,
            None,
            "output.result",
            1,
            7,
            id="workflow-output",
        ),
        pytest.param(
            workflow(node("w", "wait", config={"signal": "order-{{ input. }}-ready"})),
            "w",
            None,
            "config.signal",
            1,
            7,
            id="template-in-string-config",
        ),
        pytest.param(
            workflow(
                node(
                    "s",
                    "subworkflow",
                    config={"workflow_id": "child", "version": 1, "input": {"q": "[1,"}},
                )
            ),
            "s",
            None,
            "config.input.q",
            1,
            4,
            id="subworkflow-input",
        ),
        pytest.param(
            workflow(node("m", "map", config={"items": "input.items[", "node": node("x")})),
            "m",
            None,
            "config.items",
            1,
            13,
            id="map-items",
        ),
        pytest.param(
            workflow(
                node("l", "loop", config={"while": "last.n <", "workflow": workflow(node("x"))})
            ),
            "l",
            None,
            "config.while",
            1,
            9,
            id="loop-while",
        ),
        pytest.param(
            workflow(node("d", "delay", config={"seconds": "1 +\n  )"})),
            "d",
            None,
            "config.seconds",
            2,
            3,
            id="multi-line-delay-seconds",
        ),
    ],
)
def test_an_expression_that_does_not_compile_is_rejected_with_its_position(
    definition: Raw,
    node_id: str | None,
    edge_label: str | None,
    field: str,
    line: int,
    column: int,
) -> None:
    issue = the_one(validate_workflow(definition), "expression")
    assert (issue.node, issue.edge, issue.field) == (node_id, edge_label, field)
    assert f"line {line}, column {column}" in issue.message


class _FreeConfigNode(BaseNode):
    """A node type without a config model: its whole config is template text."""


@pytest.fixture
def free_config_type() -> Iterator[str]:
    name = "test_validation_free_config"
    NodeRegistry.register(name)(_FreeConfigNode)
    yield name
    NodeRegistry.unregister(name)


def test_templates_nested_in_config_lists_and_maps_are_checked(free_config_type: str) -> None:
    config = {
        "url": "https://x.example/{{ input.id }}",
        "headers": {"X-Id": "{{ input.id }}", "X-Bad": "id={{ input.( }}"},
        "messages": [{"content": "fine"}, {"content": "{{ vars.a }} and {{ ] }}"}],
    }
    issues = validate_workflow(workflow(node("s", free_config_type, config=config)))
    assert where(issues) == {
        ("expression", "s", None, "config.headers.X-Bad"),
        ("expression", "s", None, "config.messages[1].content"),
    }
    positions = {issue.field: issue.message for issue in issues}
    assert "line 1, column 7" in positions["config.headers.X-Bad"]
    assert "line 1, column 1" in positions["config.messages[1].content"]


def test_a_template_holding_a_nested_map_literal_is_one_expression() -> None:
    definition = workflow(node("w", "wait", config={"signal": "{{ {'a': {'b': 'go'}}.a.b }}"}))
    assert validate_workflow(definition) == []


def test_raw_cel_config_fields_are_not_mistaken_for_templates() -> None:
    # transform outputs are raw CEL; a `{{` inside one is CEL text, checked as CEL only
    issues = validate_workflow(
        workflow(node("t", "transform", config={"output": {"m": "{'a': {'b': 1}}"}}))
    )
    assert issues == []


# ------------------------------------------------------------------------------- fallbacks


def test_a_fallback_to_an_unknown_node_is_rejected() -> None:
    issue = the_one(validate_workflow(workflow(node("a", fallback="ghost"))), "unknown_node")
    assert (issue.node, issue.field) == ("a", "fallback")
    assert "'ghost'" in issue.message


@pytest.mark.parametrize(
    ("nodes", "loop"),
    [
        pytest.param([node("a", fallback="b"), node("b", fallback="a")], ["a", "b"], id="a-b-a"),
        pytest.param([node("a", fallback="a")], ["a"], id="self-fallback"),
        pytest.param(
            [node("a", fallback="b"), node("b", fallback="c"), node("c", fallback="b")],
            ["b", "c"],
            id="chain-into-a-loop",
        ),
    ],
)
def test_a_looping_fallback_chain_is_rejected(nodes: list[Raw], loop: list[str]) -> None:
    issues = validate_workflow(workflow(*nodes))
    loops = of_code(issues, "fallback_cycle")
    assert loops, issues
    assert all(issue.code == "fallback_cycle" for issue in issues)
    for issue in loops:
        assert issue.field == "fallback"
        assert issue.node in loop
        path = issue.message.rsplit(": ", 1)[1].split(" -> ")
        assert_same_cycle(path, loop)


# ----------------------------------------------------------------------------------- limits


def test_max_nodes_is_enforced_and_inclusive() -> None:
    limits = ExecutionConfig(max_nodes=3)
    assert validate_workflow(workflow(node("a"), node("b"), node("c")), limits=limits) == []
    issue = the_one(
        validate_workflow(workflow(node("a"), node("b"), node("c"), node("d")), limits=limits),
        "limit",
    )
    assert "max_nodes=3" in issue.message
    with pytest.raises(WorkflowValidationError):
        create_workflow(workflow(node("a"), node("b"), node("c"), node("d")), limits=limits)


def test_max_nodes_counts_the_nodes_of_nested_bodies() -> None:
    body = workflow(node("x"), node("y"))
    definition = workflow(node("a"), node("m", "map", config={"items": "[1]", "workflow": body}))
    assert validate_workflow(definition, limits=ExecutionConfig(max_nodes=4)) == []
    issue = the_one(validate_workflow(definition, limits=ExecutionConfig(max_nodes=3)), "limit")
    assert "max_nodes=3" in issue.message


def test_max_edges_is_enforced() -> None:
    definition = workflow(node("a"), node("b"), node("c"), edges=[edge("a", "b"), edge("b", "c")])
    assert validate_workflow(definition, limits=ExecutionConfig(max_edges=2)) == []
    issue = the_one(validate_workflow(definition, limits=ExecutionConfig(max_edges=1)), "limit")
    assert "max_edges=1" in issue.message


def test_max_expression_length_is_enforced_naming_where() -> None:
    definition = workflow(
        node("t", "transform", config={"output": {"short": "1", "long": "1 + 2 + 3"}})
    )
    assert validate_workflow(definition, limits=ExecutionConfig(max_expression_length=9)) == []
    issue = the_one(
        validate_workflow(definition, limits=ExecutionConfig(max_expression_length=8)), "limit"
    )
    assert (issue.node, issue.field) == ("t", "config.output.long")
    assert "max_expression_length" in issue.message


def test_max_value_depth_bounds_json_nesting() -> None:
    deep: Any = "leaf"
    for _ in range(10):
        deep = {"k": deep}
    # the definition object, then `vars`, then the ten levels of `deep`: 12 deep
    definition = workflow(node("a"), vars={"deep": deep})
    assert validate_workflow(definition, limits=ExecutionConfig(max_value_depth=12)) == []
    issue = the_one(
        validate_workflow(definition, limits=ExecutionConfig(max_value_depth=11)), "limit"
    )
    assert "max_value_depth=11" in issue.message
    assert issue.field == "vars.deep.k.k.k.k.k.k.k.k.k"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "not a JSON number"),
        (float("inf"), "not a JSON number"),
        ("a\x00b", "NUL"),
        ("\ud800", "surrogate"),
    ],
)
def test_values_no_store_can_hold_are_refused_naming_the_field(value: Any, reason: str) -> None:
    definition = workflow(node("a", "delay", config={"seconds": value}))
    issue = the_one(validate_workflow(definition), "value")
    assert issue.field == "nodes[0].config.seconds"
    assert reason in issue.message


def test_a_workflow_needs_a_node_and_an_id_of_the_documented_form() -> None:
    assert where(validate_workflow({"id": "x", "nodes": []})) == {("schema", None, None, "nodes")}
    for bad in ("a/b", "-x", "a b", "x" * 129, "a\nb", ""):
        issues = validate_workflow(workflow(node("a"), id=bad))
        assert [issue.field for issue in issues] == ["id"], bad
    for good in ("a", "order-pipeline", "v1.2_x", "9" * 128):
        assert validate_workflow(workflow(node("a"), id=good)) == [], good


def test_max_nesting_depth_bounds_nested_body_workflows() -> None:
    body: Raw = workflow(node("leaf"))
    for level in range(3):
        body = workflow(node(f"l{level}", "loop", config={"while": "false", "workflow": body}))
    assert validate_workflow(body) == []
    issues = validate_workflow(body, limits=ExecutionConfig(max_nesting_depth=3))
    assert issues
    assert {issue.code for issue in issues} == {"limit"}
    assert all("nest" in issue.message for issue in issues)


def test_max_definition_bytes_is_enforced_for_objects_and_text() -> None:
    definition = workflow(node("a"))
    size = len(json.dumps(definition, separators=(",", ":")).encode())
    assert validate_workflow(definition, limits=ExecutionConfig(max_definition_bytes=size)) == []
    for source in (definition, json.dumps(definition)):
        issue = the_one(
            validate_workflow(source, limits=ExecutionConfig(max_definition_bytes=size - 1)),
            "limit",
        )
        assert "max_definition_bytes" in issue.message


@pytest.mark.parametrize("knob", LIMIT_KNOBS)
def test_a_workflows_own_config_cannot_set_a_limit(knob: str) -> None:
    issues = validate_workflow(workflow(node("a"), config={knob: 1_000_000_000}))
    issue = the_one(issues, "config")
    assert issue.field == f"config.{knob}"
    assert knob in issue.message


def test_a_workflows_config_rejects_unknown_and_invalid_knobs_at_once() -> None:
    issues = validate_workflow(
        workflow(
            node("a"),
            config={"max_parallel_nodes": 0, "turbo": True, "max_nodes": 5, "node_timeout": 5},
        )
    )
    assert {issue.field for issue in of_code(issues, "config")} == {
        "config.max_parallel_nodes",
        "config.turbo",
        "config.max_nodes",
    }
    assert "'turbo'" in next(i.message for i in issues if i.field == "config.turbo")


def test_a_workflows_config_cannot_set_the_error_handler() -> None:
    # error_handler is a Python callable: only embedding code can set it
    issue = the_one(validate_workflow(workflow(node("a"), config={"error_handler": "x"})), "config")
    assert issue.field == "config.error_handler"


def test_a_limit_given_by_the_caller_is_not_relaxed_by_the_definition() -> None:
    definition = workflow(node("a"), node("b"), config={"max_nodes": 100})
    issues = validate_workflow(definition, limits=ExecutionConfig(max_nodes=1))
    assert {issue.code for issue in issues} == {"limit", "config"}


# ----------------------------------------------------------------------------------- schema


def test_schema_errors_name_the_node_and_field() -> None:
    issues = validate_workflow(
        {
            "id": "wf",
            "colour": "blue",
            "nodes": [
                {"id": "typeless"},
                {"id": "9lives", "type": "noop"},
                {"id": "slow", "type": "noop", "timeout": -1},
                {"id": "chatty", "type": "noop", "colour": "red"},
                {"type": "noop"},
            ],
        }
    )
    assert where(issues) == {
        ("schema", None, None, "colour"),
        ("schema", "typeless", None, "type"),
        ("schema", "9lives", None, "id"),
        ("schema", "slow", None, "timeout"),
        ("schema", "chatty", None, "colour"),
        ("schema", "#4", None, "id"),
    }
    assert "pattern" in next(i.message for i in issues if i.node == "9lives")


def test_schema_errors_in_edges_name_the_edge() -> None:
    issues = validate_workflow(
        workflow(
            node("a"), node("b"), edges=[{"source": "a"}, {"source": "a", "target": "b", "x": 1}]
        )
    )
    assert where(issues) == {
        ("schema", None, "a->None", "target"),
        ("schema", None, "a->b", "x"),
    }


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        pytest.param({"nodes": {"a": "noop"}}, "nodes", id="nodes-not-a-list"),
        pytest.param({"nodes": [], "edges": "a->b"}, "edges", id="edges-not-a-list"),
    ],
)
def test_nodes_and_edges_must_be_lists(definition: Raw, field: str) -> None:
    issue = the_one(validate_workflow(definition), "schema")
    assert issue.field == field


# --------------------------------------------------------------------------- nested bodies


def test_problems_in_a_map_workflow_body_are_reported_with_a_prefixed_node_name() -> None:
    body = workflow(
        node("x", "teleport"),
        node("y", "transform"),
        node("z", "transform", config={"output": {"v": "item +"}}),
        edges=[edge("x", "ghost")],
    )
    issues = validate_workflow(
        workflow(node("m", "map", config={"items": "[1, 2]", "workflow": body}))
    )
    assert where(issues) == {
        ("unknown_type", "m.workflow/x", None, "type"),
        ("config", "m.workflow/y", None, "config.output"),
        ("expression", "m.workflow/z", None, "config.output.v"),
        ("unknown_node", None, "m.workflow/x->ghost", "target"),
    }


def test_problems_in_a_map_single_node_body_are_reported_with_a_prefixed_node_name() -> None:
    issues = validate_workflow(
        workflow(node("m", "map", config={"items": "[1]", "node": node("x", "teleport")}))
    )
    assert where(issues) == {("unknown_type", "m.node/x", None, "type")}


def test_a_cycle_in_a_loop_body_prints_the_prefixed_path() -> None:
    body = workflow(node("x"), node("y"), edges=[edge("x", "y"), edge("y", "x")])
    issues = validate_workflow(
        workflow(node("l", "loop", config={"while": "false", "workflow": body}))
    )
    issue = the_one(issues, "cycle")
    assert issue.node in {"l.workflow/x", "l.workflow/y"}
    assert_same_cycle(cycle_path(issue), ["l.workflow/x", "l.workflow/y"])


def test_bodies_nested_in_bodies_get_every_prefix() -> None:
    inner = workflow(node("deep", "fail", config={"times": 0}))
    middle = workflow(node("l", "loop", config={"while": "false", "workflow": inner}))
    issues = validate_workflow(
        workflow(node("m", "map", config={"items": "[1]", "workflow": middle}))
    )
    assert where(issues) == {("config", "m.workflow/l.workflow/deep", None, "config.times")}


def test_the_same_node_id_in_a_body_and_its_parent_is_not_a_duplicate() -> None:
    body = workflow(node("m"))
    assert (
        validate_workflow(workflow(node("m", "map", config={"items": "[1]", "workflow": body})))
        == []
    )


# ---------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"id": "x", "nodes": [', id="truncated"),
        pytest.param('{"id": "x",, "nodes": []}', id="double-comma"),
        pytest.param(b'{"id": "x" "nodes": []}', id="bytes-missing-comma"),
    ],
)
def test_broken_json_text_is_a_parse_issue(text: str | bytes) -> None:
    (issue,) = validate_workflow(text)
    assert issue.code == "parse"
    assert "line 1 column" in issue.message  # json.JSONDecodeError's position


def test_broken_yaml_text_is_a_parse_issue() -> None:
    (issue,) = validate_workflow("id: [unclosed\nnodes: []\n")
    assert issue.code == "parse"


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("[1, 2]", id="json-list"),
        pytest.param("null", id="json-null"),
        pytest.param("just some words", id="yaml-scalar"),
    ],
)
def test_a_definition_that_is_not_an_object_is_rejected(source: str) -> None:
    (issue,) = validate_workflow(source)
    assert issue.code == "type"


def test_create_workflow_raises_with_the_same_issues_validate_workflow_returns() -> None:
    definition = workflow(node("a", "teleport"), node("a"), edges=[edge("a", "ghost")])
    issues = validate_workflow(definition)
    with pytest.raises(WorkflowValidationError) as caught:
        create_workflow(definition)
    assert caught.value.issues == issues
    assert len(issues) == 3


# --------------------------------------------------------------------- all errors at once


def test_every_distinct_problem_of_a_definition_is_reported_at_once() -> None:
    definition = workflow(
        node("a"),
        node("a"),
        node("b", "teleport"),
        node("c", "transform"),
        node("d", fallback="ghost"),
        node("e", "transform", config={"output": {"x": "1 +"}}),
        node("f", "delay", config={"seconds": 1, "sleepy": True}),
        node("g", "wait", config={"signal": "{{ ) }}"}),
        edges=[edge("a", "nowhere"), edge("b", "c", "((")],
        config={"turbo": True, "max_nodes": 10},
        output={"o": ")"},
    )
    issues = validate_workflow(definition)
    assert where(issues) == {
        ("config", None, None, "config.turbo"),
        ("config", None, None, "config.max_nodes"),
        ("duplicate_id", "a", None, "id"),
        ("unknown_node", None, "a->nowhere", "target"),
        ("expression", None, "b->c", "condition"),
        ("unknown_node", "d", None, "fallback"),
        ("unknown_type", "b", None, "type"),
        ("config", "c", None, "config.output"),
        ("expression", "e", None, "config.output.x"),
        ("config", "f", None, "config.sleepy"),
        ("expression", "g", None, "config.signal"),
        ("expression", None, None, "output.o"),
    }


def test_a_node_schema_error_does_not_hide_the_other_nodes_problems() -> None:
    issues = validate_workflow(
        workflow(
            {"id": "typeless"},
            node("b", "teleport"),
            node("c", "transform"),
        )
    )
    assert where(issues) == {
        ("schema", "typeless", None, "type"),
        ("unknown_type", "b", None, "type"),
        ("config", "c", None, "config.output"),
    }


def test_an_unknown_top_level_key_does_not_hide_graph_problems() -> None:
    issues = validate_workflow(
        workflow(
            node("a"),
            node("b"),
            edges=[edge("a", "b"), edge("b", "a"), edge("a", "ghost")],
            colour="blue",
        )
    )
    assert {issue.code for issue in issues} == {"schema", "cycle", "unknown_node"}


def test_a_bad_edge_does_not_hide_duplicate_ids_or_bad_fallbacks() -> None:
    issues = validate_workflow(
        workflow(node("a"), node("a"), node("c", fallback="ghost"), edges=[{"source": "a"}])
    )
    assert where(issues) == {
        ("schema", None, "a->None", "target"),
        ("duplicate_id", "a", None, "id"),
        ("unknown_node", "c", None, "fallback"),
    }


# --------------------------------------------------------------- the error and its message


def test_the_error_message_lists_every_issue_with_where_and_why() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        create_workflow(workflow(node("a", "teleport"), edges=[edge("a", "ghost")]))
    message = str(caught.value)
    assert "2 issue(s)" in message
    assert "node 'a', field 'type': unknown node type 'teleport'" in message
    assert "edge a->ghost, field 'target': unknown node 'ghost'" in message
    assert "more" not in message


def test_the_error_message_truncates_after_twenty_issues_but_keeps_all() -> None:
    definition = workflow(*(node(f"n{i}", "teleport") for i in range(25)))
    with pytest.raises(WorkflowValidationError) as caught:
        create_workflow(definition)
    error = caught.value
    assert len(error.issues) == 25
    assert {issue.node for issue in error.issues} == {f"n{i}" for i in range(25)}
    lines = str(error).splitlines()
    assert lines[0] == "invalid workflow definition (25 issue(s)):"
    listed = [line for line in lines if line.startswith("  - ")]
    assert len(listed) == 20
    assert lines[-1] == "  ... and 5 more"


def test_exactly_twenty_issues_are_listed_without_a_more_line() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        create_workflow(workflow(*(node(f"n{i}", "teleport") for i in range(20))))
    assert len(str(caught.value).splitlines()) == 21
    assert "more" not in str(caught.value)


def test_a_validation_issue_renders_its_location_and_serialises() -> None:
    issue = ValidationIssue("bad", node="n", edge="a->b", field="config.x", code="config")
    assert str(issue) == "node 'n', edge a->b, field 'config.x': bad"
    assert str(ValidationIssue("bare")) == "bare"
    assert issue.to_dict() == {
        "code": "config",
        "node": "n",
        "edge": "a->b",
        "field": "config.x",
        "message": "bad",
    }
