"""The ``llm`` node through the HTTP API, on SQLite and Postgres, against the fake
Chat Completions server (``tests/llm_fake.py``): its tokens arrive live over SSE one by
one and in order; the durable log holds them as a few chunks (``runtime/journal.py``),
and a replay — from the start, or resumed with a ``Last-Event-ID`` in the middle of the
answer, while the run streams or after it ended — yields exactly the live text. The
metrics count the call's tokens by model."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.engine import Event, EventType
from app.nodes.http import aclose_http_client
from app.runtime.journal import logged_events
from tests.llm_fake import Answer, FakeLLM, Status
from tests.service.support import (
    MakeSettings,
    Serve,
    SSEFrame,
    SSEReader,
    chain,
    events_json,
    finished,
    post_workflow,
    read_sse,
    sse_lines,
    start_run,
    unique,
)

TOKENS = tuple(f" word{i}" for i in range(120))
TEXT = "".join(TOKENS)


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM.running() as server:
        yield server
    await aclose_http_client()  # the node's pooled connections to the fake


def llm_workflow(workflow_id: str, fake: FakeLLM, model: str) -> dict[str, Any]:
    return chain(
        workflow_id,
        {
            "id": "answer",
            "type": "llm",
            "config": {"base_url": fake.base_url, "model": model, "prompt": "Say it."},
        },
    )


def text_of(frames: list[SSEFrame]) -> str:
    return "".join(f.data["data"]["token"] for f in frames if f.event == "node.token")


async def stream(
    client: httpx.AsyncClient, run_id: str, after: int, *, stop_after: int | None = None
) -> SSEReader:
    headers = {"Last-Event-ID": str(after)}
    async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
        return await read_sse(sse_lines(response), stop_after=stop_after)


def assert_contiguous(frames: list[SSEFrame], after: int) -> None:
    """Each frame continues the last: a token chunk's span starts right after it."""
    last = after
    for frame in frames:
        first = (
            frame.data["data"].get("first_seq", frame.id)
            if frame.event == "node.token"
            else frame.id
        )
        assert first == last + 1, (first, last, frame)
        last = frame.id


async def test_tokens_stream_live_and_replay_the_same_text_from_few_rows(
    serve: Serve, make_settings: MakeSettings, fake: FakeLLM
) -> None:
    model = unique("model")
    fake.script(model, Answer(tokens=TOKENS, token_delay=0.004))
    settings = make_settings(egress_allow=["127.0.0.1"])
    workflow_id = unique("llm")
    async with serve(settings) as client:
        await post_workflow(client, llm_workflow(workflow_id, fake, model))
        run = await start_run(client, workflow_id, {})
        run_id = run["run_id"]

        # live: one event per token, in order, numbered without gaps
        first_part = await stream(client, run_id, 0, stop_after=25)
        assert_contiguous(first_part.frames, 0)
        seen = first_part.frames[-1].id
        # resumed mid-answer while the run still streams: the rest, no duplicate or gap
        rest = await stream(client, run_id, seen)
        assert_contiguous(rest.frames, seen)
        assert text_of(first_part.frames) + text_of(rest.frames) == TEXT
        streamed = [f for f in first_part.frames + rest.frames if f.event == "node.token"]
        assert all(f.data["data"]["attempt"] == 1 for f in streamed)
        # most arrived live, one event per token (the others: chunks of what was logged
        # before the client connected)
        one_by_one = [f for f in streamed if "first_seq" not in f.data["data"]]
        assert len(one_by_one) >= len(TOKENS) // 2, [f.data["data"] for f in streamed]

        done = await finished(client, run_id)
        assert done["status"] == "succeeded", done
        assert done["output"]["answer"]["text"] == TEXT

        # replayed from the log after the end: from the start, and from mid-answer
        replay = await stream(client, run_id, 0)
        assert_contiguous(replay.frames, 0)
        assert text_of(replay.frames) == TEXT
        tokens_at = [f.id for f in first_part.frames if f.event == "node.token"]
        for after in (tokens_at[0], tokens_at[len(tokens_at) // 2], seen):
            resumed = await stream(client, run_id, after)
            assert_contiguous(resumed.frames, after)
            before = text_of([f for f in first_part.frames if f.id <= after])
            assert before + text_of(resumed.frames) == TEXT

        # the log: far fewer rows than tokens, each chunk the text of its span
        logged = await events_json(client, run_id)
        chunks = [e for e in logged if e["type"] == "node.token"]
        assert "".join(e["data"]["token"] for e in chunks) == TEXT
        assert len(chunks) <= len(TOKENS) // 5, len(chunks)
        assert sum(len(e["data"].get("sizes", [1])) for e in chunks) == len(TOKENS)
        assert logged[-1]["seq"] == replay.frames[-1].id

        exposition = (await client.get("/metrics")).text
        completion = re.search(
            rf'flowcore_llm_tokens_total{{kind="completion",model="{model}"}} (\S+)', exposition
        )
        assert completion is not None
        assert float(completion.group(1)) == len(TOKENS)
        assert (
            f'flowcore_llm_time_to_first_token_seconds_count{{model="{model}"}} 1.0' in exposition
        )
        assert f'flowcore_llm_requests_total{{model="{model}",outcome="ok"}} 1.0' in exposition


async def test_a_refused_call_counts_as_an_error_of_its_model(
    serve: Serve, make_settings: MakeSettings, fake: FakeLLM
) -> None:
    model = unique("model")
    fake.script(model, Status(400, "no such model"))
    workflow_id = unique("llm")
    async with serve(make_settings(egress_allow=["127.0.0.1"])) as client:
        await post_workflow(client, llm_workflow(workflow_id, fake, model))
        run = await start_run(client, workflow_id, {})
        done = await finished(client, run["run_id"])
        assert done["status"] == "failed", done
        exposition = (await client.get("/metrics")).text
    assert f'flowcore_llm_requests_total{{model="{model}",outcome="rejected"}} 1.0' in exposition
    assert f'flowcore_llm_request_duration_seconds_count{{model="{model}"}} 1.0' in exposition
    assert f'flowcore_llm_time_to_first_token_seconds_count{{model="{model}"}}' not in exposition


def token(seq: int, text: str, node: str = "a", attempt: int = 1) -> Event:
    return Event(seq, EventType.NODE_TOKEN, "r", node, {"token": text, "attempt": attempt})


def test_the_log_joins_consecutive_tokens_of_one_node_and_attempt() -> None:
    started = Event(1, EventType.NODE_STARTED, "r", "a", {})
    events = [
        started,
        token(2, "He"),
        token(3, "llo"),
        token(4, "x", node="b"),  # another node: a chunk of its own
        token(5, " wo"),
        token(6, "rld", attempt=2),  # a retry starts again
        token(7, "!", attempt=2),
    ]
    logged = logged_events(events)
    assert logged[0] is started
    assert [(e.seq, e.node_id, e.data) for e in logged[1:]] == [
        (3, "a", {"token": "Hello", "attempt": 1, "first_seq": 2, "sizes": [2, 3]}),
        (4, "b", {"token": "x", "attempt": 1}),
        (5, "a", {"token": " wo", "attempt": 1}),
        (7, "a", {"token": "rld!", "attempt": 2, "first_seq": 6, "sizes": [3, 1]}),
    ]
