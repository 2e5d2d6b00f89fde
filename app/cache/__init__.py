"""The service's shared cache and circuit breakers: Redis-backed implementations of the
engine's ``Cache`` and ``CircuitBreakerStore`` ports, each falling back to in-process
state while Redis is unavailable, and the metered in-process breakers used without
Redis."""

from app.cache.breakers import MeteredBreakers, RedisCircuitBreakers
from app.cache.redis_cache import RedisCache, ServiceCache, WorkflowCache

__all__ = [
    "MeteredBreakers",
    "RedisCache",
    "RedisCircuitBreakers",
    "ServiceCache",
    "WorkflowCache",
]
