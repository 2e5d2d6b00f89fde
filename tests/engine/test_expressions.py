"""CEL expressions and ``{{ }}`` templates (``app.engine.expressions``)."""

from __future__ import annotations

import io
import json
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest

from app.engine import ExpressionCompileError, ExpressionError, ExpressionEvaluationError
from app.engine.expressions import (
    Expression,
    Scope,
    Template,
    ValueTemplate,
    compile_expression,
    compile_template,
    template_expressions,
)

APP = Path(__file__).resolve().parents[2] / "app"


def make_scope(nodes: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Scope:
    return Scope(
        input={"n": 2, "name": "ada", "items": [1, 2, 3], "flag": True},
        vars={"greeting": "hi", "limit": 10},
        nodes=nodes if nodes is not None else {"a": {"n": 5}, "b-c": {"n": 7}, "z": [1, 2]},
        run={"id": "run-1", "workflow_id": "wf"},
        extra=extra,
    )


def evaluate(source: str, scope: Scope | None = None) -> Any:
    return compile_expression(source).evaluate(scope or make_scope())


def unpruned(expression: Expression) -> Expression:
    """The same compiled program, evaluated over every node (no pruning)."""
    return Expression(expression.source, expression.program, None)


# -------------------------------------------------------------------------------- compiling


def test_compiling_is_cached_per_source_text() -> None:
    first = compile_expression("input.n + 1")
    # a different str object with the same text hits the cache too
    same_text = "".join(["input.n", " + 1"])
    assert compile_expression(same_text) is first
    assert compile_expression("input.n + 2") is not first


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [
        pytest.param(")", 1, 1, id="first-character"),
        pytest.param("1 +", 1, 4, id="end-of-input"),
        pytest.param("input.(", 1, 7, id="bad-selector"),
        pytest.param("1 +\n (2", 2, 4, id="second-line"),
        pytest.param("[1,\n 2,\n   )", 3, 4, id="third-line"),
        pytest.param("   ", 1, 1, id="blank"),
    ],
)
def test_a_compile_error_carries_a_one_based_position(source: str, line: int, column: int) -> None:
    with pytest.raises(ExpressionCompileError) as caught:
        compile_expression(source)
    error = caught.value
    assert (error.line, error.column) == (line, column)
    assert error.source == source
    assert error.reason
    assert f"at line {line}, column {column}" in str(error)
    assert isinstance(error, ExpressionError)


def test_a_name_outside_the_scope_is_a_compile_error() -> None:
    with pytest.raises(ExpressionCompileError) as caught:
        compile_expression("input.n +\n  secret_key")
    assert (caught.value.line, caught.value.column) == (2, 3)
    assert "secret_key" in str(caught.value)


def test_a_failed_compile_is_not_cached_as_a_success() -> None:
    for _ in range(2):
        with pytest.raises(ExpressionCompileError):
            compile_expression("1 +")


# ------------------------------------------------------------------------------- evaluating


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("input.n * 3", 6),
        ("input.name + '!'", "ada!"),
        ("input.items", [1, 2, 3]),
        ("size(input.items) > 2 && input.flag", True),
        ("vars.greeting + ' ' + input.name", "hi ada"),
        ("vars.limit - input.n", 8),
        ("nodes.a.output.n", 5),
        ('nodes["b-c"].output.n', 7),
        ("nodes['b-c'].output.n + nodes.a.output.n", 12),
        ("nodes.z.output[1]", 2),
        ("run.id", "run-1"),
        ("{'k': input.n, 'l': [run.workflow_id]}", {"k": 2, "l": ["wf"]}),
        ("input.n > 1 ? 'big' : 'small'", "big"),
        ("has(input.flag)", True),
        ("null", None),
        ("1.5 * 2.0", 3.0),
    ],
)
def test_expressions_evaluate_over_input_vars_nodes_and_run(source: str, expected: Any) -> None:
    result = evaluate(source)
    assert result == expected
    assert type(result) is type(expected)


def test_body_names_come_from_the_extra_scope() -> None:
    scope = make_scope(extra={"item": {"sku": "x1"}, "index": 3})
    assert evaluate("item.sku + ':' + string(index)", scope) == "x1:3"
    child = scope.child({"k": 1}, {"iteration": 2})
    assert evaluate("input.k + iteration + index", child) == 6
    assert child.nodes == {}
    assert child.vars is scope.vars


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("input.missing", "missing"),
        ("vars.nope + 1", "nope"),
        ("nodes.ghost.output", "ghost"),
        ("nodes.a.output.absent", "absent"),
        ("run.nothing", "nothing"),
    ],
)
def test_a_missing_key_is_an_evaluation_error_naming_the_key(source: str, key: str) -> None:
    with pytest.raises(ExpressionEvaluationError) as caught:
        evaluate(source)
    assert f"'{key}'" in str(caught.value)
    assert caught.value.source == source
    assert isinstance(caught.value, ExpressionError)


def test_a_runtime_error_is_an_evaluation_error() -> None:
    with pytest.raises(ExpressionEvaluationError) as caught:
        evaluate("input.n / 0")
    assert caught.value.reason


# ---------------------------------------------------------------------------- node pruning


@pytest.mark.parametrize(
    ("source", "refs"),
    [
        ("nodes.a.output", {"a"}),
        ('nodes["b-c"].output', {"b-c"}),
        ("nodes['b-c'].output.n", {"b-c"}),
        ("nodes.a.output.n + nodes['b-c'].output.n", {"a", "b-c"}),
        ("has(nodes.a) ? nodes.a.output : nodes.z.output", {"a", "z"}),
        ("input.n + vars.limit", set()),
    ],
)
def test_static_node_references_are_found(source: str, refs: set[str]) -> None:
    assert compile_expression(source).node_refs == frozenset(refs)


@pytest.mark.parametrize(
    "source",
    [
        "nodes[input.name]",
        "nodes[vars.greeting].output",
        "'a' in nodes",
        "size(nodes)",
        "nodes.a.output.n + size(nodes)",
        "nodes.size()",
        "nodes.exists(k, k == 'a')",
    ],
)
def test_dynamic_node_references_disable_pruning(source: str) -> None:
    assert compile_expression(source).node_refs is None


@pytest.mark.parametrize(
    "source",
    [
        "nodes.a.output.n",
        'nodes["b-c"].output.n * 2',
        "nodes.z.output",
        "has(nodes.a)",
        "has(nodes.ghost)",
        "'b-c' in nodes",
        "size(nodes)",
        "nodes[input.name == 'ada' ? 'a' : 'z'].output",
        "[nodes.a.output.n, nodes['b-c'].output.n]",
        "'nodes.ghost is text' + input.name",
        "nodes.size()",
        "nodes.exists(k, k == 'z')",
        "nodes.map(k, k).size()",
    ],
)
def test_pruned_evaluation_equals_evaluation_over_all_nodes(source: str) -> None:
    many = {f"filler{i}": {"i": i} for i in range(50)}
    scope = make_scope(nodes={**many, "a": {"n": 5}, "b-c": {"n": 7}, "z": [1, 2]})
    expression = compile_expression(source)
    assert expression.evaluate(scope) == unpruned(expression).evaluate(scope)


def test_pruning_keeps_a_missing_reference_an_error() -> None:
    expression = compile_expression("nodes.ghost.output")
    scope = make_scope()
    for variant in (expression, unpruned(expression)):
        with pytest.raises(ExpressionEvaluationError, match="'ghost'"):
            variant.evaluate(scope)


def test_the_activation_holds_only_the_referenced_nodes() -> None:
    scope = make_scope()
    assert scope.activation(frozenset({"a", "ghost"}))["nodes"] == {"a": {"output": {"n": 5}}}
    assert set(scope.activation(None)["nodes"]) == {"a", "b-c", "z"}


# -------------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ input.n }}", 2),
        ("{{input.n}}", 2),
        ("{{ input.items }}", [1, 2, 3]),
        ("{{ {'k': input.n} }}", {"k": 2}),
        ("{{ input.flag }}", True),
        ("{{ 0.5 }}", 0.5),
        ("{{ null }}", None),
    ],
)
def test_a_value_that_is_exactly_one_template_keeps_its_type(text: str, expected: Any) -> None:
    template = compile_template(text)
    assert isinstance(template, Template)
    result = template.render(make_scope())
    assert result == expected
    assert type(result) is type(expected)


def test_mixed_templates_render_to_text() -> None:
    template = compile_template(
        "n={{ input.n }} l={{ input.items }} d={{ {'k': 1} }} z={{ null }} "
        "b={{ input.flag }} f={{ false }} s={{ input.name }}"
    )
    assert isinstance(template, Template)
    assert template.render(make_scope()) == 'n=2 l=[1,2,3] d={"k":1} z= b=true f=false s=ada'


def test_a_dict_renders_as_compact_json_inside_text() -> None:
    template = compile_template("data: {{ nodes.a.output }}")
    assert isinstance(template, Template)
    nested = {"a": 1, "b": [1, 2], "c": {"d": "e"}}
    rendered = template.render(make_scope(nodes={"a": nested}))
    assert isinstance(rendered, str)
    prefix, _, payload = rendered.partition(" ")
    assert prefix == "data:"
    assert " " not in payload
    assert json.loads(payload) == {"a": 1, "b": [1, 2], "c": {"d": "e"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ {'a': {'b': 1}} }}", {"a": {"b": 1}}),
        ("x{{ 'a}}b' }}", "xa}}b"),
    ],
)
def test_a_template_may_contain_closing_braces(text: str, expected: Any) -> None:
    template = compile_template(text)
    assert isinstance(template, Template)
    assert template.render(make_scope()) == expected


def test_an_unterminated_template_is_literal_text() -> None:
    text = "price {{ input.n"
    assert compile_template(text) is text
    assert template_expressions(text) == []


def test_surrounding_text_makes_a_single_template_a_string() -> None:
    template = compile_template("  {{ input.n }}")
    assert isinstance(template, Template)
    assert template.render(make_scope()) == "  2"


def test_text_without_a_template_is_returned_as_is() -> None:
    text = "no templates { here }"
    assert compile_template(text) is text


def test_template_expressions_lists_the_stripped_sources() -> None:
    assert template_expressions("a {{ input.n }} b {{vars.x}} {{\n  run.id\n}}") == [
        "input.n",
        "vars.x",
        "run.id",
    ]
    assert template_expressions("none") == []


def test_a_template_with_a_bad_expression_does_not_compile() -> None:
    with pytest.raises(ExpressionCompileError):
        compile_template("ok {{ input.( }}")


def test_a_value_template_without_templates_returns_the_very_same_object() -> None:
    raw = {"a": [1, "x", {"b": None}], "c": "plain"}
    template = ValueTemplate(raw)
    assert template.is_static
    assert template.render(make_scope()) is raw


def test_a_value_template_renders_nested_templates_without_touching_the_raw_value() -> None:
    raw = {"url": "/u/{{ input.name }}", "ids": ["{{ input.n }}", 7], "deep": {"x": "{{ run.id }}"}}
    template = ValueTemplate(raw)
    assert not template.is_static
    assert template.render(make_scope()) == {
        "url": "/u/ada",
        "ids": [2, 7],
        "deep": {"x": "run-1"},
    }
    assert raw["ids"] == ["{{ input.n }}", 7]


def test_skip_keys_are_left_raw_and_not_compiled() -> None:
    raw = {"output": {"x": "{{ ) }}"}, "label": "{{ input.name }}"}
    template = ValueTemplate(raw, skip_keys=frozenset({"output"}))
    assert template.render(make_scope()) == {"output": {"x": "{{ ) }}"}, "label": "ada"}


# ------------------------------------------------------------- no Python objects, no eval


class _Recorder:
    """Records every attribute looked up on it through ``__getattr__``."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.looked_up.append(name)
        raise AttributeError(name)


@dataclass
class _Record:
    secret: str = "s3cr3t"


class _Model(pydantic.BaseModel):
    secret: str = "s3cr3t"


class _Plain:
    secret = "s3cr3t"


@pytest.mark.parametrize(
    "make_object",
    [
        pytest.param(_Plain, id="plain-object"),
        pytest.param(_Record, id="dataclass"),
        pytest.param(_Model, id="pydantic-model"),
        pytest.param(lambda: lambda: "s3cr3t", id="function"),
        pytest.param(lambda: {1, 2}, id="set"),
    ],
)
@pytest.mark.parametrize(
    ("place", "source"),
    [
        ("input", "input.secret"),
        ("input", "input"),
        ("vars", "vars.obj.secret"),
        ("node", "nodes.a.output.secret"),
    ],
)
def test_python_objects_in_the_scope_are_refused(make_object: Any, place: str, source: str) -> None:
    obj = make_object()
    scope = Scope(
        input=obj if place == "input" else {},
        vars={"obj": obj} if place == "vars" else {},
        nodes={"a": obj} if place == "node" else {},
        run={},
    )
    with pytest.raises(ExpressionEvaluationError):
        compile_expression(source).evaluate(scope)


def test_an_expression_cannot_make_the_runtime_read_a_python_attribute() -> None:
    recorder = _Recorder()
    for source in ("input.secret", "input.__class__", "has(input.secret)"):
        with pytest.raises(ExpressionEvaluationError):
            compile_expression(source).evaluate(Scope(recorder, {}, {}, {}))
    assert not {"secret", "__class__"} & set(recorder.looked_up)


def _python_eval_calls(source: str) -> list[tuple[int, str]]:
    """``eval(`` / ``exec(`` calls in ``source``, ignoring comments and strings.

    A method of that name on another object (CEL's ``program.eval(...)``) is not
    Python's ``eval``; ``builtins.eval(...)`` is.
    """
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)
    ]
    found = []
    for i, tok in enumerate(tokens[:-1]):
        if tok.type != tokenize.NAME or tok.string not in ("eval", "exec"):
            continue
        if tokens[i + 1].string != "(":
            continue
        is_method = i >= 1 and tokens[i - 1].string == "."
        via_builtins = i >= 2 and tokens[i - 2].string in ("builtins", "__builtins__")
        if not is_method or via_builtins:
            found.append((tok.start[0], tok.string))
    return found


def test_the_eval_finder_catches_python_eval_and_ignores_the_rest() -> None:
    sample = (
        "import builtins\n"
        "x = eval('1')  # eval( in a comment is fine\n"
        "exec (code)\n"
        "builtins.eval(y)\n"
        "s = 'eval(not code)'\n"
        "v = program.eval(data=z)\n"
        "def evaluate(): pass\n"
    )
    assert _python_eval_calls(sample) == [(2, "eval"), (3, "exec"), (4, "eval")]


def test_there_is_no_python_eval_or_exec_in_app() -> None:
    files = sorted(APP.rglob("*.py"))
    assert files
    offenders = {
        str(path.relative_to(APP.parent)): calls
        for path in files
        if (calls := _python_eval_calls(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}
