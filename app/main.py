"""``create_app(settings)``: the HTTP app of one replica. Its lifespan builds the
replica with ``app.runtime.wiring.build`` (the one composition root) and hands the
service layer to the routers; nothing is built at import time."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import checkpoints, events, health, runs, workflows
from app.api.deps import Services
from app.api.errors import document_problems, problem
from app.api.errors import install as install_errors
from app.config import Settings
from app.observability.metrics import HttpMetrics
from app.runtime.wiring import build


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
        )
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="Flowcore",
        version="0.1.0",
        summary="Durable workflow execution: JSON DAGs, live events, resume from any checkpoint.",
        lifespan=lifespan,
    )
    install_errors(app)
    document_problems(app)
    for router in (workflows.router, runs.router, events.router, checkpoints.router, health.router):
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HttpMetrics)
    return app
