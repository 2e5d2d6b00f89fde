"""Secrets in the engine: ``{{ secrets.NAME }}`` references (left to the node, allowed only
in the fields a node type marks), the resolver port and its in-memory implementation,
and the masking of what a run writes out (events, checkpoint records, its own logs)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import pytest

from app.engine import (
    MASK,
    BaseNode,
    CheckpointRecord,
    Event,
    EventType,
    ExecutionConfig,
    InMemorySecrets,
    NodeCheckpoint,
    NodeContext,
    NodeRegistry,
    NodeResult,
    RunStatus,
    SecretMask,
    SecretTemplate,
    SecretUnavailableError,
    WorkflowContext,
    WorkflowExecutor,
    create_workflow,
    validate_workflow,
)
from app.engine.expressions import compile_template, secret_reference


class _Keyed(BaseNode):
    """Outputs its ``key`` filled in with the run's secrets (a node that echoes them)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"key"})

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        raw = self.spec.config["key"]
        template = SecretTemplate.parse(raw)
        assert template is not None
        values = await node_context.resolve_secrets(template.names)
        # what the engine rendered: the reference as written, never a value
        assert node_context.config["key"] == raw
        return NodeResult(output={"sent": template.fill(values)})


@pytest.fixture(autouse=True)
def _keyed_node() -> Any:
    NodeRegistry.register("test_keyed")(_Keyed)
    yield
    NodeRegistry.unregister("test_keyed")


def keyed(key: str, **extra: Any) -> dict[str, Any]:
    return {"id": "k", "type": "test_keyed", "config": {"key": key, **extra}}


# ---------------------------------------------------------------- the references


def test_a_reference_is_exactly_secrets_dot_a_name() -> None:
    assert secret_reference("secrets.API_TOKEN") == "API_TOKEN"
    assert secret_reference("secrets._x9") == "_x9"
    for source in ("secrets.9x", "secrets.a.b", "secrets['a']", "secrets", "xsecrets.A"):
        assert secret_reference(source) is None


def test_templates_leave_references_as_written_for_the_node() -> None:
    assert compile_template("Bearer {{ secrets.TOKEN }}") == "Bearer {{ secrets.TOKEN }}"
    template = SecretTemplate.parse("Bearer {{secrets.A}}:{{  secrets.B  }}!")
    assert template is not None
    assert template.names == ("A", "B")
    assert template.fill({"A": "a", "B": "b"}) == "Bearer a:b!"
    assert SecretTemplate.parse("plain") is None
    assert SecretTemplate.parse("{{ input.x }}") is None
    # a string literal that looks like a reference is an expression's text, not one
    assert SecretTemplate.parse("{{ '{{ secrets.A }}' }}") is None


def test_a_reference_is_allowed_only_in_the_fields_a_node_type_marks() -> None:
    assert validate_workflow({"id": "w", "nodes": [keyed("x {{ secrets.A }}")]}) == []
    misplaced = keyed("k", other="{{ secrets.A }}")
    (issue,) = validate_workflow({"id": "w", "nodes": [misplaced]})
    assert (issue.node, issue.field, issue.code) == ("k", "config.other", "secret")
    assert "(this node type's: key)" in issue.message
    transform = {"id": "t", "type": "transform", "config": {"output": {"v": "secrets.A"}}}
    (issue,) = validate_workflow({"id": "w", "nodes": [transform]})
    assert issue.field == "config.output.v"
    assert "{{ secrets.NAME }}" in issue.message
    failing = {"id": "f", "type": "fail", "config": {"message": "{{ secrets.A }}"}}
    (issue,) = validate_workflow({"id": "w", "nodes": [failing]})
    assert (issue.field, issue.code) == ("config.message", "secret")
    assert "this node type's: none" in issue.message
    edge = {
        "id": "w",
        "nodes": [keyed("{{ secrets.A }}"), {"id": "n", "type": "noop"}],
        "edges": [{"source": "k", "target": "n", "condition": "secrets.A == 'x'"}],
        "output": {"leak": "secrets.A"},
    }
    issues = validate_workflow(edge)
    assert sorted(i.field or "" for i in issues) == ["condition", "output.leak"]
    assert all("{{ secrets.NAME }}" in i.message for i in issues)


def test_a_reference_sits_beside_text_only() -> None:
    (issue,) = validate_workflow({"id": "w", "nodes": [keyed("{{ secrets.A }}{{ input.x }}")]})
    assert (issue.field, issue.code) == ("config.key", "secret")
    assert "no other template" in issue.message


def test_references_in_a_body_are_checked_like_any() -> None:
    body = {"id": "body", "nodes": [keyed("k", other="{{ secrets.A }}")]}
    loop = {"id": "loop", "type": "loop", "config": {"workflow": body, "while": "false"}}
    (issue,) = validate_workflow({"id": "w", "nodes": [loop]})
    assert issue.field == "config.other"
    assert issue.node is not None
    assert issue.node.endswith("/k")


# ------------------------------------------------------------------ resolving


async def test_a_node_resolves_its_references_from_the_run() -> None:
    secrets = InMemorySecrets({"A": "alpha", "B": "beta"})
    workflow = create_workflow({"id": "w", "nodes": [keyed("{{ secrets.A }}+{{ secrets.B }}")]})
    result = await WorkflowExecutor(secrets=secrets).execute(workflow)
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.node_results["k"].output == {"sent": "alpha+beta"}  # the library's own
    assert secrets.mask(result.node_results["k"].output) == {"sent": f"{MASK}+{MASK}"}


async def test_an_unknown_secret_fails_the_node_naming_it_and_is_not_retried() -> None:
    secrets = InMemorySecrets({"A": "alpha"})
    workflow = create_workflow(
        {"id": "w", "nodes": [{**keyed("{{ secrets.A }}{{ secrets.NOPE }}"), "retry": {}}]}
    )
    result = await WorkflowExecutor(secrets=secrets).execute(workflow)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert result.error.kind == "config"
    assert "secret 'NOPE' is not set" in result.error.message
    assert result.node_results["k"].attempts == 1


async def test_an_executor_without_secrets_says_so() -> None:
    workflow = create_workflow({"id": "w", "nodes": [keyed("{{ secrets.A }}")]})
    result = await WorkflowExecutor().execute(workflow)
    assert result.error is not None
    assert "WorkflowExecutor(secrets=...)" in result.error.message


async def test_run_data_that_looks_like_a_reference_is_never_filled_in() -> None:
    class Probe(InMemorySecrets):
        asked: list[Collection[str]] = []

        async def resolve(self, names: Collection[str]) -> Mapping[str, str]:
            self.asked.append(names)
            return await super().resolve(names)

    workflow = create_workflow(
        {
            "id": "w",
            "nodes": [{"id": "t", "type": "transform", "config": {"output": {"v": "input.x"}}}],
        }
    )
    probe = Probe({"A": "alpha"})
    result = await WorkflowExecutor(secrets=probe).execute(workflow, {"x": "{{ secrets.A }}"})
    assert result.output == {"t": {"v": "{{ secrets.A }}"}}
    assert probe.asked == []


async def test_the_engines_own_logs_and_trace_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flowcore.engine")
    config = ExecutionConfig(verbose_logging=True, trace_execution=True, trace_level="DEBUG")
    workflow = create_workflow({"id": "w", "nodes": [keyed("Bearer {{ secrets.A }}")]})
    result = await WorkflowExecutor(config, secrets=InMemorySecrets({"A": "alpha-1"})).execute(
        workflow
    )
    assert result.status is RunStatus.SUCCEEDED
    logged = [r.getMessage() for r in caplog.records if r.name == "flowcore.engine"]
    assert any("Bearer ***" in line for line in logged)
    assert not any("alpha-1" in line for line in logged)
    assert result.execution_trace is not None
    assert "alpha-1" not in str(result.execution_trace.to_dict())


# -------------------------------------------------------------------- masking


def test_a_mask_hides_every_form_of_a_value_in_json_like_values() -> None:
    mask = SecretMask()
    assert not mask
    value: dict[str, Any] = {"a": ["x"], "n": 1, "none": None}
    assert mask.apply(value) is value  # empty: nothing is copied
    mask.add(["tok", "tok-longer", 'q"uo\\te', "é-1", ""])
    assert mask
    assert mask.apply("Bearer tok-longer and tok") == "Bearer *** and ***"
    assert mask.apply({"tok": ["tok", 1, None, True], "k": ("tok",)}) == {
        "***": ["***", 1, None, True],
        "k": ["***"],
    }
    assert mask.apply('{"h": "q\\"uo\\\\te"}') == '{"h": "***"}'  # as JSON text quotes it
    assert mask.apply('"\\u00e9-1"') == '"***"'
    assert mask.apply("é-1") == "***"
    assert mask.apply("nothing here") == "nothing here"


def test_a_mask_hides_values_in_events_and_checkpoint_records() -> None:
    mask = SecretMask(["s3cret"])
    event = Event(3, EventType.NODE_COMPLETED, "r", "n", {"output": {"h": "Bearer s3cret"}})
    masked = mask.event(event)
    assert masked.data == {"output": {"h": "Bearer ***"}}
    assert (masked.seq, masked.type, masked.node_id) == (3, EventType.NODE_COMPLETED, "n")
    assert event.data == {"output": {"h": "Bearer s3cret"}}  # the engine's own is untouched
    record = CheckpointRecord(
        run_id="r",
        sequence=1,
        created_at=1.0,
        event_seq=3,
        status="failed",
        completed={"n": NodeCheckpoint("failed", {"o": "s3cret"}, "got s3cret", "execution", 1)},
        variables={"v": "s3cret"},
        frontier=[],
        pending={"w": {"kind": "break", "error": "s3cret"}},
        definition={"nodes": ["{{ secrets.A }}"]},
        input={"i": "s3cret"},
        error={"message": "s3cret!"},
        signals={"go": ["s3cret"]},
    )
    text = mask.record(record).to_json()
    assert "s3cret" not in text
    assert "{{ secrets.A }}" in text
    assert "s3cret" in record.to_json()
    assert SecretMask().record(record) is record


async def test_in_memory_secrets_mask_only_what_they_handed_out() -> None:
    secrets = InMemorySecrets({"A": "alpha", "B": "beta"})
    assert secrets.mask("alpha beta") == "alpha beta"
    assert await secrets.resolve(["A"]) == {"A": "alpha"}
    assert secrets.mask("alpha beta") == "*** beta"
    with pytest.raises(SecretUnavailableError, match="'C' is not set"):
        await secrets.resolve(["A", "C"])
