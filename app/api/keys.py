"""API keys, for admins: create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from app.api.body import CheckedRoute
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import problems
from app.api.schemas import _In
from app.runtime.access import NAMESPACE_PATTERN, Role
from app.runtime.errors import InvalidValue
from app.runtime.keys import KeyRecord, parse_duration

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    route_class=CheckedRoute,
    responses=problems(401, 403, 422, 500),
)

KeyIdPath = Annotated[
    str, Path(pattern="^[0-9a-f]{12}$", description="A key's public id (12 hex digits).")
]


class KeyCreate(_In):
    namespace: str | None = Field(
        None,
        pattern=NAMESPACE_PATTERN,
        description="The key's namespace (default: the caller's; another one needs the "
        "bootstrap key).",
    )
    role: Role
    name: str | None = Field(None, max_length=200, pattern="^[^\\u0000]*$")
    expires_in: str | None = Field(
        None, max_length=16, description="How long it lives: 30d, 12h, 90m, 3600s."
    )


class KeyOut(BaseModel):
    id: str = Field(description="The key's public id: what logs and the audit log name.")
    namespace: str
    role: Role
    name: str | None
    created_at: float
    created_by: str | None
    expires_at: float | None
    revoked_at: float | None


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself. It is shown this once; only its hash is kept.")


class KeyList(BaseModel):
    items: list[KeyOut]


def key_out(record: KeyRecord) -> KeyOut:
    return KeyOut(
        id=record.id,
        namespace=record.namespace,
        role=Role(record.role),
        name=record.name,
        created_at=record.created_at,
        created_by=record.created_by,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
    )


@router.post("", status_code=201, response_model=KeyCreated, responses=problems(413))
async def create_key(body: KeyCreate, services: ServicesDep, caller: CallerDep) -> KeyCreated:
    """Create a key of a role in a namespace. The response holds the key, once."""
    expires_in = None
    if body.expires_in is not None:
        try:
            expires_in = parse_duration(body.expires_in)
        except ValueError as exc:
            raise InvalidValue("expires_in", str(exc)) from None
    created = await services.keys.create(
        caller, namespace=body.namespace, role=body.role, name=body.name, expires_in=expires_in
    )
    return KeyCreated(**key_out(created.record).model_dump(), key=created.key)


@router.get("", response_model=KeyList)
async def list_keys(
    services: ServicesDep,
    caller: CallerDep,
    namespace: Annotated[
        str | None,
        Query(pattern=NAMESPACE_PATTERN, description="Only this namespace's (bootstrap key)."),
    ] = None,
) -> KeyList:
    """The namespace's keys, revoked and expired ones included (never the keys)."""
    return KeyList(items=[key_out(k) for k in await services.keys.listing(caller, namespace)])


@router.delete("/{key_id}", status_code=204, responses=problems(404))
async def revoke_key(key_id: KeyIdPath, services: ServicesDep, caller: CallerDep) -> Response:
    """Revoke a key: every replica refuses it within a second (at once where it hears
    Postgres or Redis notifications; else within FLOWCORE_AUTH_CACHE_SECONDS)."""
    await services.keys.revoke(caller, key_id)
    return Response(status_code=204)
