"""A protocol-true fake of an OpenAI-compatible Chat Completions server, for tests.

A real HTTP/1.1 server (asyncio streams) on 127.0.0.1 and an ephemeral port. It answers
``POST /v1/chat/completions`` as the OpenAI API documents it:

- non-streaming: one ``chat.completion`` object, with ``usage``;
- ``stream: true``: ``text/event-stream`` in chunked transfer encoding, one
  ``data: {chat.completion.chunk}`` event per delta: the role delta first, then the
  content (or ``tool_calls`` pieces: ``index``, ``id``, ``function.name`` first, then
  ``function.arguments`` in pieces), then the chunk with ``finish_reason``, then, when
  ``stream_options.include_usage`` is set, a chunk with no choices and the ``usage``
  (every earlier chunk then carries ``"usage": null``), and last ``data: [DONE]``.

What a request gets is scripted per model name, or per the name in an ``X-Fake-Script``
header (:meth:`FakeLLM.script`): a queue of
steps, taken one per request, the last repeating: an :class:`Answer` (text tokens, tool
calls, a delay between tokens, a disconnect after some tokens) or a :class:`Status`
(429 with ``Retry-After``, a 500...). A model with no script gets ``Answer()``. Every
request is recorded (:attr:`FakeLLM.requests`) for asserting its headers and body.

``tests/nodes/test_llm_fake.py`` checks this server with the ``openai`` SDK as its
client, so it cannot drift from the protocol.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "FakeLLM", "Received", "Status", "ToolCall"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the fake model makes; ``arguments`` is sent in ``pieces``."""

    name: str
    arguments: str
    id: str = "call_1"
    pieces: int = 3


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful completion: ``tokens`` as content deltas (or ``tool_calls``)."""

    tokens: tuple[str, ...] = ("Hello", ",", " world", "!")
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    #: seconds between two streamed chunks (slow tokens)
    token_delay: float = 0.0
    #: close the connection after this many content chunks, without ending the body
    disconnect_after: int | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def finish(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


@dataclass(frozen=True, slots=True)
class Status:
    """An error response, with the API's error body."""

    status: int
    message: str = "scripted failure"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def rate_limited(cls, retry_after: float = 0) -> Status:
        return cls(429, "Rate limit reached", (("Retry-After", f"{retry_after:g}"),))


Step = Answer | Status

#: a request header naming the script to follow instead of the model's
SCRIPT_HEADER = "x-fake-script"

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "requests"}
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
_REASONS |= {429: "Too Many Requests", 500: "Internal Server Error", 503: "Unavailable"}


@dataclass(slots=True)
class Received:
    """One request as the fake read it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _count_tokens(messages: Any) -> int:
    # a stand-in tokenizer: words of every message's text content
    count = 0
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += len(content.split())
    return count


@dataclass(slots=True)
class _Exchange:
    request: Received
    body: dict[str, Any]
    step: Step
    id: str
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    def usage(self, answer: Answer) -> dict[str, int]:
        prompt = _count_tokens(self.body.get("messages"))
        completion = len(answer.tokens) + sum(len(c.arguments) for c in answer.tool_calls)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def completion(self, answer: Answer) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.text if answer.tokens else None,
            "refusal": None,
        }
        if answer.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in answer.tool_calls
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish}
            ],
            "usage": self.usage(answer),
        }

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    def chunks(self, answer: Answer) -> list[dict[str, Any]]:
        """Every chunk of the stream, in order, content deltas first after the role."""
        content: str | None = "" if answer.tokens else None
        out = [self.chunk({"role": "assistant", "content": content, "refusal": None})]
        out += [self.chunk({"content": token}) for token in answer.tokens]
        for index, call in enumerate(answer.tool_calls):
            function = {"name": call.name, "arguments": ""}
            head = {"id": call.id, "type": "function", "function": function}
            out.append(self.chunk({"tool_calls": [{"index": index, **head}]}))
            size = -(-len(call.arguments) // max(call.pieces, 1)) or 1
            for start in range(0, len(call.arguments), size):
                piece = call.arguments[start : start + size]
                delta = {"index": index, "function": {"arguments": piece}}
                out.append(self.chunk({"tool_calls": [delta]}))
        out.append(self.chunk({}, answer.finish))
        if self.include_usage:
            out.append(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": self.usage(answer),
                }
            )
        return out


class FakeLLM:
    """The fake server; use :meth:`running` (or the tests' ``fake_llm`` fixtures)."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.port = 0
        self._scripts: dict[str, list[Step]] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._served = 0

    @classmethod
    @asynccontextmanager
    async def running(cls) -> AsyncIterator[FakeLLM]:
        server = cls()
        await server.start()
        try:
            yield server
        finally:
            await server.close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def script(self, model: str, *steps: Step) -> None:
        """What the next requests for ``model`` (or with ``X-Fake-Script: model``) get,
        one step each; the last repeats."""
        self._scripts[model] = list(steps)

    def _next_step(self, model: str) -> Step:
        steps = self._scripts.get(model)
        if not steps:
            return Answer()
        return steps.pop(0) if len(steps) > 1 else steps[0]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # a cancelled handler returns normally: Python 3.11's start_server callback
            # calls task.exception() on it
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = Received(method, target.split("?", 1)[0], headers, body)
        self.requests.append(request)
        if method != "POST" or request.path != "/v1/chat/completions":
            return await self._error(writer, Status(404, f"no route {method} {request.path}"))
        try:
            parsed = request.json()
        except ValueError:
            return await self._error(writer, Status(400, "the body is not JSON"))
        if not isinstance(parsed, dict) or "model" not in parsed or "messages" not in parsed:
            return await self._error(writer, Status(400, "model and messages are required"))
        self._served += 1
        step = self._next_step(headers.get(SCRIPT_HEADER, str(parsed["model"])))
        if isinstance(step, Status):
            return await self._error(writer, step)
        exchange = _Exchange(request, parsed, step, f"chatcmpl-fake{self._served}")
        if parsed.get("stream"):
            return await self._stream(writer, exchange, step)
        payload = json.dumps(exchange.completion(step)).encode()
        await self._write_head(writer, 200, [("Content-Type", "application/json")], len(payload))
        writer.write(payload)
        await writer.drain()
        return True

    async def _write_head(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[str, str]],
        length: int | None,
    ) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        head += [f"{name}: {value}" for name, value in headers]
        if length is None:
            head.append("Transfer-Encoding: chunked")
        else:
            head.append(f"Content-Length: {length}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))

    async def _error(self, writer: asyncio.StreamWriter, step: Status) -> bool:
        error = {
            "error": {
                "message": step.message,
                "type": _ERROR_TYPES.get(step.status, "server_error"),
                "param": None,
                "code": None,
            }
        }
        payload = json.dumps(error).encode()
        headers = [("Content-Type", "application/json"), *step.headers]
        await self._write_head(writer, step.status, headers, len(payload))
        writer.write(payload)
        await writer.drain()
        return True

    async def _stream(
        self, writer: asyncio.StreamWriter, exchange: _Exchange, answer: Answer
    ) -> bool:
        headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
        ]
        await self._write_head(writer, 200, headers, None)
        content_sent = 0
        for chunk in exchange.chunks(answer):
            choices = chunk["choices"]
            is_content = (
                bool(choices)
                and "content" in choices[0]["delta"]
                and ("role" not in choices[0]["delta"])
            )
            if is_content and answer.disconnect_after is not None:
                if content_sent >= answer.disconnect_after:
                    await writer.drain()
                    # no terminating chunk: the client sees an incomplete body
                    writer.transport.abort()
                    return False
                content_sent += 1
            self._write_chunk(writer, f"data: {json.dumps(chunk)}\n\n".encode())
            await writer.drain()
            if answer.token_delay:
                await asyncio.sleep(answer.token_delay)
        self._write_chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
