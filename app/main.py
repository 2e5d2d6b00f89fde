"""``create_app(settings)``: the HTTP app of one replica. Its lifespan builds the
replica with ``app.runtime.wiring.build`` (the one composition root) and hands the
service layer to the routers; nothing is built at import time."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import (
    audit,
    checkpoints,
    conversations,
    events,
    health,
    keys,
    runs,
    secrets,
    workflows,
)
from app.api.auth import Authenticate, announce_auth
from app.api.deps import Services
from app.api.errors import document_problems, problem
from app.api.errors import install as install_errors
from app.config import Settings
from app.observability.metrics import HttpMetrics, metrics_response
from app.runtime.wiring import build

logger = logging.getLogger("flowcore.api")

#: request headers a browser page may send (CORS), and response headers it may read
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"]
CORS_RESPONSE_HEADERS = [
    "Location",
    "Idempotent-Replayed",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
]


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with a 413, whether announced by
    Content-Length or streamed in chunks."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large(scope, receive, send)
                return
        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # FastAPI turns an exception raised while it reads the body into a 400;
            # once the limit is crossed, that response is dropped for the 413 below
            if not too_large:
                await send(message)

        with suppress(_TooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if too_large:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "payload-too-large",
            "Payload too large",
            f"the request body exceeds {self.limit} bytes",
            scope.get("path"),
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.worker_processes > 1:  # one lease owner per worker process
        settings = settings.model_copy(
            update={"replica_id": f"{settings.replica_id}-{os.getpid()}"}
        )

    announce_auth(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await build(settings)
        app.state.services = Services(
            settings=settings,
            limits=runtime.limits,
            workflows=runtime.workflows,
            runs=runtime.runs,
            streams=runtime.streams,
            health=runtime.health,
            audit=runtime.audit,
            keys=runtime.keys,
            limiter=runtime.limiter,
            secrets=runtime.secrets,
            conversations=runtime.conversations,
        )
        await runtime.start()
        metrics_server = await _serve_metrics(settings)
        try:
            yield
        finally:
            if metrics_server is not None:
                await metrics_server.stop()
            await runtime.close()

    app = FastAPI(
        title="Flowcore",
        version="0.1.0",
        summary="Durable workflow execution: JSON DAGs, live events, resume from any checkpoint.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    install_errors(app)
    document_problems(app)
    for router in (
        workflows.router,
        runs.router,
        events.router,
        checkpoints.router,
        health.router,
        audit.router,
        keys.router,
        secrets.router,
        conversations.router,
    ):
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(
        Authenticate,
        required=settings.auth_required,
        docs_open=settings.docs_enabled,
        cors_origins=settings.cors_origins,
    )
    if settings.cors_origins:  # outside authentication: a preflight carries no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
            max_age=600,
        )
    app.add_middleware(HttpMetrics)
    return app


class _QuietServer(uvicorn.Server):
    """A second server in the replica's process: the replica's own server handles the
    signals."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _MetricsServer:
    """``/metrics`` on a port of its own, with no key (FLOWCORE_METRICS_PORT): for a
    Prometheus inside the cluster, while the API's ``/metrics`` needs a key."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    async def stop(self) -> None:
        self.server.should_exit = True
        with suppress(Exception):
            await self.task
        await self.server.shutdown()


async def _serve_metrics(settings: Settings) -> _MetricsServer | None:
    if settings.metrics_port is None:
        return None
    scrape = Starlette(routes=[Route("/metrics", metrics_response)])
    config = uvicorn.Config(
        scrape,
        host=settings.host,
        port=settings.metrics_port,
        lifespan="off",
        log_level="warning",
        log_config=None,
    )
    server = _QuietServer(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup()
    except SystemExit:  # uvicorn's way to say the port is taken
        server.started = False
    if not server.started:  # another worker of this replica serves it
        logger.info("the metrics port %s is served elsewhere", settings.metrics_port)
        return None
    task = asyncio.get_running_loop().create_task(server.main_loop(), name="flowcore-metrics")
    return _MetricsServer(server, task)
