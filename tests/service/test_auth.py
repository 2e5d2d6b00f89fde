"""API keys through the real HTTP server: modes, the bearer header, revocation reaching
every replica, /metrics and its own listener, the docs setting, CORS and cross-site
requests, the command line, and the audit of key management."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from pydantic import ValidationError

from app import cli
from app.config import DEFAULT_DATABASE_URL, Settings
from tests.redis_support import require_redis
from tests.service.support import MakeSettings, Serve, greet, unique

BOOTSTRAP = "bootstrap-" + "k" * 40


@asynccontextmanager
async def _as(base: httpx.AsyncClient, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=base.base_url, headers=headers, timeout=20) as client:
        yield client


async def _key(root: httpx.AsyncClient, role: str, namespace: str = "team-a") -> dict[str, str]:
    response = await root.post("/v1/keys", json={"namespace": namespace, "role": role})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


# ---------------------------------------------------------------------------- modes


def test_auth_is_required_unless_it_is_the_embedded_quickstart() -> None:
    assert Settings(database_url=DEFAULT_DATABASE_URL, host="127.0.0.1").auth_required is False
    assert Settings(database_url=DEFAULT_DATABASE_URL, host="localhost").auth_required is False
    assert Settings(database_url=DEFAULT_DATABASE_URL, host="::1").auth_required is False
    # another database, or another address: keys
    assert Settings(database_url="sqlite+aiosqlite:///x.db").auth_required is True
    assert Settings(database_url=DEFAULT_DATABASE_URL, host="0.0.0.0").auth_required is True
    assert Settings(auth="required").auth_required is True


def test_auth_off_on_a_public_address_is_refused_unless_forced() -> None:
    with pytest.raises(ValidationError, match="not a loopback address"):
        Settings(host="0.0.0.0", auth="disabled")
    forced = Settings(host="0.0.0.0", auth="disabled", auth_allow_disabled_remote=True)
    assert forced.auth_required is False
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(bootstrap_admin_key="short")


async def test_disabled_auth_says_so_in_the_log_and_on_readyz(
    serve: Serve, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    from app.api import auth

    auth._announced.clear()
    with caplog.at_level(logging.WARNING, logger="flowcore.api"):
        async with serve(make_settings(auth="disabled")) as client:
            ready = (await client.get("/readyz")).json()
            workflows = await client.get("/v1/workflows")
    assert ready["checks"]["auth"] == "disabled"
    assert workflows.status_code == 200  # no key needed
    assert any("auth is disabled" in r.getMessage() for r in caplog.records)


async def test_required_auth_refuses_every_kind_of_bad_credential_alike(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings(auth="required", bootstrap_admin_key=BOOTSTRAP)
    async with serve(settings) as base:
        assert (await base.get("/readyz")).json()["checks"]["auth"] == "required"
        assert (await base.get("/healthz")).status_code == 200
        bodies = []
        for header in (
            None,
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer fc_live_000000000000_" + "A" * 43,
            "Bearer " + BOOTSTRAP[:-1],
        ):
            headers = {"Authorization": header} if header is not None else {}
            response = await base.get("/v1/runs", headers=headers)
            assert response.status_code == 401, header
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/problem+json"
            bodies.append(response.json()["detail"])
        assert len(set(bodies)) == 1  # nothing tells one reason from another
        # the scheme is case-insensitive
        ok = await base.get("/v1/runs", headers={"Authorization": f"bearer {BOOTSTRAP}"})
        assert ok.status_code == 200


# ------------------------------------------------------------------------ the keys


async def test_a_key_is_shown_once_and_stored_only_as_a_hash(
    serve: Serve, make_settings: MakeSettings, database_url: str
) -> None:
    settings = make_settings(auth="required", bootstrap_admin_key=BOOTSTRAP)
    async with serve(settings) as base, _as(base, BOOTSTRAP) as root:
        created = await _key(root, "writer")
        assert created["key"].startswith(f"fc_live_{created['id']}_")
        listed = (await root.get("/v1/keys", params={"namespace": "team-a"})).json()["items"]
        assert [k["id"] for k in listed] == [created["id"]]
        assert "key" not in listed[0]
        assert created["key"] not in (await root.get("/v1/keys")).text
        async with _as(base, created["key"]) as writer:
            assert (await writer.post("/v1/workflows", json=greet("w"))).status_code == 201
            # a writer manages no keys; an admin only its namespace's
            assert (await writer.get("/v1/keys")).status_code == 403
        admin = await _key(root, "admin")
        async with _as(base, admin["key"]) as team_admin:
            other = await team_admin.post("/v1/keys", json={"namespace": "b", "role": "reader"})
            assert other.status_code == 403
            own = await team_admin.post("/v1/keys", json={"role": "reader", "expires_in": "1d"})
            assert own.status_code == 201
            assert own.json()["namespace"] == "team-a"
            assert own.json()["expires_at"] is not None
            bad = await team_admin.post("/v1/keys", json={"role": "reader", "expires_in": "soon"})
            assert bad.status_code == 422
            assert "expires_in" in bad.json()["detail"]
            audit = (await team_admin.get("/v1/audit")).json()["items"]
        created_entries = [e for e in audit if e["action"] == "key.created"]
        assert {e["target"] for e in created_entries} >= {
            f"key:{created['id']}",
            f"key:{admin['id']}",
            f"key:{own.json()['id']}",
        }
        by_team_admin = [e for e in created_entries if e["target"] == f"key:{own.json()['id']}"]
        assert by_team_admin[0]["actor"] == admin["id"]
    # the database holds no key
    from app.store import open_store
    from app.store.db import create_engine

    engine = create_engine(database_url, 1, 0)
    store = open_store(engine)
    try:
        stored = await store.key(created["id"])
        assert stored is not None
        assert created["key"] not in repr(stored)
        assert len(stored.hash) == 64
    finally:
        await store.close()
        await engine.dispose()


async def _refused_soon(client: httpx.AsyncClient, attempts: int = 100) -> None:
    """Until the replica refuses the key; bounded (the key cache lives far longer)."""
    for _ in range(attempts):
        if (await client.get("/v1/runs")).status_code == 401:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the revoked key still works on the other replica")


async def _revocation_reaches_the_other_replica(
    serve: Serve, make_settings: MakeSettings, **extra: object
) -> None:
    # a key cache of 10 minutes: only a notification can make the other replica forget
    common = {"auth": "required", "bootstrap_admin_key": BOOTSTRAP, "auth_cache_seconds": 600}
    async with (
        serve(make_settings(**common, **extra)) as a,
        serve(make_settings(**common, **extra)) as b,
        _as(a, BOOTSTRAP) as root,
    ):
        key = await _key(root, "reader")
        async with _as(b, key["key"]) as on_b:
            assert (await on_b.get("/v1/runs")).status_code == 200  # cached on b now
            assert (await root.delete(f"/v1/keys/{key['id']}")).status_code == 204
            await _refused_soon(on_b)
            assert (await on_b.get("/v1/workflows")).status_code == 401


async def test_a_revoked_key_stops_working_on_every_replica_at_once(
    serve: Serve, make_settings: MakeSettings, database_url: str
) -> None:
    if database_url.startswith("sqlite"):  # no LISTEN: through Redis
        redis = require_redis()
        await _revocation_reaches_the_other_replica(
            serve, make_settings, redis_url=redis, redis_prefix=unique("keys")
        )
    else:  # Postgres NOTIFY
        await _revocation_reaches_the_other_replica(serve, make_settings)


async def test_without_notifications_a_revoked_key_lasts_the_cache_time(
    serve: Serve, make_settings: MakeSettings
) -> None:
    """SQLite without Redis, or a Postgres replica that does not LISTEN (no dispatcher):
    the replica forgets the key when its cache entry expires."""
    common = {"auth": "required", "bootstrap_admin_key": BOOTSTRAP, "auth_cache_seconds": 0.2}
    async with (
        serve(make_settings(**common)) as a,
        serve(make_settings(**common, dispatcher_enabled=False)) as b,
        _as(a, BOOTSTRAP) as root,
    ):
        key = await _key(root, "reader")
        async with _as(b, key["key"]) as on_b:
            assert (await on_b.get("/v1/runs")).status_code == 200
            assert (await root.delete(f"/v1/keys/{key['id']}")).status_code == 204
            await _refused_soon(on_b)
            # revoking again changes nothing; an unknown key is a 404
            assert (await root.delete(f"/v1/keys/{key['id']}")).status_code == 204
            assert (await root.delete("/v1/keys/000000000000")).status_code == 404


# --------------------------------------------------------------- metrics and docs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_metrics_need_a_metrics_key_or_their_own_listener(
    serve: Serve, make_settings: MakeSettings
) -> None:
    port = _free_port()
    settings = make_settings(auth="required", bootstrap_admin_key=BOOTSTRAP, metrics_port=port)
    async with serve(settings) as base, _as(base, BOOTSTRAP) as root:
        assert (await base.get("/metrics")).status_code == 401
        for role, status in (("metrics", 200), ("reader", 403), ("writer", 403), ("admin", 200)):
            key = await _key(root, role)
            async with _as(base, key["key"]) as client:
                response = await client.get("/metrics")
                assert response.status_code == status, role
                if status == 200:
                    assert "flowcore_runs_active" in response.text or "flowcore_" in response.text
            # a metrics key reads nothing else
            if role == "metrics":
                async with _as(base, key["key"]) as client:
                    assert (await client.get("/v1/runs")).status_code == 403
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scrape:
            response = await scrape.get("/metrics")
            assert response.status_code == 200
            assert "flowcore_http_requests_total" in response.text
            assert (await scrape.get("/v1/runs")).status_code == 404  # only /metrics there


async def test_the_docs_follow_their_setting(serve: Serve, make_settings: MakeSettings) -> None:
    async with serve(make_settings(auth="required", docs_enabled=True)) as open_docs:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await open_docs.get(path)).status_code == 200, path
    async with serve(make_settings(auth="required", docs_enabled=False)) as closed:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await closed.get(path)).status_code in (401, 404), path
        assert (await closed.get("/healthz")).status_code == 200


# ----------------------------------------------------------------- browsers


async def test_cors_preflight_for_configured_origins(
    serve: Serve, make_settings: MakeSettings
) -> None:
    origin = "https://ops.example.com"
    settings = make_settings(auth="required", bootstrap_admin_key=BOOTSTRAP, cors_origins=[origin])
    async with serve(settings) as base:
        preflight = await base.options(
            "/v1/runs",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = await base.options(
            "/v1/runs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in refused.headers
        real = await base.get(
            "/v1/runs", headers={"Origin": origin, "Authorization": f"Bearer {BOOTSTRAP}"}
        )
        assert real.status_code == 200
        assert real.headers["access-control-allow-origin"] == origin


async def test_without_auth_a_cross_site_request_cannot_change_anything(
    serve: Serve, make_settings: MakeSettings
) -> None:
    allowed = "https://ops.example.com"
    async with serve(make_settings(auth="disabled", cors_origins=[allowed])) as client:
        definition = greet(unique("xs"))
        forged = await client.post(
            "/v1/workflows", json=definition, headers={"Origin": "https://evil.example"}
        )
        assert forged.status_code == 403
        assert forged.json()["type"].endswith("/cross-site")
        cancel = await client.post(
            "/v1/runs/abc/cancel",
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert cancel.status_code == 403
        # reads stay open, the configured origin may write, and a client that is not a
        # browser (no Origin) is not affected
        assert (
            await client.get("/v1/workflows", headers={"Origin": "https://evil.example"})
        ).status_code == 200
        mine = await client.post("/v1/workflows", json=definition, headers={"Origin": allowed})
        assert mine.status_code == 201
        same = await client.post(
            "/v1/workflows",
            json=definition,
            headers={"Origin": str(client.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"},
        )
        assert same.status_code == 201
        assert (await client.post("/v1/workflows", json=definition)).status_code == 201


# --------------------------------------------------------------- the command line


async def test_keys_made_at_the_command_line_work_over_http(
    serve: Serve,
    make_settings: MakeSettings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWCORE_DATABASE_URL", database_url)

    def run_cli(*argv: str) -> str:
        out = io.StringIO()
        assert cli.main(list(argv), out) == 0
        return out.getvalue()

    created = await asyncio.to_thread(
        run_cli, "keys", "create", "--namespace", "team-c", "--role", "writer", "--expires", "30d"
    )
    key = created.strip()
    assert key.startswith("fc_live_")
    key_id = key.split("_")[2]
    listed = await asyncio.to_thread(run_cli, "keys", "list", "--namespace", "team-c")
    assert key_id in listed
    assert key not in listed
    settings = make_settings(auth="required", auth_cache_seconds=0)
    async with serve(settings) as base, _as(base, key) as client:
        response = await client.post("/v1/workflows", json=greet("from-cli"))
        assert response.status_code == 201
        await asyncio.to_thread(run_cli, "keys", "revoke", key_id)
        assert (await client.get("/v1/workflows")).status_code == 401
    generated = (await asyncio.to_thread(run_cli, "keys", "generate")).strip()
    assert generated.startswith("fc_live_")
    assert len(generated) >= 32


# ------------------------------------------------------------------------- limits


async def _spend(client: httpx.AsyncClient, n: int) -> list[httpx.Response]:
    return [await client.get("/v1/workflows") for _ in range(n)]


async def test_a_key_over_its_rate_gets_429_with_the_ratelimit_headers(
    serve: Serve, make_settings: MakeSettings
) -> None:
    # a bucket of 3 that refills in 300 s: nothing refills while the test runs
    settings = make_settings(
        auth="required", bootstrap_admin_key=BOOTSTRAP, rate_limit_per_second=0.01,
        rate_limit_burst=3,
    )  # fmt: skip
    async with serve(settings) as base, _as(base, BOOTSTRAP) as root:
        key = await _key(root, "reader")
        other = await _key(root, "reader")
        async with _as(base, key["key"]) as client, _as(base, other["key"]) as neighbour:
            allowed = await _spend(client, 3)
            assert [r.status_code for r in allowed] == [200, 200, 200]
            assert allowed[0].headers["ratelimit-policy"] == '"key";q=3;w=300'
            assert allowed[-1].headers["ratelimit"].startswith('"key";r=0;')
            refused = await client.get("/v1/workflows")
            assert refused.status_code == 429
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["retry-after"]) >= 1
            assert key["id"] in refused.json()["detail"]
            # another key has a bucket of its own; health stays open
            assert (await neighbour.get("/v1/workflows")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200


async def test_a_namespace_shares_one_bucket_across_its_keys(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings(
        auth="required", bootstrap_admin_key=BOOTSTRAP, namespace_rate_limit_per_second=1.5
    )  # a bucket of 3, refilling 1.5 a second
    async with serve(settings) as base, _as(base, BOOTSTRAP) as root:
        one, two = await _key(root, "reader"), await _key(root, "reader")
        elsewhere = await _key(root, "reader", namespace="team-b")
        async with _as(base, one["key"]) as a, _as(base, two["key"]) as b:
            statuses = [r.status_code for r in await _spend(a, 2) + await _spend(b, 10)]
            assert statuses[:3] == [200, 200, 200]
            assert 429 in statuses
            refused = next(r for r in await _spend(b, 3) if r.status_code == 429)
            assert "namespace 'team-a'" in refused.json()["detail"]
        async with _as(base, elsewhere["key"]) as c:
            assert (await c.get("/v1/workflows")).status_code == 200


async def test_replicas_share_a_keys_bucket_through_redis(
    serve: Serve, make_settings: MakeSettings
) -> None:
    common = {
        "auth": "required",
        "bootstrap_admin_key": BOOTSTRAP,
        "rate_limit_per_second": 0.01,
        "rate_limit_burst": 4,
        "redis_url": require_redis(),
        "redis_prefix": unique("rl"),
    }
    async with (
        serve(make_settings(**common)) as a,
        serve(make_settings(**common)) as b,
        _as(a, BOOTSTRAP) as root,
    ):
        key = await _key(root, "reader")
        async with _as(a, key["key"]) as on_a, _as(b, key["key"]) as on_b:
            assert [r.status_code for r in await _spend(on_a, 2)] == [200, 200]
            assert [r.status_code for r in await _spend(on_b, 3)] == [200, 200, 429]
            assert (await on_a.get("/v1/workflows")).status_code == 429


async def test_a_namespace_past_its_active_runs_gets_429(
    serve: Serve, make_settings: MakeSettings
) -> None:
    # no dispatcher: started runs stay queued, each counting against the namespace
    settings = make_settings(
        auth="required", bootstrap_admin_key=BOOTSTRAP, namespace_max_active_runs=2,
        dispatcher_enabled=False,
    )  # fmt: skip
    async with serve(settings) as base, _as(base, BOOTSTRAP) as root:
        writer = await _key(root, "writer")
        other = await _key(root, "writer", namespace="team-b")
        async with _as(base, writer["key"]) as a, _as(base, other["key"]) as b:
            for client in (a, b):
                assert (await client.post("/v1/workflows", json=greet("g"))).status_code == 201
            body = {"workflow_id": "g", "input": {"name": "x"}}
            assert [(await a.post("/v1/runs", json=body)).status_code for _ in range(2)] == [
                202,
                202,
            ]
            refused = await a.post("/v1/runs", json=body)
            assert refused.status_code == 429
            assert refused.json()["type"].endswith("/too-many-runs")
            assert "retry-after" in refused.headers
            assert (await b.post("/v1/runs", json=body)).status_code == 202
            # cancelling one makes room
            first = (await a.get("/v1/runs")).json()["items"][0]["run_id"]
            assert (await a.post(f"/v1/runs/{first}/cancel")).status_code == 202
            assert (await a.post("/v1/runs", json=body)).status_code == 202
