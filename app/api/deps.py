"""What request handlers get from the composition root: the service layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.engine import ExecutionConfig
from app.runtime.access import ANONYMOUS, Caller
from app.runtime.audit import AuditLog
from app.runtime.health import HealthService
from app.runtime.keys import KeyService
from app.runtime.memory import ConversationService
from app.runtime.ratelimit import RateLimiter
from app.runtime.runs import RunService
from app.runtime.secrets import SecretService
from app.runtime.streams import EventStreams
from app.runtime.workflows import WorkflowService


@dataclass(slots=True)
class Services:
    """Everything the app wires at startup (see app.main)."""

    settings: Settings
    #: the operator's limits and budgets (bodies are checked against them)
    limits: ExecutionConfig
    workflows: WorkflowService
    runs: RunService
    streams: EventStreams
    health: HealthService
    audit: AuditLog
    keys: KeyService
    limiter: RateLimiter
    secrets: SecretService
    conversations: ConversationService


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_caller(request: Request) -> Caller:
    """The caller of this request (authenticated by the Authenticate middleware,
    ``app.api.auth``): ``ANONYMOUS`` when auth is disabled."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return caller if caller is not None else ANONYMOUS


#: every route that acts on a namespace's resources takes this and hands it to the
#: service, which checks it (``app.runtime.access``)
CallerDep = Annotated[Caller, Depends(get_caller)]
