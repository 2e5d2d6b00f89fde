"""What request handlers get from the composition root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.bus import EventBus
from app.config import Settings
from app.engine import ExecutionConfig
from app.redis_link import RedisLink
from app.runtime.definitions import DefinitionCache
from app.runtime.dispatcher import Dispatcher
from app.store.repository import Store


@dataclass(slots=True)
class Services:
    """Everything the app wires at startup (see app.main)."""

    settings: Settings
    store: Store
    bus: EventBus
    limits: ExecutionConfig
    dispatcher: Dispatcher | None
    definitions: DefinitionCache
    migrations_head: str | None = None
    redis: RedisLink | None = None


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
