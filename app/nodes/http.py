"""The ``http`` node type: one HTTP request through a pooled client shared by every
``http`` node, behind a guard against server-side request forgery (SSRF).

Config: ``method`` (GET), ``url``, ``headers``, ``query``, ``json`` or ``body``,
``timeout`` (seconds for the whole exchange, redirects included; 30), ``expect_status``
(an int or a list; default any 2xx), ``response`` (``json``/``text``; default: JSON when
the content type says so), and ``allow_hosts``, ``follow_redirects``,
``max_response_bytes``, ``idempotency_header``.
Output: ``{"status": int, "headers": {name: value}, "body": parsed JSON or text}``.

Errors (error kind in brackets)::

    NodeError
    ├── NodeConfigError [config]          the config, once templates are resolved, is invalid
    ├── NodeTimeoutError [timeout]        no complete response within ``timeout`` seconds
    └── NodeExecutionError [execution]    cannot resolve or connect, a malformed or too
        │                                 large response, too many redirects
        ├── HttpStatusError [execution]   the status is not the expected one
        └── ForbiddenTargetError [forbidden_target]   the SSRF guard refused the target

The SSRF guard is the egress policy of ``app.nodes.egress``, checked before the request
and before every redirect hop (redirects are followed here, never by httpx): only
``http``/``https`` URLs; the operator's deny list refuses, whatever else admits; a
target is refused if *any* of its addresses is not public (see ``forbidden_reason``)
unless the operator's allow list admits it. ``allow_hosts`` only narrows that policy:
when given, the host must be listed exactly, or each of its addresses must lie in a
listed network. Only when no operator policy is installed (the engine used as a library)
does ``allow_hosts`` also admit the non-public targets it lists. ``allow_hosts`` takes no
templates, so run input can never widen or change it.

DNS rebinding (a name that resolves to a public address when checked and to a private
one when connected): a plain-``http`` request is sent to the very address that was
checked (the URL's host is replaced by that IP and the ``Host`` header keeps the name),
so a second lookup never happens. An ``https`` request connects by name, because TLS
must verify the certificate against the name and the shared pool must key connections
by it; a rebound name then reaches an address that cannot present a valid certificate
for it, so the handshake fails before any request is sent. What remains possible is a
TCP connection plus a TLS ClientHello to the rebound address (a port probe, no request).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from pydantic import (
    ValidationError,
)

from app.engine import (
    BaseNode,
    NodeConfigError,
    NodeContext,
    NodeExecutionError,
    NodeRegistry,
    NodeResult,
    NodeTimeoutError,
    WorkflowContext,
)
from app.nodes.egress import (
    ForbiddenTargetError,
    IPAddress,
    TargetPolicy,
    forbidden_reason,
    normalize_host,
    redact_url,
    resolve_host,
    vet_request,
    vet_target,
    vetted_extensions,
)
from app.nodes.http_config import (
    DEFAULT_TIMEOUT,
    MAX_REDIRECTS,
    HttpConfig,
)
from app.nodes.secrets import SecretStrings

__all__ = [
    "ForbiddenTargetError",
    "HttpConfig",
    "HttpNode",
    "HttpStatusError",
    "TargetPolicy",
    "aclose_http_client",
    "forbidden_reason",
    "resolve_host",
    "shared_http_client",
]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "flowcore-http/0.1"

# Headers that may carry credentials: never forwarded to another origin on a redirect.
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "host")
_BODY_HEADERS = ("content-type", "content-length", "transfer-encoding")
_RESOLVED = {"resolved": True}


class HttpStatusError(NodeExecutionError):
    """The response status is not the expected one; ``status`` holds it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------- the shared client

# One client per event loop: a client's connections belong to the loop that opened
# them, and tests (and some embedders) run several loops in one process.
_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def shared_http_client(pool_size: int) -> httpx.AsyncClient:
    """The running loop's pooled client, created on first use with ``pool_size``
    connections (later sizes are ignored: the pool is process-wide, like the knob).

    Every request it sends is vetted by the installed egress policy (``vet_request``),
    so a plugin that calls it gets the operator's policy without asking for it."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        for stale in [other for other in _clients if other.is_closed()]:
            del _clients[stale]
        client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=pool_size,
                # idle connections expire after 5 s anyway, so keeping as many as the
                # pool holds costs little and saves reconnects under bursty load
                max_keepalive_connections=pool_size,
            ),
            timeout=DEFAULT_TIMEOUT,
            follow_redirects=False,  # redirects are followed by HttpNode, hop by hop
            trust_env=False,  # no proxies or .netrc from the environment: see the guard
            # one client serves every run of every tenant: a cookie stored from one
            # response must never be sent with another run's request
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            headers={"User-Agent": USER_AGENT},
            event_hooks={"request": [vet_request]},
        )
        _clients[loop] = client
    return client


async def aclose_http_client() -> None:
    """Close the running loop's shared client (at shutdown; a new one is made on use)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def _http_pool_size(node_context: NodeContext) -> int:
    return node_context.execution_config.http_pool_size


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: httpx.URL
    headers: httpx.Headers
    content: bytes | None
    #: the headers that carry a secret (lower-cased): never sent to another origin
    secret_headers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Plan:
    """One execution's resolved, type-checked config."""

    request: _Request
    timeout: float
    expect: frozenset[int] | None
    response: str | None
    follow_redirects: bool
    max_response_bytes: int


def _header_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _plan(raw: Any, idempotency_key: str, secret_headers: Mapping[str, str] | None = None) -> _Plan:
    """The request ``raw`` (the resolved config) describes; ``secret_headers``: the
    headers that reference secrets, filled in (their resolved value is still the
    reference as written)."""
    try:
        cfg = HttpConfig.model_validate(raw, context=_RESOLVED)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise NodeConfigError(f"invalid config once resolved: {problems}") from None
    # In resolved mode the validators reject strings for these fields.
    if isinstance(cfg.timeout, str) or isinstance(cfg.expect_status, str):
        raise NodeConfigError("timeout and expect_status must resolve to numbers")
    url = httpx.URL(cfg.url)
    if cfg.query:
        url = url.copy_merge_params(cfg.query)
    headers = httpx.Headers({name: _header_text(v) for name, v in cfg.headers.items()})
    for name, value in (secret_headers or {}).items():
        headers[name] = value
    content: bytes | None = None
    if cfg.json_body is not None:
        try:
            text = json.dumps(
                cfg.json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise NodeConfigError(f"json: not serializable as JSON: {exc}") from None
        content = text.encode()
        headers.setdefault("Content-Type", "application/json")
    elif cfg.body is not None:
        content = cfg.body.encode()
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    idem = cfg.idempotency_header
    if idem and cfg.method in ("POST", "PATCH") and idem not in headers:
        # stable across retries and resumes, so a well-behaved server applies it once
        headers[idem] = idempotency_key
    expect = cfg.expect_status
    return _Plan(
        request=_Request(
            cfg.method, url, headers, content, frozenset(n.lower() for n in secret_headers or ())
        ),
        timeout=cfg.timeout,
        expect=None
        if expect is None
        else frozenset([expect] if isinstance(expect, int) else expect),
        response=cfg.response,
        follow_redirects=cfg.follow_redirects,
        max_response_bytes=cfg.max_response_bytes,
    )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, normalize_host(url.host), url.port


def _next_hop(request: _Request, response: httpx.Response) -> _Request | None:
    """The request a redirect response asks for, or None if it is not a redirect."""
    location = response.headers.get("location")
    if response.status_code not in REDIRECT_STATUSES or location is None:
        return None
    try:
        url = request.url.join(location)
    except httpx.InvalidURL as exc:
        raise NodeExecutionError(f"invalid redirect location {location!r}: {exc}") from None
    method, content = request.method, request.content
    headers = request.headers.copy()
    status = response.status_code
    # the same method rewriting as browsers and httpx
    if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
        method, content = "GET", None
        for name in _BODY_HEADERS:
            headers.pop(name, None)
    if _origin(url) != _origin(request.url):
        for name in (*_CREDENTIAL_HEADERS, *request.secret_headers):
            headers.pop(name, None)
    return _Request(method, url, headers, content, request.secret_headers)


def _expected(expect: frozenset[int] | None) -> str:
    if expect is None:
        return "2xx"
    return " or ".join(str(code) for code in sorted(expect))


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Exchange:
    """One execution's request, its redirect hops and the final response."""

    def __init__(self, client: httpx.AsyncClient, policy: TargetPolicy, plan: _Plan) -> None:
        self.client = client
        self.policy = policy
        self.plan = plan
        #: the hop in flight, for error messages
        self.current = plan.request
        self.redirects = 0

    def _describe(self) -> str:
        return f"{self.current.method} {redact_url(self.current.url)}"

    async def run(self) -> NodeResult:
        timeout = self.plan.timeout
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange
            async with asyncio.timeout(timeout):
                return await self._follow()
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise NodeTimeoutError(
                f"{self._describe()}: no complete response within {timeout:g}s"
            ) from exc
        except httpx.ConnectError as exc:
            raise NodeExecutionError(f"{self._describe()}: cannot connect: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise NodeExecutionError(
                f"{self._describe()} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def _follow(self) -> NodeResult:
        while True:
            addresses = await vet_target(self.current.url, self.policy)
            response = await self._send(addresses)
            try:
                hop = _next_hop(self.current, response) if self.plan.follow_redirects else None
                if hop is None:
                    raw = await self._read(response)
                    return self._result(response, raw)
            finally:
                await response.aclose()
            self.redirects += 1
            if self.redirects > MAX_REDIRECTS:
                raise NodeExecutionError(f"{self._describe()}: more than {MAX_REDIRECTS} redirects")
            self.current = hop

    async def _send(self, addresses: list[IPAddress]) -> httpx.Response:
        request = self.current
        url = request.url
        if url.scheme == "https":
            targets = [url]  # by name: TLS verifies the name (module docstring)
        else:
            # the checked addresses themselves, so no second lookup can be rebound
            targets = [url.copy_with(host=str(ip)) for ip in addresses]
        headers = request.headers.copy()
        headers.setdefault("Host", url.netloc.decode("ascii"))
        failure: httpx.ConnectError | None = None
        for target in targets:
            outgoing = self.client.build_request(
                request.method,
                target,
                headers=headers,
                content=request.content,
                timeout=self.plan.timeout,
                # vetted with this node's allow_hosts by _follow: the hook need not again
                extensions=vetted_extensions(target),
            )
            try:
                return await self.client.send(outgoing, stream=True)
            except httpx.ConnectError as exc:  # nothing was sent: try the next address
                failure = exc
        assert failure is not None
        raise failure

    async def _read(self, response: httpx.Response) -> bytes:
        limit = self.plan.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise NodeExecutionError(
                    f"{self._describe()}: the response body exceeds max_response_bytes={limit}"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _result(self, response: httpx.Response, raw: bytes) -> NodeResult:
        status = response.status_code
        plan = self.plan
        ok = 200 <= status < 300 if plan.expect is None else status in plan.expect
        encoding = response.encoding or "utf-8"
        if not ok:
            snippet = raw[:200].decode(encoding, errors="replace")
            detail = f": {snippet}" if snippet.strip() else ""
            raise HttpStatusError(
                f"{self._describe()} returned HTTP {status}, expected {_expected(plan.expect)}"
                f"{detail}",
                status,
            )
        mode = plan.response
        content_type = response.headers.get("content-type")
        body: Any
        if mode == "text" or (mode is None and not _is_json(content_type)):
            body = raw.decode(encoding, errors="replace")
        elif not raw.strip():
            body = None  # e.g. 204 No Content, or a HEAD request
        else:
            try:
                body = json.loads(raw, parse_constant=_reject_constant)
            except ValueError as exc:
                raise NodeExecutionError(
                    f"{self._describe()}: the response body is not valid JSON ({exc}); "
                    'set response: "text" to read it as text'
                ) from None
        return NodeResult(
            output={"status": status, "headers": dict(response.headers.items()), "body": body},
            metadata={"url": redact_url(self.current.url), "redirects": self.redirects},
        )


@NodeRegistry.register("http")
class HttpNode(BaseNode):
    """Sends one HTTP request (following redirects, each hop re-checked by the egress
    policy) and outputs ``{"status", "headers", "body"}``; see the module docstring."""

    config_model = HttpConfig
    config: HttpConfig
    secret_fields = frozenset({"headers"})
    _policy: TargetPolicy | None = None
    _secret_headers: SecretStrings[str] | None = None

    def _target_policy(self) -> TargetPolicy:
        # from the unresolved config: allow_hosts takes no templates, and it is the
        # same for every run of this compiled workflow, so it is parsed once
        if self._policy is None:
            self._policy = TargetPolicy.from_entries(self.config.allow_hosts)
        return self._policy

    def cacheable_call(self, config: Any) -> bool:
        """With caching on for a whole run, only safe methods are served from the cache;
        a node with its own ``cache`` policy is cached whatever its method."""
        method = str(config.get("method", "GET")) if isinstance(config, dict) else "GET"
        return method.upper() in ("GET", "HEAD")

    def breaker_key(self, config: Any) -> str:
        """The circuit-breaker key of a call: its target origin, so one failing host
        does not open the breaker for every other host this node type calls."""
        try:
            url = httpx.URL(str(config.get("url", "")))
        except (AttributeError, httpx.InvalidURL):
            return self.type_name
        if not url.host:
            return self.type_name
        return f"{self.type_name}:{url.scheme}://{url.netloc.decode('ascii').lower()}"

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        # the definition's header values that reference secrets (parsed once), filled
        # in for this execution only
        if self._secret_headers is None:
            self._secret_headers = SecretStrings(self.config.headers)
        filled = await self._secret_headers.fill(node_context)
        plan = _plan(node_context.config, node_context.idempotency_key, filled)
        # a body larger than the run's output budget could never be its output: stop
        # reading there rather than hold it in memory
        cap = node_context.execution_config.max_output_bytes
        if plan.max_response_bytes > cap:
            plan = dataclasses.replace(plan, max_response_bytes=cap)
        client = shared_http_client(_http_pool_size(node_context))
        return await _Exchange(client, self._target_policy(), plan).run()
