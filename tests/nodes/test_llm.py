"""The ``llm`` node through the engine, against the protocol-true fake server: tokens,
usage, tool calls, structured output, retries by the engine's policy, keys from the
environment and from secrets, and the egress guard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.engine import (
    EventSink,
    EventType,
    ExecutionConfig,
    InMemoryCache,
    InMemorySecrets,
    ListEventSink,
    RunResult,
    RunStatus,
    WorkflowExecutor,
    create_workflow,
    validate_workflow,
)
from app.nodes.egress import EgressPolicy, install_egress_policy
from app.nodes.llm import LlmNode, LlmUnavailableError
from tests.llm_fake import Answer, FakeLLM, Status, ToolCall

LOOPBACK = ["127.0.0.1"]
RETRY = {"max_retries": 2, "delay": 0}


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM.running() as server:
        yield server


def llm(fake: FakeLLM, **config: Any) -> dict[str, Any]:
    """A workflow of one ``llm`` node (``retry`` goes on the node, the rest in config)."""
    retry = config.pop("retry", None)
    spec: dict[str, Any] = {
        "id": "ask",
        "type": "llm",
        "config": {
            "base_url": fake.base_url,
            "model": "m",
            "prompt": "say hello",
            "allow_hosts": LOOPBACK,
            **config,
        },
    }
    if retry is not None:
        spec["retry"] = retry
    return {"id": "w", "nodes": [spec]}


async def run(
    definition: dict[str, Any], sink: ListEventSink | None = None, **kwargs: Any
) -> RunResult:
    sinks: list[EventSink] = [sink] if sink is not None else []
    return await WorkflowExecutor(event_sinks=sinks, **kwargs).execute(create_workflow(definition))


def tokens(sink: ListEventSink) -> list[str]:
    return [e.data["token"] for e in sink.events if e.type is EventType.NODE_TOKEN]


async def test_tokens_stream_in_order_and_the_output_holds_the_answer(fake: FakeLLM) -> None:
    sink = ListEventSink()
    result = await run(llm(fake, system="be brief"), sink)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert tokens(sink) == ["Hello", ",", " world", "!"]
    assert result.output == {
        "ask": {
            "text": "Hello, world!",
            "finish_reason": "stop",
            "tool_calls": [],
            "usage": {"prompt_tokens": 4, "completion_tokens": 4},
            "model": "m",
        }
    }
    body = fake.requests[0].json()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "say hello"},
    ]
    types = [e.type for e in sink.events]
    assert types.index(EventType.NODE_TOKEN) < types.index(EventType.NODE_COMPLETED)


async def test_templated_messages_and_parameters_are_sent(fake: FakeLLM) -> None:
    messages = [
        {"role": "system", "content": "You are {{ input.persona }}."},
        {"role": "user", "content": "{{ input.question }}"},
    ]
    definition = llm(
        fake, prompt=None, messages=messages, temperature=0.2, max_tokens=50, stop=["\n"], seed=7
    )
    del definition["nodes"][0]["config"]["prompt"]
    workflow = create_workflow(definition)

    result = await WorkflowExecutor().execute(workflow, {"persona": "terse", "question": "hi?"})

    assert result.status is RunStatus.SUCCEEDED, result.error
    body = fake.requests[0].json()
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi?"},
    ]
    assert (body["temperature"], body["max_tokens"], body["stop"], body["seed"]) == (
        0.2,
        50,
        ["\n"],
        7,
    )


async def test_without_streaming_no_tokens_are_emitted(fake: FakeLLM) -> None:
    sink = ListEventSink()
    result = await run(llm(fake, stream=False), sink)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert tokens(sink) == []
    assert result.output["ask"]["text"] == "Hello, world!"
    assert result.output["ask"]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4}
    assert "stream" not in fake.requests[0].json()


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_calls_come_back_in_the_output(fake: FakeLLM, stream: bool) -> None:
    call = ToolCall("get_weather", '{"city": "Paris"}', id="call_9")
    fake.script("m", Answer(tokens=(), tool_calls=(call,)))
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}

    result = await run(llm(fake, tools=[tool], stream=stream))

    assert result.status is RunStatus.SUCCEEDED, result.error
    output = result.output["ask"]
    assert output["finish_reason"] == "tool_calls"
    assert output["tool_calls"] == [
        {"id": "call_9", "name": "get_weather", "arguments": {"city": "Paris"}}
    ]
    assert output["text"] == ""
    assert fake.requests[0].json()["tools"] == [{"type": "function", "function": tool}]


async def test_a_valid_structured_answer_is_parsed(fake: FakeLLM) -> None:
    fake.script("m", Answer(tokens=('{"answer": ', "42}")))
    schema = {
        "type": "object",
        "required": ["answer"],
        "properties": {"answer": {"type": "integer"}},
    }

    result = await run(llm(fake, response_format=schema))

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.output["ask"]["data"] == {"answer": 42}
    sent = fake.requests[0].json()["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


@pytest.mark.parametrize("answer", [('{"answer": "many"}',), ("not json",)])
async def test_an_answer_that_does_not_match_fails_the_node(
    fake: FakeLLM, answer: tuple[str, ...]
) -> None:
    fake.script("m", Answer(tokens=answer))
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}

    result = await run(llm(fake, response_format=schema))

    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert "response_format" in result.error.message


async def test_a_429_is_retried_by_the_engine(fake: FakeLLM) -> None:
    fake.script("m", Status.rate_limited(0), Answer())
    sink = ListEventSink()

    result = await run(llm(fake, retry=RETRY), sink)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.node_results["ask"].attempts == 2
    assert len(fake.requests) == 2
    (retry,) = [e for e in sink.events if e.type is EventType.NODE_RETRY]
    assert "HTTP 429" in retry.data["error"]


async def test_the_error_carries_the_servers_retry_after(fake: FakeLLM) -> None:
    fake.script("m", Status.rate_limited(7))
    seen: list[BaseException] = []

    def keep(error: BaseException, *_: Any) -> None:
        seen.append(error)

    result = await run(llm(fake), config=ExecutionConfig(error_handler=keep))

    assert result.status is RunStatus.FAILED
    (error,) = seen
    assert isinstance(error, LlmUnavailableError)
    assert (error.status, error.retry_after) == (429, 7.0)


async def test_a_500_is_retried_and_fails_when_retries_run_out(fake: FakeLLM) -> None:
    fake.script("m", Status(500))
    result = await run(llm(fake, retry=RETRY))

    assert result.status is RunStatus.FAILED
    assert result.node_results["ask"].attempts == 3
    assert result.node_results["ask"].error_kind == "execution"


async def test_a_400_is_not_retried(fake: FakeLLM) -> None:
    fake.script("m", Status(400, "unknown parameter"))
    result = await run(llm(fake, retry=RETRY))

    assert result.status is RunStatus.FAILED
    record = result.node_results["ask"]
    assert (record.attempts, record.error_kind) == (1, "config")
    assert record.error is not None
    assert "HTTP 400" in record.error
    assert "unknown parameter" in record.error
    assert len(fake.requests) == 1


async def test_a_mid_stream_disconnect_fails_the_attempt_and_the_retry_streams_again(
    fake: FakeLLM,
) -> None:
    fake.script("m", Answer(disconnect_after=2), Answer())
    sink = ListEventSink()

    result = await run(llm(fake, retry=RETRY), sink)

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.node_results["ask"].attempts == 2
    assert tokens(sink) == ["Hello", ",", "Hello", ",", " world", "!"]
    # the retry's tokens say that the text starts again
    attempts = [e.data["attempt"] for e in sink.events if e.type is EventType.NODE_TOKEN]
    assert attempts == [1, 1, 2, 2, 2, 2]
    assert result.output["ask"]["text"] == "Hello, world!"


async def test_slow_tokens_are_bounded_by_the_node_timeout(fake: FakeLLM) -> None:
    fake.script("m", Answer(tokens=("a",) * 50, token_delay=0.05))
    definition = llm(fake)
    definition["nodes"][0]["timeout"] = 0.3
    sink = ListEventSink()

    result = await run(definition, sink)

    assert result.status is RunStatus.FAILED
    assert result.node_results["ask"].error_kind == "timeout"
    assert 0 < len(tokens(sink)) < 50


async def test_a_stalled_stream_times_out_by_the_config_timeout(fake: FakeLLM) -> None:
    fake.script("m", Answer(tokens=("a", "b"), token_delay=1.0))
    result = await run(llm(fake, timeout=0.2))
    record = result.node_results["ask"]
    assert (result.status, record.error_kind) == (RunStatus.FAILED, "timeout")


async def test_the_key_comes_from_an_environment_variable(
    fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWCORE_TEST_LLM_KEY", "sk-env-123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-must-not-leak")

    result = await run(llm(fake, api_key_env="FLOWCORE_TEST_LLM_KEY"))

    assert result.status is RunStatus.SUCCEEDED, result.error
    headers = fake.requests[0].headers
    assert headers["authorization"] == "Bearer sk-env-123"
    assert "openai-organization" not in headers


async def test_an_unset_key_variable_fails_the_node(fake: FakeLLM) -> None:
    result = await run(llm(fake, api_key_env="FLOWCORE_TEST_UNSET_KEY"))
    assert result.status is RunStatus.FAILED
    assert result.node_results["ask"].error_kind == "config"
    assert fake.requests == []


async def test_without_a_key_no_authorization_is_sent(
    fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    result = await run(llm(fake))
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert "authorization" not in fake.requests[0].headers


async def test_the_key_comes_from_a_secret_and_never_shows(fake: FakeLLM) -> None:
    fake.script("m", Status(401, "Incorrect API key provided: sk-secret-456"))
    secrets = InMemorySecrets({"OPENAI": "sk-secret-456"})
    sink = ListEventSink()

    result = await run(llm(fake, api_key="{{ secrets.OPENAI }}"), sink, secrets=secrets)

    assert fake.requests[0].headers["authorization"] == "Bearer sk-secret-456"
    assert result.status is RunStatus.FAILED
    record = result.node_results["ask"]
    assert record.error is not None
    assert "Incorrect API key provided: ***" in record.error
    assert all("sk-secret-456" not in str(e.data) for e in sink.events)


@pytest.mark.parametrize(
    "api_key",
    ["sk-literal", "Bearer {{ secrets.KEY }}", "{{ input.key }}", "{{ secrets.A }}{{ secrets.B }}"],
)
def test_a_literal_key_is_refused_at_validation(api_key: str) -> None:
    definition = {
        "id": "w",
        "nodes": [
            {
                "id": "ask",
                "type": "llm",
                "config": {
                    "base_url": "https://llm.test/v1",
                    "model": "m",
                    "prompt": "p",
                    "api_key": api_key,
                },
            }
        ],
    }
    issues = validate_workflow(definition)
    assert issues
    assert any(
        "{{ secrets.NAME }}" in issue.message and "api_key_env" in issue.message for issue in issues
    )
    assert all("sk-literal" not in issue.message for issue in issues)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"prompt": None}, "either messages or prompt"),
        ({"messages": [{"role": "user", "content": "x"}]}, "either messages or prompt"),
        ({"base_url": "file:///etc"}, "only http and https"),
        ({"api_key_env": "NOT A NAME"}, "environment variable name"),
        ({"temperature": 5}, "temperature"),
    ],
)
def test_invalid_configs_are_refused(config: dict[str, Any], problem: str) -> None:
    base = {"base_url": "https://llm.test/v1", "model": "m", "prompt": "p", **config}
    base = {k: v for k, v in base.items() if v is not None}
    issues = validate_workflow({"id": "w", "nodes": [{"id": "a", "type": "llm", "config": base}]})
    assert any(problem in str(issue) for issue in issues), issues


async def test_the_egress_policy_guards_the_endpoint(fake: FakeLLM) -> None:
    # no allow_hosts and no operator policy: a loopback endpoint is refused
    definition = llm(fake)
    del definition["nodes"][0]["config"]["allow_hosts"]
    result = await run(definition)
    assert result.status is RunStatus.FAILED
    assert result.node_results["ask"].error_kind == "forbidden_target"
    assert fake.requests == []


async def test_an_operator_policy_admits_the_endpoint(fake: FakeLLM) -> None:
    install_egress_policy(EgressPolicy.from_entries(allow=["127.0.0.1"]))
    definition = llm(fake)
    del definition["nodes"][0]["config"]["allow_hosts"]
    result = await run(definition)
    assert result.status is RunStatus.SUCCEEDED, result.error


async def test_an_operator_deny_beats_allow_hosts(fake: FakeLLM) -> None:
    install_egress_policy(EgressPolicy.from_entries(deny=["127.0.0.0/8"]))
    result = await run(llm(fake))
    assert result.status is RunStatus.FAILED
    assert result.node_results["ask"].error_kind == "forbidden_target"
    assert fake.requests == []


async def test_only_a_node_cache_policy_caches_it(fake: FakeLLM) -> None:
    cache = InMemoryCache()
    cached = llm(fake)
    cached["nodes"][0]["cache"] = {}
    for _ in range(2):
        result = await run(cached, cache=cache)
        assert result.output["ask"]["text"] == "Hello, world!"
    assert len(fake.requests) == 1
    other = llm(fake, prompt="something else")
    other["nodes"][0]["cache"] = {}
    await run(other, cache=cache)
    assert len(fake.requests) == 2


def test_the_breaker_key_is_the_endpoint_origin() -> None:
    node = LlmNode()
    assert node.breaker_key({"base_url": "https://API.test:8443/v1"}) == "llm:https://api.test:8443"
    assert node.breaker_key({"base_url": "nonsense"}) == "llm"
    assert not node.cacheable_call({})
