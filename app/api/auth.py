"""Authentication of every request: who is calling (``app.runtime.access.Caller``).

``Authenticate`` (an ASGI middleware, so that no route can be reached around it) reads
``Authorization: Bearer <key>``, puts the caller in ``request.state.caller`` and counts
the request against the key's and the namespace's rate limits (a 429 past them); the
routes hand the caller to the service layer, which authorizes (role, namespace). Open without a
key: ``/healthz``, ``/readyz``, and the API docs when ``docs_enabled``. Everything else
without a valid key is a 401 that says no more than that.

With ``FLOWCORE_AUTH=disabled`` every request is ``ANONYMOUS`` (an admin of namespace
``default``); then a state-changing request a browser sends from another origin is
refused (403), since a page could otherwise make a visitor's browser cancel runs:
browsers always send ``Origin`` with a cross-origin POST, PUT, PATCH or DELETE, and
``Sec-Fetch-Site`` says ``cross-site``. With auth required this needs no check: a page
cannot make a browser send the bearer header without the CORS preflight the API
answers only for ``cors_origins``.
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import problem, rate_limited, unauthenticated
from app.api.ratelimit import RateLimitExceeded, check_rate
from app.config import Settings
from app.runtime.access import ANONYMOUS, Caller, Unauthenticated

logger = logging.getLogger("flowcore.api")

#: paths that need no key
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Authenticate:
    """Sets ``scope["state"]["caller"]`` for every HTTP request, or answers 401/403."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        required: bool,
        docs_open: bool,
        cors_origins: list[str],
    ) -> None:
        self.app = app
        self.required = required
        self.open_paths = OPEN_PATHS | DOCS_PATHS if docs_open else OPEN_PATHS
        self.cors_origins = frozenset(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in self.open_paths:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        source = client[0] if client else None
        if not self.required:
            if scope["method"] in _UNSAFE and self._cross_site(scope):
                response = problem(
                    403,
                    "cross-site",
                    "Cross-site request refused",
                    "a state-changing request from another origin (auth is disabled, so "
                    "only origins in FLOWCORE_CORS_ORIGINS may make one)",
                    path,
                )
                await response(scope, receive, send)
                return
            caller = ANONYMOUS if source is None else _with_source(ANONYMOUS, source)
            scope.setdefault("state", {})["caller"] = caller
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        services = getattr(scope["app"].state, "services", None)
        if token is None or services is None:
            await unauthenticated(path)(scope, receive, send)
            return
        try:
            caller = await services.keys.authenticate(token, source)
        except Unauthenticated:
            await unauthenticated(path)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        try:  # the key's and the namespace's rate limits (api/ratelimit.py)
            headers = await check_rate(
                services.limiter, services.settings, caller.key_id, caller.namespace
            )
        except RateLimitExceeded as exc:
            await rate_limited(exc, path)(scope, receive, send)
            return
        if not headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _cross_site(self, scope: Scope) -> bool:
        origin = site = host = None
        for name, value in scope.get("headers", []):
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"sec-fetch-site":
                site = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
        if origin is None and site is None:
            return False  # not a browser's request from a page
        if "*" in self.cors_origins or (origin is not None and origin in self.cors_origins):
            return False
        if site is not None:
            return site not in ("same-origin", "none")
        # an Origin and no Sec-Fetch-Site (an older browser): is it this very host?
        return origin == "null" or (origin or "").partition("://")[2] != host


_announced: list[bool] = []


def announce_auth(settings: Settings) -> None:
    """Say, once per process and first thing (``flowcore serve`` calls this before
    anything else logs), that auth is off when it is."""
    if settings.auth_required or _announced:
        return
    _announced.append(True)
    logger.warning(
        "auth is disabled: every request acts as an admin of namespace 'default', "
        "for anyone who reaches %s:%s (FLOWCORE_AUTH=required turns API keys on; "
        "docs/security.md)",
        settings.host,
        settings.port,
    )


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def _with_source(caller: Caller, source: str) -> Caller:
    return Caller(caller.namespace, caller.role, caller.key_id, caller.system, source)
