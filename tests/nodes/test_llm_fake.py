"""The fake Chat Completions server, checked with the ``openai`` SDK as its client: if
the fake drifted from the protocol, the SDK would fail to parse it here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.llm_fake import Answer, FakeLLM, Status, ToolCall

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "say hello to the world"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM.running() as server:
        yield server


@pytest.fixture
async def client(fake: FakeLLM) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
    yield sdk
    await sdk.close()


async def test_a_completion_parses(fake: FakeLLM, client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="m", messages=USER)

    (choice,) = reply.choices
    assert (choice.message.role, choice.message.content) == ("assistant", "Hello, world!")
    assert choice.finish_reason == "stop"
    assert reply.model == "m"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 4)
    (request,) = fake.requests
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json()["messages"] == USER


async def test_a_stream_parses_with_its_usage_chunk_last(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


async def test_a_stream_without_usage_has_no_usage_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_tool_calls_stream_in_pieces_and_accumulate(
    fake: FakeLLM, client: AsyncOpenAI
) -> None:
    call = ToolCall("get_weather", '{"city": "Paris", "unit": "c"}', id="call_abc")
    fake.script("tools", Answer(tokens=(), tool_calls=(call,)))

    stream = await client.chat.completions.create(model="tools", messages=USER, stream=True)
    pieces = [
        tc
        async for chunk in stream
        if chunk.choices and chunk.choices[0].delta.tool_calls
        for tc in chunk.choices[0].delta.tool_calls
    ]
    assert (pieces[0].index, pieces[0].id) == (0, "call_abc")
    assert pieces[0].function is not None
    assert pieces[0].function.name == "get_weather"
    assert "".join(p.function.arguments or "" for p in pieces if p.function) == call.arguments
    assert len(pieces) > 2

    reply = await client.chat.completions.create(model="tools", messages=USER)
    (tool_call,) = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls"
    assert tool_call.function.arguments == call.arguments  # type: ignore[union-attr]


async def test_the_sdk_stream_helper_accumulates_the_fake(
    fake: FakeLLM, client: AsyncOpenAI
) -> None:
    call = ToolCall("lookup", '{"q": "x"}')
    fake.script("tools", Answer(tokens=("a", "b"), tool_calls=(call,)))
    async with client.chat.completions.stream(model="tools", messages=USER) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "ab"
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == call.arguments


async def test_a_429_carries_retry_after(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.script("busy", Status.rate_limited(7), Answer())

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="busy", messages=USER)
    assert caught.value.response.headers["retry-after"] == "7"
    reply = await client.chat.completions.create(model="busy", messages=USER)
    assert reply.choices[0].message.content == "Hello, world!"


async def test_a_500_is_an_internal_server_error(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.script("broken", Status(500))
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="broken", messages=USER)


async def test_a_mid_stream_disconnect_fails_the_read(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.script("cut", Answer(disconnect_after=2))
    stream = await client.chat.completions.create(model="cut", messages=USER, stream=True)
    seen: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIConnectionError):
        await read()
    assert seen == ["Hello", ","]


async def test_slow_tokens_arrive_one_by_one(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.script("slow", Answer(tokens=("a", "b", "c"), token_delay=0.05))
    stream = await client.chat.completions.create(model="slow", messages=USER, stream=True)
    arrivals: list[float] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 3
    assert arrivals[-1] - arrivals[0] >= 0.08


async def test_a_header_picks_the_script(fake: FakeLLM, client: AsyncOpenAI) -> None:
    fake.script("flaky", Status(503))
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="m", messages=USER, extra_headers={"X-Fake-Script": "flaky"}
        )
    reply = await client.chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].message.content == "Hello, world!"
