"""What request handlers get from the composition root: the service layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.engine import ExecutionConfig
from app.runtime.health import HealthService
from app.runtime.runs import RunService
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


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
