"""Readiness: the database answers and is migrated to head; Redis's state is reported
(a Redis outage degrades the replica, in-process fallbacks serve, it stays ready)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.redis_link import RedisLink
from app.store.repository import Store


@dataclass(frozen=True, slots=True)
class Readiness:
    """``ready``, ``status`` (ready, degraded, not ready) and what each check found."""

    ready: bool
    status: str
    checks: dict[str, Any]


class HealthService:
    def __init__(
        self,
        store: Store,
        migrations_head: str | None,
        redis: RedisLink | None,
        dispatcher_enabled: bool,
        auth_required: bool = True,
    ) -> None:
        self.auth = "required" if auth_required else "disabled"
        self.store = store
        self.migrations_head = migrations_head
        self.redis = redis
        self.dispatcher_enabled = dispatcher_enabled

    async def readiness(self) -> Readiness:
        checks: dict[str, Any] = {}
        ready = True
        try:
            checks["database_latency_ms"] = round(await self.store.ping() * 1000, 2)
            current = await self.store.current_revision()
            checks["migration"] = current
            if current != self.migrations_head:
                ready = False
                checks["migration_expected"] = self.migrations_head
        except Exception as exc:
            ready = False
            checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["dispatcher"] = "on" if self.dispatcher_enabled else "off"
        checks["auth"] = self.auth
        degraded = False
        if self.redis is None:
            checks["redis"] = {"state": "not configured"}
        else:
            latency = await self.redis.ping()
            redis = self.redis.status()
            if latency is not None:
                redis["latency_ms"] = round(latency * 1000, 2)
            checks["redis"] = redis
            degraded = redis["state"] != "up"
        status = "not ready" if not ready else "degraded" if degraded else "ready"
        return Readiness(ready, status, checks)
