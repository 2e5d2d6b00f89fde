"""What a ``{{ }}`` template yields is data: every templated field of every built-in
node type takes it as it is, and none evaluates it again as an expression.

Each case below renders one field from the run input ``{"x": "vars.pin"}``, a string
that *is* a valid expression reading a variable: a node that evaluated its rendered
config would read ``vars.pin`` (``"leaked"``) instead of the text ``"vars.pin"``.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import (
    ExecutionConfig,
    InMemoryMemoryStore,
    InMemoryWorkflowRepository,
    NodeRegistry,
    RunResult,
    WorkflowExecutor,
    create_workflow,
)
from tests.llm_fake import FakeLLM
from tests.nodes.conftest import LocalHTTPServer, Received, json_reply

DATA = "vars.pin"
INPUT = {"x": DATA}
TEMPLATE = "{{ input.x }}"

#: every built-in type and the config fields it renders as templates; types whose
#: fields are all raw CEL or bodies (checked as the types of their own nodes) have none
TEMPLATED_FIELDS: dict[str, set[str]] = {
    "noop": set(),
    "transform": set(),
    "map": set(),
    "loop": set(),
    "delay": {"seconds"},
    "fail": {"message"},
    "wait": {"signal"},
    "subworkflow": {"workflow_id"},
    "memory": {"conversation", "message"},
    "http": {"url", "method", "headers", "query", "json", "body", "timeout", "expect_status"},
    "llm": {"base_url", "model", "messages", "prompt", "system"},
}


def test_every_built_in_type_is_covered() -> None:
    builtin = {
        name
        for name in NodeRegistry.types()
        if NodeRegistry.get(name).__module__.startswith("app.nodes")
    }
    assert builtin == set(TEMPLATED_FIELDS)


async def run(nodes: list[dict[str, Any]], **executor: Any) -> RunResult:
    definition = create_workflow({"id": "data", "vars": {"pin": "leaked"}, "nodes": nodes})
    return await WorkflowExecutor(ExecutionConfig(), **executor).execute(definition, INPUT)


def node(type: str, **config: Any) -> dict[str, Any]:
    return {"id": "n", "type": type, "config": config}


async def test_delay_seconds() -> None:
    result = await run([node("delay", seconds=TEMPLATE)])
    assert result.error is not None
    assert result.error.kind == "config"
    assert repr(DATA) in result.error.message


async def test_fail_message() -> None:
    result = await run([node("fail", message=TEMPLATE)])
    assert result.error is not None
    assert result.error.message == DATA


async def test_wait_signal() -> None:
    definition = create_workflow(
        {"id": "data", "vars": {"pin": "leaked"}, "nodes": [node("wait", signal=TEMPLATE)]}
    )
    executor = WorkflowExecutor()
    executor.signal("r", "leaked", "wrong", early=True)
    executor.signal("r", DATA, "right", early=True)
    result = await executor.execute(definition, INPUT, run_id="r")
    assert result.output == {"n": "right"}


async def test_subworkflow_workflow_id() -> None:
    repo = InMemoryWorkflowRepository()
    for workflow_id in (DATA, "leaked"):
        repo.add(
            create_workflow(
                {
                    "id": workflow_id,
                    "nodes": [
                        {
                            "id": "who",
                            "type": "transform",
                            "config": {"output": {"id": f"'{workflow_id}'"}},
                        }
                    ],
                }
            )
        )
    result = await run([node("subworkflow", workflow_id=TEMPLATE)], workflows=repo)
    assert result.output == {"n": {"who": {"id": DATA}}}


async def test_memory_conversation_and_message() -> None:
    store = InMemoryMemoryStore()
    result = await run(
        [
            node(
                "memory",
                op="append",
                conversation=TEMPLATE,
                message={"role": "user", "content": TEMPLATE},
            )
        ],
        memory_store=store,
    )
    assert result.success, result.error
    memory = await store.load(DATA)
    assert [m.content for m in memory.messages] == [DATA]


@pytest.mark.parametrize(
    "field",
    ["url", "method", "headers", "query", "json", "body", "timeout", "expect_status"],
)
async def test_http_fields(http_server: LocalHTTPServer, field: str) -> None:
    seen: list[Received] = []

    def echo(request: Received) -> Any:
        seen.append(request)
        return json_reply({"ok": True})

    http_server.route("/echo", echo)
    http_server.route("/vars.pin", echo)
    config: dict[str, Any] = {"url": http_server.url("/echo"), "allow_hosts": ["127.0.0.1"]}
    expected_failure: str | None = None
    if field == "url":
        config["url"] = http_server.url("/") + TEMPLATE
    elif field == "method":
        config["method"] = TEMPLATE  # "vars.pin" is no method: refused as such
        expected_failure = "unknown HTTP method 'vars.pin'"
    elif field == "headers":
        config["headers"] = {"X-Data": TEMPLATE}
    elif field == "query":
        config["query"] = {"q": TEMPLATE}
    elif field == "json":
        config["method"] = "POST"
        config["json"] = {"v": TEMPLATE}
    elif field == "body":
        config["method"] = "POST"
        config["body"] = TEMPLATE
    elif field == "timeout":
        config["timeout"] = TEMPLATE
        expected_failure = "timeout"
    elif field == "expect_status":
        config["expect_status"] = TEMPLATE
        expected_failure = "expect_status"
    result = await run([node("http", **config)])
    if expected_failure is not None:
        assert result.error is not None
        assert result.error.kind == "config"
        assert expected_failure in result.error.message
        assert seen == []
        return
    assert result.success, result.error
    (request,) = seen
    sent = {
        "url": request.path,
        "headers": request.headers.get("x-data", ""),
        "query": request.target.partition("?")[2],
        "json": request.body.decode(),
        "body": request.body.decode(),
    }[field]
    assert DATA in sent
    assert "leaked" not in sent


async def test_llm_fields() -> None:
    async with FakeLLM.running() as fake:
        base = {"base_url": fake.base_url, "allow_hosts": ["127.0.0.1"]}
        prompted = node("llm", **base, model=TEMPLATE, system=TEMPLATE, prompt=TEMPLATE)
        messages = [{"role": "user", "content": TEMPLATE}]
        chat = node("llm", **base, model="m", messages=messages)
        chat["id"] = "c"
        result = await run([prompted, chat])
        assert result.error is None, result.error
        sent = {request.json()["model"]: request.json() for request in fake.requests}
    first, second = sent[DATA], sent["m"]  # the two nodes run concurrently
    assert first["model"] == DATA
    assert first["messages"] == [
        {"role": "system", "content": DATA},
        {"role": "user", "content": DATA},
    ]
    assert second["messages"] == [{"role": "user", "content": DATA}]
