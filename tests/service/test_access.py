"""Who may do what, through the real HTTP API with API keys required, on SQLite and
Postgres: the access matrix of every operation the OpenAPI document lists, times every kind
of credential, generated from the document (a route without a rule here fails)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.fernet import Fernet

from app.main import create_app
from app.runtime.access import Role
from app.runtime.keys import key_hash, mint
from app.store import open_store
from app.store.db import create_engine
from tests.service.support import MakeSettings, Serve, chain, transform, unique

BOOTSTRAP = "bootstrap-" + "b" * 40
NS, OTHER = "team-a", "team-b"
GATE = {"id": "gate", "type": "wait", "config": {"signal": "go"}}


@dataclass
class Op:
    """One operation: who may (``role``; None: anyone), how to call it, what it says
    when it may, and whether it acts on one resource of the namespace (``resource``:
    another namespace's key gets 404) or on the caller's own (lists, creations)."""

    role: Role | None
    call: Callable[[Ctx, httpx.AsyncClient], Awaitable[httpx.Response]]
    ok: tuple[int, ...]
    resource: bool = False


@dataclass
class Ctx:
    """Team A's resources (made with its admin key) and the ways to make fresh ones."""

    admin: httpx.AsyncClient
    workflow_id: str = ""
    run_id: str = ""
    checkpoint_id: str = ""
    conversation_id: str = ""
    made: list[str] = field(default_factory=list)
    chat_id: str = ""

    async def workflow(self) -> str:
        workflow_id = unique("acc")
        definition = chain(workflow_id, GATE, transform("done", v="1"))
        response = await self.admin.post("/v1/workflows", json=definition)
        assert response.status_code == 201, response.text
        return workflow_id

    async def waiting_run(self) -> tuple[str, str]:
        """A run waiting for a signal, and its latest checkpoint."""
        response = await self.admin.post(
            "/v1/runs", json={"workflow_id": self.workflow_id}, params={"wait": 10}
        )
        assert response.status_code in (200, 202), response.text
        run_id = response.json()["run_id"]
        for _ in range(400):
            found = await self.admin.get(f"/v1/runs/{run_id}/checkpoints")
            if found.status_code == 200 and found.json():
                return run_id, found.json()[-1]["id"]
            await _tick()
        raise AssertionError("the run never checkpointed")

    async def conversation(self) -> str:
        """A conversation a run's ``memory`` node appended to."""
        if not self.chat_id:
            self.chat_id = unique("chat")
            append = {
                "conversation": "{{ input.session }}",
                "op": "append",
                "message": {"role": "user", "content": "hi"},
            }
            definition = chain(self.chat_id, {"id": "m", "type": "memory", "config": append})
            made = await self.admin.post("/v1/workflows", json=definition)
            assert made.status_code == 201, made.text
        session = unique("conv")
        response = await self.admin.post(
            "/v1/runs",
            json={"workflow_id": self.chat_id, "input": {"session": session}},
            params={"wait": 10},
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded", response.text
        return session

    async def key(self, role: str = "reader") -> str:
        response = await self.admin.post("/v1/keys", json={"role": role})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.025)


async def _fresh_run(ctx: Ctx) -> str:
    return (await ctx.waiting_run())[0]


async def _fresh_checkpoint(ctx: Ctx) -> str:
    return (await ctx.waiting_run())[1]


#: (method, path template) -> its rule; the test fails when the OpenAPI document has an
#: operation not listed here, or this lists one it does not have
ACCESS: dict[tuple[str, str], Op] = {
    ("get", "/healthz"): Op(None, lambda c, h: h.get("/healthz"), (200,)),
    ("get", "/readyz"): Op(None, lambda c, h: h.get("/readyz"), (200,)),
    ("get", "/metrics"): Op(Role.METRICS, lambda c, h: h.get("/metrics"), (200,)),
    ("post", "/v1/workflows"): Op(
        Role.WRITER,
        lambda c, h: h.post("/v1/workflows", json=chain(unique("w"), transform("t", v="1"))),
        (201,),
    ),
    ("post", "/v1/workflows/validate"): Op(
        Role.READER,
        lambda c, h: h.post("/v1/workflows/validate", json=chain("v", transform("t", v="1"))),
        (200,),
    ),
    ("get", "/v1/workflows"): Op(Role.READER, lambda c, h: h.get("/v1/workflows"), (200,)),
    ("get", "/v1/workflows/{workflow_id}"): Op(
        Role.READER, lambda c, h: h.get(f"/v1/workflows/{c.workflow_id}"), (200,), True
    ),
    ("get", "/v1/workflows/{workflow_id}/versions/{version}"): Op(
        Role.READER,
        lambda c, h: h.get(f"/v1/workflows/{c.workflow_id}/versions/1"),
        (200,),
        True,
    ),
    ("delete", "/v1/workflows/{workflow_id}"): Op(
        Role.WRITER, lambda c, h: _archive(c, h), (204,), True
    ),
    ("post", "/v1/runs"): Op(
        Role.WRITER,
        lambda c, h: h.post("/v1/runs", json={"workflow_id": c.workflow_id}),
        (202,),
        True,  # it names team A's workflow: another namespace has none of that id
    ),
    ("get", "/v1/runs"): Op(Role.READER, lambda c, h: h.get("/v1/runs"), (200,)),
    ("get", "/v1/runs/{run_id}"): Op(
        Role.READER, lambda c, h: h.get(f"/v1/runs/{c.run_id}"), (200,), True
    ),
    ("post", "/v1/runs/{run_id}/cancel"): Op(Role.WRITER, lambda c, h: _cancel(c, h), (202,), True),
    ("post", "/v1/runs/{run_id}/signal"): Op(
        Role.WRITER,
        lambda c, h: h.post(f"/v1/runs/{c.run_id}/signal", json={"name": "nope"}),
        (202,),
        True,
    ),
    ("get", "/v1/runs/{run_id}/trace"): Op(
        Role.READER, lambda c, h: h.get(f"/v1/runs/{c.run_id}/trace"), (200,), True
    ),
    ("get", "/v1/runs/{run_id}/state"): Op(
        Role.READER, lambda c, h: h.get(f"/v1/runs/{c.run_id}/state"), (200,), True
    ),
    ("get", "/v1/runs/{run_id}/events"): Op(
        Role.READER,
        lambda c, h: h.get(f"/v1/runs/{c.run_id}/events", headers={"Accept": "application/json"}),
        (200,),
        True,
    ),
    ("get", "/v1/runs/{run_id}/checkpoints"): Op(
        Role.READER, lambda c, h: h.get(f"/v1/runs/{c.run_id}/checkpoints"), (200,), True
    ),
    ("get", "/v1/checkpoints/{checkpoint_id}"): Op(
        Role.READER, lambda c, h: h.get(f"/v1/checkpoints/{c.checkpoint_id}"), (200,), True
    ),
    ("post", "/v1/checkpoints/{checkpoint_id}/resume"): Op(
        Role.WRITER, lambda c, h: _fork(c, h), (202,), True
    ),
    ("post", "/v1/keys"): Op(
        Role.ADMIN, lambda c, h: h.post("/v1/keys", json={"role": "reader"}), (201,)
    ),
    ("get", "/v1/keys"): Op(Role.ADMIN, lambda c, h: h.get("/v1/keys"), (200,)),
    ("delete", "/v1/keys/{key_id}"): Op(Role.ADMIN, lambda c, h: _revoke(c, h), (204,), True),
    ("get", "/v1/audit"): Op(Role.ADMIN, lambda c, h: h.get("/v1/audit"), (200,)),
    ("put", "/v1/secrets/{name}"): Op(
        Role.ADMIN,
        lambda c, h: h.put(f"/v1/secrets/S_{uuid.uuid4().hex[:8]}", json={"value": "v"}),
        (201,),
    ),
    ("get", "/v1/secrets"): Op(Role.WRITER, lambda c, h: h.get("/v1/secrets"), (200,)),
    ("delete", "/v1/secrets/{name}"): Op(
        Role.ADMIN, lambda c, h: _delete_secret(c, h), (204,), True
    ),
    ("get", "/v1/conversations/{conversation_id}"): Op(
        Role.READER, lambda c, h: h.get(f"/v1/conversations/{c.conversation_id}"), (200,), True
    ),
    ("delete", "/v1/conversations/{conversation_id}"): Op(
        Role.WRITER, lambda c, h: _forget(c, h), (204,), True
    ),
}


async def _delete_secret(ctx: Ctx, client: httpx.AsyncClient) -> httpx.Response:
    name = f"S_{uuid.uuid4().hex[:8]}"
    made = await ctx.admin.put(f"/v1/secrets/{name}", json={"value": "v"})
    assert made.status_code == 201, made.text
    return await client.delete(f"/v1/secrets/{name}")


async def _forget(ctx: Ctx, client: httpx.AsyncClient) -> httpx.Response:
    return await client.delete(f"/v1/conversations/{await ctx.conversation()}")


async def _archive(ctx: Ctx, client: httpx.AsyncClient) -> httpx.Response:
    return await client.delete(f"/v1/workflows/{await ctx.workflow()}")


async def _cancel(ctx: Ctx, client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(f"/v1/runs/{await _fresh_run(ctx)}/cancel")


async def _fork(ctx: Ctx, client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        f"/v1/checkpoints/{await _fresh_checkpoint(ctx)}/resume", json={"fork": True}
    )


async def _revoke(ctx: Ctx, client: httpx.AsyncClient) -> httpx.Response:
    return await client.delete(f"/v1/keys/{await ctx.key()}")


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }


def test_every_operation_has_an_access_rule(make_settings: MakeSettings) -> None:
    document = create_app(make_settings(auth="required")).openapi()
    assert _operations(document) == set(ACCESS), (
        "operations without a rule:",
        sorted(_operations(document) - set(ACCESS)),
        "rules without an operation:",
        sorted(set(ACCESS) - _operations(document)),
    )


@asynccontextmanager
async def _as(base: httpx.AsyncClient, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=base.base_url, headers=headers, timeout=20) as client:
        yield client


async def _stored_key(url: str, namespace: str, role: str, expires_at: float | None) -> str:
    """A key put straight into the database (an expired one cannot be made otherwise)."""
    engine = create_engine(url, 1, 0)
    store = open_store(engine)
    try:
        key, key_id = mint()
        await store.create_key(key_id, key_hash(key), namespace, role, expires_at=expires_at)
        return key
    finally:
        await store.close()
        await engine.dispose()


async def test_the_access_matrix(
    serve: Serve, make_settings: MakeSettings, database_url: str
) -> None:
    settings = make_settings(
        auth="required", bootstrap_admin_key=BOOTSTRAP, secret_key=Fernet.generate_key().decode()
    )
    async with serve(settings) as base, _as(base, BOOTSTRAP) as root:
        keys: dict[str, str] = {}
        for namespace, role in [(NS, r.value) for r in Role] + [(OTHER, "admin")]:
            response = await root.post("/v1/keys", json={"namespace": namespace, "role": role})
            assert response.status_code == 201, response.text
            keys[f"{namespace}:{role}"] = response.json()["key"]
        revoked = await root.post("/v1/keys", json={"namespace": NS, "role": "admin"})
        assert (await root.delete(f"/v1/keys/{revoked.json()['id']}")).status_code == 204
        credentials: dict[str, str | None] = {
            "none": None,
            "malformed": "not-a-key",
            "unknown": mint()[0],
            "revoked": revoked.json()["key"],
            "expired": await _stored_key(database_url, NS, "admin", time.time() - 1),
            **{f"own {r.value}": keys[f"{NS}:{r.value}"] for r in Role},
            "other namespace's admin": keys[f"{OTHER}:admin"],
        }
        async with _as(base, keys[f"{NS}:admin"]) as admin:
            ctx = Ctx(admin)
            ctx.workflow_id = await ctx.workflow()
            ctx.run_id, ctx.checkpoint_id = await ctx.waiting_run()
            ctx.conversation_id = await ctx.conversation()
            failures = []
            for (method, path), op in sorted(ACCESS.items()):
                for name, token in credentials.items():
                    async with _as(base, token) as client:
                        response = await op.call(ctx, client)
                    expected = _expected(op, name)
                    if response.status_code not in expected:
                        failures.append(
                            f"{method.upper()} {path} as {name}: {response.status_code} "
                            f"(expected {expected}) {response.text[:160]}"
                        )
                    elif response.status_code >= 400:
                        assert response.headers["content-type"] == "application/problem+json"
            assert not failures, "\n".join(failures)


def _expected(op: Op, credential: str) -> tuple[int, ...]:
    if op.role is None:
        return op.ok
    if credential in ("none", "malformed", "unknown", "revoked", "expired"):
        return (401,)
    if credential == "other namespace's admin":
        if op.resource:
            return (404,)
        return op.ok
    role = Role(credential.removeprefix("own "))
    from app.runtime.access import Caller

    return op.ok if Caller(NS, role, "x").can(op.role) else (403,)


async def test_another_namespace_sees_nothing_in_lists(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings(auth="required", bootstrap_admin_key=BOOTSTRAP)
    async with serve(settings) as base, _as(base, BOOTSTRAP) as root:
        made = {}
        for namespace in (NS, OTHER):
            response = await root.post("/v1/keys", json={"namespace": namespace, "role": "admin"})
            made[namespace] = response.json()["key"]
        async with _as(base, made[NS]) as a, _as(base, made[OTHER]) as b:
            workflow_id = unique("shared-id")
            # the same workflow id in two namespaces: two workflows
            for client, text in ((a, "'a'"), (b, "'b'")):
                definition = chain(
                    workflow_id, transform("t", v=text), output={"v": "nodes.t.output.v"}
                )
                assert (await client.post("/v1/workflows", json=definition)).status_code == 201
            run_a = (
                await a.post("/v1/runs", json={"workflow_id": workflow_id}, params={"wait": 10})
            ).json()
            run_b = (
                await b.post("/v1/runs", json={"workflow_id": workflow_id}, params={"wait": 10})
            ).json()
            assert run_a["output"] == {"v": "a"}
            assert run_b["output"] == {"v": "b"}
            # the same idempotency key in two namespaces: two runs
            key = {"Idempotency-Key": uuid.uuid4().hex}
            one = await a.post("/v1/runs", json={"workflow_id": workflow_id}, headers=key)
            two = await b.post("/v1/runs", json={"workflow_id": workflow_id}, headers=key)
            assert one.status_code == two.status_code == 202
            assert one.json()["run_id"] != two.json()["run_id"]
            for client, mine, theirs in ((a, run_a, run_b), (b, run_b, run_a)):
                runs = (await client.get("/v1/runs")).json()["items"]
                ids = {r["run_id"] for r in runs}
                assert mine["run_id"] in ids
                assert theirs["run_id"] not in ids
                filtered = await client.get("/v1/runs", params={"workflow_id": workflow_id})
                assert theirs["run_id"] not in {r["run_id"] for r in filtered.json()["items"]}
                assert (await client.get(f"/v1/runs/{theirs['run_id']}")).status_code == 404
                listed = (await client.get("/v1/workflows")).json()["items"]
                assert [w["id"] for w in listed] == [workflow_id]
                keys = (await client.get("/v1/keys")).json()["items"]
                assert {k["namespace"] for k in keys} == {NS if client is a else OTHER}
            # archiving in one namespace leaves the other's workflow
            assert (await a.delete(f"/v1/workflows/{workflow_id}")).status_code == 204
            assert (await b.get(f"/v1/workflows/{workflow_id}")).status_code == 200


async def test_a_subworkflow_is_found_in_its_runs_namespace(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings(auth="required", bootstrap_admin_key=BOOTSTRAP)
    async with serve(settings) as base, _as(base, BOOTSTRAP) as root:
        made = {}
        for namespace in (NS, OTHER):
            response = await root.post("/v1/keys", json={"namespace": namespace, "role": "writer"})
            made[namespace] = response.json()["key"]
        async with _as(base, made[NS]) as a, _as(base, made[OTHER]) as b:
            child = unique("child")
            for client, text in ((a, "'a'"), (b, "'b'")):
                definition = chain(child, transform("t", v=text), output={"v": "nodes.t.output.v"})
                assert (await client.post("/v1/workflows", json=definition)).status_code == 201
            parent = chain(
                unique("parent"),
                {"id": "sub", "type": "subworkflow", "config": {"workflow_id": child}},
                output={"v": "nodes.sub.output.v"},
            )
            assert (await a.post("/v1/workflows", json=parent)).status_code == 201
            for _ in range(2):  # the second compiles nothing: the same definition serves
                run = await a.post(
                    "/v1/runs", json={"workflow_id": parent["id"]}, params={"wait": 10}
                )
                assert run.json()["status"] == "succeeded", run.text
                assert run.json()["output"] == {"v": "a"}
            # team B has no such parent, and team A's child is not team B's to reach
            only_b = chain(
                unique("lonely"),
                {"id": "sub", "type": "subworkflow", "config": {"workflow_id": "nowhere"}},
            )
            assert (await a.post("/v1/workflows", json=only_b)).status_code == 201
            failed = await a.post(
                "/v1/runs", json={"workflow_id": only_b["id"]}, params={"wait": 10}
            )
            assert failed.json()["status"] == "failed"
