"""The ``llm`` node type: one Chat Completions call to any OpenAI-compatible endpoint
(OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM...) through the ``openai`` SDK.

Config: see :class:`~app.nodes.llm_config.LlmConfig`. Output::

    {"text": str, "finish_reason": str | None, "model": str,
     "tool_calls": [{"id", "name", "arguments"}],   # arguments parsed when JSON
     "usage": {"prompt_tokens", "completion_tokens"},
     "data": ...}                                    # only with response_format

Streaming (the default): each content delta is a ``node.token`` event, in order; the
output holds the full text.

The client (``app.nodes.llm_client``, imported on first use): ``AsyncOpenAI`` on the
shared pooled httpx client of ``app.nodes.http``, so the connection pool is shared and
every request passes the egress guard. The SDK's
request hook (``_prepare_request``) vets each request's target with the operator's
policy narrowed by the node's ``allow_hosts`` (as the ``http`` node vets its URL) and
marks it vetted for the shared client's own hook. The SDK connects by name, so the DNS
rebinding caveat of ``vet_request`` applies. The SDK never reads the process's
``OPENAI_*`` environment on the node's behalf: the key is always passed explicitly, and
the organisation and project headers it would take from there are dropped.

Retries are the engine's, never the SDK's (``max_retries=0``): an error's kind decides.

    NodeError
    ├── NodeConfigError [config]              the resolved config is invalid, the key's
    │                                         environment variable is not set
    ├── NodeTimeoutError [timeout]            a connect or a read took over ``timeout``
    └── NodeExecutionError [execution]
        ├── LlmOutputError [execution]        the text is not JSON matching response_format
        ├── LlmUnavailableError [execution]   429, 408, 409, 5xx, a connection that failed
        │                                     or broke off mid-stream: retried by the
        │                                     node's retry policy; ``retry_after`` holds
        │                                     the server's Retry-After in seconds
        ├── LlmRejectedError [config]         any other 4xx: the request as configured is
        │                                     refused (model, parameters, key), and the
        │                                     engine does not retry kind ``config``
        └── ForbiddenTargetError [forbidden_target]   the egress policy refused the target

The engine's backoff reads ``retry_after``: a retry waits at least as long as the server
asked (``Retry-After``), never past the policy's ``max_delay``.

The key never appears in events, outputs or errors: messages from the server have it
replaced by ``***`` (a key from a secret is masked by the run's resolver as well).
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

import httpx
from pydantic import ValidationError

from app.engine import (
    BaseNode,
    NodeConfigError,
    NodeContext,
    NodeExecutionError,
    NodeRegistry,
    NodeResult,
    WorkflowContext,
    check_input,
)
from app.nodes.egress import TargetPolicy, redact_url
from app.nodes.http import shared_http_client
from app.nodes.llm_config import LlmConfig
from app.nodes.secrets import SecretStrings

__all__ = ["LlmConfig", "LlmNode", "LlmOutputError", "LlmRejectedError", "LlmUnavailableError"]

_RESOLVED = {"resolved": True}


class LlmOutputError(NodeExecutionError):
    """The answer is not JSON, or does not match the config's ``response_format``."""


class LlmUnavailableError(NodeExecutionError):
    """The endpoint could not answer now (rate limited, overloaded, unreachable, or the
    stream broke off): a retry may succeed. ``status`` is the HTTP status (None for a
    connection failure), ``retry_after`` the seconds the server asked to wait."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class LlmRejectedError(NodeExecutionError):
    """The endpoint refused the request (a 4xx other than 408, 409 and 429): the same
    request fails the same way, so its kind is ``config``, which is not retried."""

    kind = "config"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _config(raw: Any) -> LlmConfig:
    try:
        return LlmConfig.model_validate(raw, context=_RESOLVED)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise NodeConfigError(f"invalid config once resolved: {problems}") from None


def _parsed_arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # as the model wrote it: the graph may still route on the name


def _structured(text: str, schema: dict[str, Any]) -> Any:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LlmOutputError(f"the answer is not JSON ({exc}), as response_format asks") from None
    problems = check_input(schema, data, "data")
    if problems:
        raise LlmOutputError("the answer does not match response_format: " + "; ".join(problems))
    return data


@NodeRegistry.register("llm")
class LlmNode(BaseNode):
    """Calls an OpenAI-compatible Chat Completions endpoint and outputs the answer
    (streamed as ``node.token`` events by default); see the module docstring."""

    config_model = LlmConfig
    config: LlmConfig
    secret_fields = frozenset({"api_key"})
    _policy: TargetPolicy | None = None
    _secret_key: SecretStrings[str] | None = None

    def cacheable_call(self, config: Any) -> bool:
        """Never cached by a run-wide cache: only a node's own ``cache`` policy caches
        it (the key then covers the model, the messages and every parameter)."""
        return False

    def breaker_key(self, config: Any) -> str:
        """The endpoint's origin, so one failing provider does not open the breaker of
        every other."""
        try:
            url = httpx.URL(str(config.get("base_url", "")))
        except (AttributeError, httpx.InvalidURL):
            return self.type_name
        if not url.host:
            return self.type_name
        return f"{self.type_name}:{url.scheme}://{url.netloc.decode('ascii').lower()}"

    def _target_policy(self) -> TargetPolicy:
        if self._policy is None:
            self._policy = TargetPolicy.from_entries(self.config.allow_hosts)
        return self._policy

    async def _api_key(self, node_context: NodeContext) -> str | None:
        if self.config.api_key_env is not None:
            name = self.config.api_key_env
            value = os.environ.get(name)
            if not value:
                raise NodeConfigError(f"the environment variable {name} (api_key_env) is not set")
            return value
        if self.config.api_key is None:
            return None
        if self._secret_key is None:
            self._secret_key = SecretStrings({"api_key": self.config.api_key})
        filled = await self._secret_key.fill(node_context)
        return filled["api_key"]

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        cfg = _config(node_context.config)
        key = await self._api_key(node_context)
        http_client = shared_http_client(node_context.execution_config.http_pool_size)
        # imported here: the SDK is slow to import, and most processes never call it
        from app.nodes.llm_client import NO_KEY, Call, GuardedOpenAI

        client = GuardedOpenAI(
            allow_hosts=self._target_policy(),
            keyless=key is None,
            base_url=cfg.base_url,
            api_key=key or NO_KEY,
            # the SDK types its client as httpx2's; it takes an httpx client as well
            http_client=cast(Any, http_client),
            max_retries=0,  # the engine retries, by the error's kind
            timeout=cfg.timeout,
        )
        # not closed: closing the SDK client would close the shared pool
        answer = await Call(client, cfg, key).run(node_context)
        text = "".join(answer.parts)
        output: dict[str, Any] = {
            "text": text,
            "finish_reason": answer.finish_reason,
            "tool_calls": [
                {"id": c["id"], "name": c["name"], "arguments": _parsed_arguments(c["arguments"])}
                for _, c in sorted(answer.tool_calls.items())
            ],
            "usage": answer.usage,
            "model": answer.model,
        }
        if cfg.response_format is not None:
            output["data"] = _structured(text, cfg.response_format)
        return NodeResult(output=output, metadata={"base_url": redact_url(httpx.URL(cfg.base_url))})
