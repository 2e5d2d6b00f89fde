"""The ``http`` node's config: what a definition may say, checked when it is posted
(templated fields are checked again once resolved, in ``app.nodes.http``)."""

from __future__ import annotations

import re
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.nodes.egress import parse_allow_entry
from app.nodes.secrets import literal_credentials

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
#: no config reads more than this, whatever it says (the run's max_output_bytes is lower)
MAX_RESPONSE_BYTES_CEILING = 1024 * 1024 * 1024
Scalar = str | int | float | bool | None
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _is_template(value: object, info: ValidationInfo) -> bool:
    """At definition time a ``{{ }}`` string stands for a value known only when the
    node runs; the config is validated again, resolved, before each request."""
    resolved = bool(info.context and info.context.get("resolved"))
    return not resolved and isinstance(value, str) and "{{" in value


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"only http and https URLs are allowed, not {parsed.scheme!r}")
    if not parsed.host:
        raise ValueError("the URL has no host")


class HttpConfig(BaseModel):
    """The ``http`` node's config. Any string field may hold ``{{ expr }}`` templates,
    except ``allow_hosts``."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("GET", description="GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS.")
    url: str = Field(description="An http or https URL.")
    headers: dict[str, str | int | float | bool] = Field(default_factory=dict)
    query: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict, description="Query parameters, merged into the URL's own."
    )
    # aliased: a field named `json` would shadow BaseModel.json
    json_body: Any = Field(None, alias="json", description="A JSON request body (null: no body).")
    body: str | None = Field(None, description="A text request body (not with `json`).")
    timeout: float | str = Field(
        DEFAULT_TIMEOUT, description="Seconds for the whole exchange, redirects included."
    )
    expect_status: int | list[int] | str | None = Field(
        None, description="The status(es) that mean success (default: any 2xx)."
    )
    response: str | None = Field(
        None, description="json | text (default: json if the content type is JSON)."
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Narrows the egress policy: when given, only these host names and "
        "IP networks may be reached (non-public ones only if the operator's policy allows "
        "them).",
    )
    follow_redirects: bool = Field(True, description=f"Follow up to {MAX_REDIRECTS} redirects.")
    max_response_bytes: int = Field(
        DEFAULT_MAX_RESPONSE_BYTES,
        ge=1,
        le=MAX_RESPONSE_BYTES_CEILING,
        description="Largest response body read (never more than the run's max_output_bytes).",
    )
    idempotency_header: str | None = Field(
        "Idempotency-Key",
        description="Header carrying the run's idempotency key on POST and PATCH (null: none).",
    )

    @field_validator("method")
    @classmethod
    def _method(cls, value: str, info: ValidationInfo) -> str:
        if _is_template(value, info):
            return value
        method = value.strip().upper()
        if method not in METHODS:
            raise ValueError(f"unknown HTTP method {value!r}; use one of {sorted(METHODS)}")
        return method

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        if _is_template(value, info):
            # a literal scheme before the first template can still be checked now
            prefix = value.split("{{", 1)[0]
            if "://" in prefix:
                scheme = prefix.split("://", 1)[0].lower()
                if scheme not in ("http", "https"):
                    raise ValueError(f"only http and https URLs are allowed, not {scheme!r}")
            return value
        if info.context and info.context.get("resolved"):
            # only its syntax: the scheme and host of a resolved URL are the SSRF
            # guard's to judge, so a refused target reads as one (forbidden_target)
            try:
                httpx.URL(value)
            except httpx.InvalidURL as exc:
                raise ValueError(f"invalid URL: {exc}") from None
            return value
        _check_url(value)
        return value

    @field_validator("headers", "idempotency_header")
    @classmethod
    def _header_names(cls, value: Any) -> Any:
        names = value if isinstance(value, dict) else [] if value is None else [value]
        for name in names:
            if not _TOKEN.match(name):
                raise ValueError(f"invalid header name {name!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _credentials_from_secrets(cls, value: dict[str, Any], info: ValidationInfo) -> Any:
        # checked on the definition; once resolved, a reference is still there as written
        # (the node fills it in after this model)
        if info.context and info.context.get("resolved"):
            return value
        literal = literal_credentials(value)
        if literal:
            name = literal[0]
            scheme = "" if name.lower() == "x-api-key" else "Bearer "
            example = scheme + "{{ secrets.NAME }}"
            raise ValueError(
                f"{name} holds a literal credential: a definition must not hold one. Store "
                f"it as a secret (PUT /v1/secrets/NAME) and reference it: "
                f'"{name}": "{example}"'
            )
        return value

    @field_validator("body")
    @classmethod
    def _one_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("json_body") is not None:
            raise ValueError("give either `json` or `body`, not both")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float | str, info: ValidationInfo) -> float | str:
        if isinstance(value, str):
            if _is_template(value, info):
                return value
            raise ValueError("must be a number of seconds")
        if not 0 < value < float("inf"):
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("expect_status")
    @classmethod
    def _expect_status(
        cls, value: int | list[int] | str | None, info: ValidationInfo
    ) -> int | list[int] | str | None:
        if isinstance(value, str):
            if _is_template(value, info):
                return value
            raise ValueError("must be a status code or a list of status codes")
        codes = [value] if isinstance(value, int) else value or []
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty list")
        for code in codes:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code")
        return value

    @field_validator("response")
    @classmethod
    def _response(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or _is_template(value, info):
            return value
        if value not in ("json", "text"):
            raise ValueError(f"must be 'json' or 'text', not {value!r}")
        return value

    @field_validator("allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            if "{{" in entry:
                raise ValueError(
                    "allow_hosts is policy and takes no templates, so run input cannot widen it"
                )
            parse_allow_entry(entry)
        return value


# -------------------------------------------------------------------------- exchange
