"""``create_app(settings)``: the composition root. It wires settings, store, bus and
dispatcher in a typed lifespan; nothing is built at import time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import checkpoints, events, health, runs, workflows
from app.api.deps import Services
from app.api.errors import document_problems, problem
from app.api.errors import install as install_errors
from app.bus import EventBus, LocalEventBus, RedisEventBus, RedisWakeups
from app.cache import MeteredBreakers, RedisCircuitBreakers, ServiceCache
from app.config import Settings
from app.observability import metrics
from app.observability.metrics import HttpMetrics
from app.redis_link import RedisLink
from app.runtime.definitions import DefinitionCache
from app.runtime.dispatcher import Dispatcher
from app.runtime.health import HealthService
from app.runtime.runs import RunService
from app.runtime.streams import EventStreams
from app.runtime.workflows import WorkflowService
from app.store.db import create_engine
from app.store.migrate import head_revision
from app.store.repository import Store


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


async def _connect_redis(settings: Settings) -> RedisLink | None:
    """The Redis link when configured. An unreachable Redis does not stop the replica
    from starting: it starts degraded and the link recovers when Redis answers."""
    if settings.redis_url is None:
        return None
    link = RedisLink(
        settings.redis_url.get_secret_value(),
        pool_size=settings.redis_pool_size,
        timeout=settings.redis_timeout_seconds,
        retry_seconds=settings.redis_retry_seconds,
        prefix=settings.redis_prefix,
    )
    metrics.REDIS_UP.set(1)
    await link.ping()  # marks the link down (and starts probing) if Redis is away
    return link


def _pool_samplers(engine: AsyncEngine, redis: RedisLink | None) -> list[Callable[[], None]]:
    pool = engine.pool

    def database() -> None:
        if isinstance(pool, QueuePool):
            metrics.DB_POOL_IN_USE.set(pool.checkedout())
            metrics.DB_POOL_SIZE.set(pool.checkedin() + pool.checkedout())

    samplers = [database]
    if redis is not None:
        link = redis

        def redis_pool() -> None:
            metrics.REDIS_POOL_IN_USE.set(link.connections_in_use())
            metrics.REDIS_POOL_SIZE.set(link.pool.max_connections)

        samplers.append(redis_pool)
    return samplers


async def _sample_forever(every: float = 5.0) -> None:
    """Keep read-at-scrape gauges fresh for workers that do not serve the scrape."""
    while True:
        metrics.sample()
        await asyncio.sleep(every)


async def _closing_connections(timeout: float = 5.0) -> None:
    """Let the connections SQLAlchemy is still closing finish: it closes one it
    invalidated (a request cancelled in the middle of a query, such as an event stream
    whose client left) in a task of its own, which would otherwise be destroyed pending
    when the event loop ends."""
    current = asyncio.current_task()
    closing = [
        task
        for task in asyncio.all_tasks()
        if task is not current
        and getattr(task.get_coro(), "__qualname__", "").endswith("_terminate_graceful_close")
    ]
    if closing:
        await asyncio.wait(closing, timeout=timeout)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.worker_processes > 1:  # one lease owner per worker process
        settings = settings.model_copy(
            update={"replica_id": f"{settings.replica_id}-{os.getpid()}"}
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url, settings.db_pool_size, settings.db_max_overflow
        )
        store = Store(engine)
        redis = await _connect_redis(settings)
        metrics.WORKFLOW_LABELS.configure(settings.metrics_workflow_labels)
        metrics.BREAKER_LABELS.configure(settings.metrics_breaker_labels)
        samplers = _pool_samplers(engine, redis)
        metrics.SAMPLERS.extend(samplers)
        sampling = asyncio.get_running_loop().create_task(_sample_forever(), name="flowcore-sample")
        bus: EventBus
        wakeups: RedisWakeups | None = None
        if redis is not None:
            redis_bus = RedisEventBus(redis, settings.replica_id)
            if settings.redis_wakeups or (settings.redis_wakeups is None and not store.postgres):
                wakeups = RedisWakeups(redis_bus, store.notifier)
            bus = redis_bus
        else:
            bus = LocalEventBus()
        await bus.start()  # before the dispatcher and before serving
        if wakeups is not None:
            await wakeups.start()
        # the operator's limits and budgets (FLOWCORE_EXECUTION) bound every definition
        # and every value the API takes, as they bound every run
        limits = settings.execution_config()
        definitions = DefinitionCache(limits)
        # a cached result or an open breaker on one replica counts on every replica
        cache = ServiceCache(redis, settings.execution_config().cache_size)
        breakers = RedisCircuitBreakers(redis) if redis is not None else MeteredBreakers()
        dispatcher = (
            Dispatcher(settings, store, bus, definitions, cache=cache, breakers=breakers)
            if settings.dispatcher_enabled
            else None
        )
        app.state.services = Services(
            settings=settings,
            limits=limits,
            workflows=WorkflowService(store, limits),
            runs=RunService(settings, store, definitions),
            streams=EventStreams(settings, store, bus),
            health=HealthService(store, head_revision(), redis, dispatcher is not None),
        )
        if dispatcher is not None:
            await dispatcher.start()
        try:
            yield
        finally:
            if dispatcher is not None:
                await dispatcher.stop()  # its RunQueued(RELEASED) wake-up still goes out
            if wakeups is not None:
                await wakeups.close()
            await bus.close()  # sends what is left in the outbox
            sampling.cancel()
            with suppress(asyncio.CancelledError):
                await sampling
            for sampler in samplers:
                metrics.SAMPLERS.remove(sampler)
            if redis is not None:
                await redis.close()
            await engine.dispose()
            await _closing_connections()

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
