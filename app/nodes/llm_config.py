"""The ``llm`` node's config: what a definition may say, checked when it is posted
(templated fields are checked again once resolved, in ``app.nodes.llm``)."""

from __future__ import annotations

import re
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from app.engine import SecretTemplate
from app.nodes.egress import parse_allow_entry

__all__ = ["DEFAULT_TIMEOUT", "LlmConfig"]

DEFAULT_TIMEOUT = 300.0
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _resolved(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("resolved"))


def _is_template(value: object, info: ValidationInfo) -> bool:
    """At definition time a ``{{ }}`` string stands for a value known only when the
    node runs; the config is validated again, resolved, before each request."""
    return not _resolved(info) and isinstance(value, str) and "{{" in value


class LlmConfig(BaseModel):
    """The ``llm`` node's config. ``base_url``, ``model``, ``prompt``, ``system`` and
    the messages take ``{{ expr }}`` templates (``messages`` may also be one template
    that yields the whole list); the other fields are literals."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        description="An OpenAI-compatible API root, e.g. https://api.openai.com/v1."
    )
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] | str | None = Field(
        None, description="Chat messages ({role, content}); or give prompt (+ system)."
    )
    prompt: str | None = Field(None, description="The user message (not with messages).")
    system: str | None = Field(None, description="A system message before the prompt.")
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = Field(
        None,
        description="A JSON schema: the model is asked for JSON that matches it, and the "
        "output's `data` holds it parsed (a mismatch fails the node).",
    )
    tools: list[dict[str, Any]] | None = Field(
        None,
        description="Function definitions ({name, description, parameters}, or the "
        "API's {type: function, function: {...}}); calls come back in `tool_calls`.",
    )
    api_key: str | None = Field(
        None, description="A secret reference: {{ secrets.NAME }} (never a literal)."
    )
    api_key_env: str | None = Field(
        None, description="The name of an environment variable of the worker that holds the key."
    )
    stream: bool = Field(True, description="Stream tokens as node.token events.")
    timeout: float = Field(
        DEFAULT_TIMEOUT,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="Seconds to connect and for each read of the answer; the node's own "
        "`timeout` (or the run's node_timeout) bounds the whole call.",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Narrows the egress policy, as the http node's allow_hosts does.",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str, info: ValidationInfo) -> str:
        if _is_template(value, info):
            return value
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid URL: {exc}") from None
        if not _resolved(info):  # once resolved, the egress guard judges the target
            if url.scheme not in ("http", "https"):
                raise ValueError(f"only http and https URLs are allowed, not {url.scheme!r}")
            if not url.host:
                raise ValueError("the URL has no host")
        return value

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if _is_template(value, info):
                return value
            raise ValueError("must be a list of messages (or one template that yields it)")
        for index, message in enumerate(value or []):
            role = message.get("role")
            if not _is_template(role, info) and role not in ROLES:
                raise ValueError(f"[{index}].role must be one of {sorted(ROLES)}, not {role!r}")
            if "content" not in message and "tool_calls" not in message:
                raise ValueError(f"[{index}] has no content")
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for index, tool in enumerate(value or []):
            function = tool.get("function", tool) if tool.get("type", "function") else tool
            if tool.get("type", "function") != "function":
                raise ValueError(f"[{index}]: only function tools are supported")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError(f"[{index}] needs a function name")
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key_from_a_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        # checked on the definition; once resolved, the reference is still as written
        # (the node fills it in itself)
        if value is None or _resolved(info):
            return value
        template = SecretTemplate.parse(value)
        if template is None or len(template.names) != 1 or any(t.strip() for t in template.texts):
            raise ValueError(
                "api_key holds a literal credential: a definition must not hold one. Store "
                'it as a secret (PUT /v1/secrets/NAME) and reference it: "api_key": '
                '"{{ secrets.NAME }}", or name an environment variable: "api_key_env": "NAME"'
            )
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_allow_entry(entry)
        return value

    @model_validator(mode="after")
    def _one_source_each(self) -> LlmConfig:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give either messages or prompt (with an optional system)")
        if self.messages is not None and self.system is not None:
            raise ValueError("system goes with prompt; with messages, add a system message")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give either api_key or api_key_env, not both")
        return self
