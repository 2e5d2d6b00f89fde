"""Secrets of the caller's namespace, write-only: set (admins), list names and times
(writers), delete (admins). No response ever holds a value (docs/security.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from app.api.body import CheckedRoute
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import problems
from app.api.schemas import _In
from app.runtime.secrets import MAX_SECRET_BYTES, SECRET_NAME_PATTERN, SecretInfo

router = APIRouter(
    prefix="/v1/secrets",
    tags=["secrets"],
    route_class=CheckedRoute,
    responses=problems(401, 403, 422, 500, 503),
)

SecretNamePath = Annotated[
    str,
    Path(
        pattern=SECRET_NAME_PATTERN,
        description="A secret's name: a letter or _, then letters, digits and _ (at most "
        "128); workflows reference it as {{ secrets.NAME }}.",
    ),
]


class SecretIn(_In):
    value: str = Field(
        min_length=1,
        max_length=MAX_SECRET_BYTES,
        pattern="^[^\\u0000]*$",
        description=f"The value (at most {MAX_SECRET_BYTES} bytes as UTF-8). It is stored "
        "encrypted and never returned.",
    )


class SecretOut(BaseModel):
    """A secret as the API shows it: never its value."""

    name: str
    created_at: float
    updated_at: float = Field(description="When its value was last set.")


class SecretList(BaseModel):
    items: list[SecretOut]


def secret_out(info: SecretInfo) -> SecretOut:
    return SecretOut(name=info.name, created_at=info.created_at, updated_at=info.updated_at)


@router.put(
    "/{name}",
    response_model=SecretOut,
    responses={201: {"model": SecretOut, "description": "Created"}, **problems(413)},
)
async def put_secret(
    name: SecretNamePath,
    body: SecretIn,
    services: ServicesDep,
    caller: CallerDep,
    response: Response,
) -> SecretOut:
    """Set a secret: 201 when it is new, 200 when its value was replaced (runs that
    already read the old value keep it until they end)."""
    info, created = await services.secrets.put(caller, name, body.value)
    if created:
        response.status_code = 201
        response.headers["Location"] = f"/v1/secrets/{name}"
    return secret_out(info)


@router.get("", response_model=SecretList)
async def list_secrets(services: ServicesDep, caller: CallerDep) -> SecretList:
    """The namespace's secrets by name, with when each was set: never a value."""
    return SecretList(items=[secret_out(s) for s in await services.secrets.listing(caller)])


@router.delete("/{name}", status_code=204, responses=problems(404))
async def delete_secret(name: SecretNamePath, services: ServicesDep, caller: CallerDep) -> Response:
    """Delete a secret; runs that reference it afterwards fail, naming it."""
    await services.secrets.delete(caller, name)
    return Response(status_code=204)
