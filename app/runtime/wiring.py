"""``build(settings)``: the one composition root. It wires the database, Redis, the
event bus, wake-ups, the cache and breakers, the dispatcher and the service layer from
the settings, once; ``create_app`` serves it, the benchmarks drive it. Nothing is built
at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.bus import EventBus, LocalEventBus, RedisEventBus, RedisWakeups
from app.cache import MeteredBreakers, RedisCircuitBreakers, ServiceCache
from app.config import Settings
from app.engine import ExecutionConfig
from app.nodes.egress import EgressPolicy, install_egress_policy
from app.nodes.llm_calls import observe_llm_calls
from app.observability import metrics
from app.redis_link import RedisLink
from app.runtime.audit import AuditLog
from app.runtime.definitions import DefinitionCache
from app.runtime.dispatcher import Dispatcher
from app.runtime.health import HealthService
from app.runtime.keys import KeyService
from app.runtime.memory import ConversationService
from app.runtime.ratelimit import RateLimiter
from app.runtime.runs import RunService
from app.runtime.secrets import SecretBox, SecretService
from app.runtime.streams import EventStreams
from app.runtime.workflows import WorkflowService
from app.store import Store, open_store
from app.store.db import create_engine
from app.store.migrate import head_revision

#: model names with a label value of their own in the ``flowcore_llm_*`` metrics
MODEL_LABEL_LIMIT = 50


@dataclass(slots=True)
class Runtime:
    """Everything one replica runs, built by ``build`` and torn down by ``close``."""

    settings: Settings
    #: the operator's limits and budgets (FLOWCORE_EXECUTION): they bound every
    #: definition and value the API takes, as they bound every run
    limits: ExecutionConfig
    engine: AsyncEngine
    store: Store
    bus: EventBus
    redis: RedisLink | None
    dispatcher: Dispatcher | None
    workflows: WorkflowService
    runs: RunService
    streams: EventStreams
    health: HealthService
    audit: AuditLog
    keys: KeyService
    limiter: RateLimiter
    secrets: SecretService
    conversations: ConversationService
    wakeups: RedisWakeups | None = None
    _samplers: list[Callable[[], None]] = field(default_factory=list)
    _sampling: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start claiming runs (the bus is running already)."""
        if self.dispatcher is not None:
            await self.dispatcher.start()

    async def close(self) -> None:
        """Give this replica's runs back, flush what is left to send, close everything."""
        if self.dispatcher is not None:
            await self.dispatcher.stop()  # its RunQueued(RELEASED) wake-up still goes out
        if self.wakeups is not None:
            await self.wakeups.close()
        await self.bus.close()  # sends what is left in the outbox
        if self._sampling is not None:
            self._sampling.cancel()
            with suppress(asyncio.CancelledError):
                await self._sampling
        for sampler in self._samplers:
            metrics.SAMPLERS.remove(sampler)
        if self.redis is not None:
            await self.redis.close()
        self.keys.close()
        await self.audit.settle()  # entries whose requests were cancelled
        await self.store.close()
        await self.engine.dispose()
        await _closing_connections()


async def build(
    settings: Settings,
    *,
    store_factory: Callable[[AsyncEngine], Store] = open_store,
    dispatcher: bool | None = None,
) -> Runtime:
    """Wire one replica from ``settings`` (``dispatcher``: override
    ``dispatcher_enabled``; ``store_factory``: another store, for the benchmarks)."""
    install_egress_policy(EgressPolicy.from_settings(settings))  # a bad entry stops here
    secret_box = SecretBox.from_setting(settings.secret_key)  # so does a bad secret key
    engine = create_engine(settings.database_url, settings.db_pool_size, settings.db_max_overflow)
    store = store_factory(engine)
    redis = await _connect_redis(settings)
    metrics.WORKFLOW_LABELS.configure(settings.metrics_workflow_labels)
    metrics.BREAKER_LABELS.configure(settings.metrics_breaker_labels)
    metrics.MODEL_LABELS.configure(MODEL_LABEL_LIMIT)
    observe_llm_calls(metrics.record_llm_call)
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
    limits = settings.execution_config()
    definitions = DefinitionCache(limits)
    # a cached result or an open breaker on one replica counts on every replica
    cache = ServiceCache(redis, limits.cache_size)
    breakers = RedisCircuitBreakers(redis) if redis is not None else MeteredBreakers()
    enabled = settings.dispatcher_enabled if dispatcher is None else dispatcher
    secrets = SecretService(store, secret_box)
    runner = (
        Dispatcher(
            settings, store, bus, definitions, cache=cache, breakers=breakers, secrets=secrets
        )
        if enabled
        else None
    )
    samplers = _pool_samplers(engine, redis)
    metrics.SAMPLERS.extend(samplers)
    sampling = asyncio.get_running_loop().create_task(_sample_forever(), name="flowcore-sample")
    audit = AuditLog(store)
    secrets.audit = audit
    bootstrap = settings.bootstrap_admin_key
    keys = KeyService(
        store,
        bootstrap_key=bootstrap.get_secret_value() if bootstrap is not None else None,
        cache_seconds=settings.auth_cache_seconds,
        audit=audit,
    )
    return Runtime(
        settings=settings,
        limits=limits,
        engine=engine,
        store=store,
        bus=bus,
        redis=redis,
        dispatcher=runner,
        workflows=WorkflowService(store, limits, audit),
        runs=RunService(settings, store, definitions, audit),
        streams=EventStreams(settings, store, bus),
        health=HealthService(
            store, head_revision(), redis, runner is not None, settings.auth_required
        ),
        audit=audit,
        keys=keys,
        limiter=RateLimiter(redis),
        secrets=secrets,
        conversations=ConversationService(store),
        wakeups=wakeups,
        _samplers=samplers,
        _sampling=sampling,
    )


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
