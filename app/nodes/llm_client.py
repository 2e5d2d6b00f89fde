"""The ``llm`` node's side of the ``openai`` SDK: the guarded client, the request a
config describes, and one call with its stream, its errors mapped to the node's (see
``app.nodes.llm``). Imported when an ``llm`` node first runs, not when node types are
registered: the SDK takes half a second to import, and most processes never call it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI

from app.engine import NodeConfigError, NodeContext, NodeExecutionError, NodeTimeoutError
from app.nodes.egress import TargetPolicy, redact_url, vet_target, vetted_extensions
from app.nodes.llm import LlmRejectedError, LlmUnavailableError
from app.nodes.llm_calls import LlmCall, report_llm_call
from app.nodes.llm_config import LlmConfig

__all__ = ["NO_KEY", "Answer", "Call", "GuardedOpenAI", "request_params"]

#: sent when the config names no key (local servers): the SDK requires one, and the
#: Authorization header is then dropped
NO_KEY = "flowcore-no-key"
#: headers the SDK would fill from the process's environment
_ENVIRONMENT_HEADERS = ("openai-organization", "openai-project")
#: 4xx statuses worth retrying: a timeout, a conflict, a rate limit
_RETRIED_4XX = frozenset({408, 409, 429})


class GuardedOpenAI(AsyncOpenAI):
    """``AsyncOpenAI`` whose every request is vetted by the egress policy (narrowed by
    the node's ``allow_hosts``) and carries no credential or header from the
    process's environment."""

    def __init__(self, *, allow_hosts: TargetPolicy, keyless: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._allow_hosts = allow_hosts
        self._keyless = keyless

    async def _prepare_request(self, request: Any) -> None:
        url = httpx.URL(str(request.url))
        await vet_target(url, self._allow_hosts)
        request.extensions.update(vetted_extensions(url))
        for name in _ENVIRONMENT_HEADERS:
            request.headers.pop(name, None)
        if self._keyless:
            request.headers.pop("authorization", None)


@dataclass(slots=True)
class Answer:
    """An answer as it accumulates from a stream (or from one completion)."""

    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    model: str = ""
    usage: dict[str, int | None] = field(
        default_factory=lambda: {"prompt_tokens": None, "completion_tokens": None}
    )
    #: by index: id, name, arguments (pieces joined)
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def add_tool_piece(
        self, index: int, id: str | None, name: str | None, args: str | None
    ) -> None:
        call = self.tool_calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        if id:
            call["id"] = id
        if name:
            call["name"] += name
        if args:
            call["arguments"] += args

    def set_usage(self, usage: Any) -> None:
        if usage is not None:
            self.usage = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            }


def _messages(cfg: LlmConfig) -> list[dict[str, Any]]:
    if cfg.prompt is not None:
        messages = [] if cfg.system is None else [{"role": "system", "content": cfg.system}]
        return [*messages, {"role": "user", "content": cfg.prompt}]
    if not isinstance(cfg.messages, list):
        raise NodeConfigError("messages must resolve to a list of messages")
    return cfg.messages


def _tool(definition: dict[str, Any]) -> dict[str, Any]:
    if "function" in definition:
        return definition
    return {"type": "function", "function": definition}


def request_params(cfg: LlmConfig) -> dict[str, Any]:
    """The Chat Completions parameters the config asks for."""
    params: dict[str, Any] = {"model": cfg.model, "messages": _messages(cfg)}
    for name in ("temperature", "max_tokens", "stop", "seed"):
        value = getattr(cfg, name)
        if value is not None:
            params[name] = value
    if cfg.tools:
        params["tools"] = [_tool(tool) for tool in cfg.tools]
    if cfg.response_format is not None:
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": cfg.response_format},
        }
    return params


def _retry_after(response: httpx.Response | Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from these APIs, and the policy's delay applies
    return seconds if seconds is not None and seconds >= 0 else None


class Call:
    """One execution: the request, its stream, and errors mapped to the engine's."""

    def __init__(self, client: AsyncOpenAI, cfg: LlmConfig, key: str | None) -> None:
        self.client = client
        self.cfg = cfg
        self.key = key
        self.where = redact_url(httpx.URL(cfg.base_url))
        #: perf_counter at the request and at the first content token (TTFT)
        self._started = 0.0
        self._first_token: float | None = None

    def _clean(self, message: str) -> str:
        return message.replace(self.key, "***") if self.key else message

    async def run(self, node_context: NodeContext) -> Answer:
        """The answer; each call reported (``llm_calls``) with its outcome and timings."""
        self._started = time.perf_counter()
        self._first_token = None
        answer: Answer | None = None
        outcome = "error"
        try:
            answer = await self._run(node_context)
            outcome = "ok"
            return answer
        except LlmUnavailableError:
            outcome = "unavailable"
            raise
        except LlmRejectedError:
            outcome = "rejected"
            raise
        except NodeTimeoutError:
            outcome = "timeout"
            raise
        finally:
            usage = answer.usage if answer is not None else {}
            first = self._first_token
            report_llm_call(
                LlmCall(
                    model=self.cfg.model,
                    outcome=outcome,
                    seconds=time.perf_counter() - self._started,
                    first_token_seconds=None if first is None else first - self._started,
                    prompt_tokens=usage.get("prompt_tokens"),
                    completion_tokens=usage.get("completion_tokens"),
                )
            )

    async def _run(self, node_context: NodeContext) -> Answer:
        try:
            if self.cfg.stream:
                return await self._stream(node_context)
            return await self._complete()
        except openai.APITimeoutError as exc:
            raise NodeTimeoutError(
                f"{self.where}: no answer within {self.cfg.timeout:g}s (connect or read)"
            ) from exc
        except openai.APIConnectionError as exc:
            # a refused connection, or one that broke off mid-stream
            raise LlmUnavailableError(
                self._clean(f"{self.where}: the connection failed: {exc}")
            ) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            message = self._clean(f"{self.where} returned HTTP {status}: {exc.message}")
            if status in _RETRIED_4XX or status >= 500:
                raise LlmUnavailableError(message, status, _retry_after(exc.response)) from exc
            raise LlmRejectedError(message, status) from exc
        except httpx.TimeoutException as exc:
            raise NodeTimeoutError(f"{self.where}: the stream stalled: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LlmUnavailableError(
                self._clean(f"{self.where}: the stream broke off: {type(exc).__name__}: {exc}")
            ) from exc
        except openai.APIError as exc:
            raise NodeExecutionError(self._clean(f"{self.where}: {exc.message}")) from exc

    async def _complete(self) -> Answer:
        reply = await self.client.chat.completions.create(
            **request_params(self.cfg), timeout=self.cfg.timeout
        )
        answer = Answer(model=reply.model)
        answer.set_usage(reply.usage)
        if reply.choices:
            choice = reply.choices[0]
            answer.finish_reason = choice.finish_reason
            answer.parts.append(choice.message.content or "")
            for index, call in enumerate(choice.message.tool_calls or []):
                function = getattr(call, "function", None)
                if function is not None:
                    answer.add_tool_piece(index, call.id, function.name, function.arguments)
        return answer

    async def _stream(self, node_context: NodeContext) -> Answer:
        stream = await self.client.chat.completions.create(
            **request_params(self.cfg),
            stream=True,
            stream_options={"include_usage": True},
            timeout=self.cfg.timeout,
        )
        answer = Answer(model=self.cfg.model)
        async with stream:
            async for chunk in stream:
                answer.model = chunk.model or answer.model
                answer.set_usage(chunk.usage)
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue  # n is never set, so only one choice is asked for
                    delta = choice.delta
                    if delta.content:
                        if self._first_token is None:
                            self._first_token = time.perf_counter()
                        answer.parts.append(delta.content)
                        node_context.emit_token(delta.content)
                    for piece in delta.tool_calls or []:
                        function = piece.function
                        answer.add_tool_piece(
                            piece.index,
                            piece.id,
                            function.name if function else None,
                            function.arguments if function else None,
                        )
                    if choice.finish_reason is not None:
                        answer.finish_reason = choice.finish_reason
        return answer
