"""Secrets through the real HTTP API and the service, on SQLite and Postgres: write-only
storage (PUT, list, delete; no response holds a value), encryption at rest and key
rotation, the 503 without FLOWCORE_SECRET_KEY, roles and namespaces, and the proof that a
run whose http node echoes its Authorization header stores and streams only the mask: the
log records, every table, the checkpoints, the node results, the API's views of the run
and /metrics hold no trace of the value."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from app.cli import main as cli_main
from app.engine import InMemoryMemoryStore, SecretMask, SecretUnavailableError
from app.nodes.egress import install_egress_policy
from app.nodes.http import aclose_http_client
from app.runtime.access import Caller, Forbidden, Role
from app.runtime.errors import InvalidValue, NotFound, SecretsUnavailable
from app.runtime.secrets import (
    MAX_SECRET_BYTES,
    InvalidSecretKey,
    MaskingMemoryStore,
    SecretBox,
    SecretService,
)
from app.runtime.wiring import build
from app.store import open_store
from app.store.db import create_engine
from app.store.models import Base
from app.store.repository import Store
from tests.nodes.conftest import LocalHTTPServer, Received, Reply, json_reply, text_reply
from tests.service.support import (
    MakeSettings,
    Serve,
    assert_problem,
    chain,
    events_json,
    finished,
    in_thread,
    post_workflow,
    read_sse,
    sse_lines,
    start_run,
    transform,
    unique,
)

SSE = {"Accept": "text/event-stream"}
KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def admin(namespace: str = "team-a") -> Caller:
    return Caller(namespace, Role.ADMIN, f"admin-of-{namespace}")


def secret_settings(make_settings: MakeSettings, **overrides: Any) -> Any:
    """Test settings with a secret key, and loopback targets allowed to http nodes."""
    return make_settings(
        **{"secret_key": KEY_A, "egress_allow": ["127.0.0.1"], "auth": "disabled", **overrides}
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    engine = create_engine(database_url)
    store = open_store(engine)
    try:
        yield store
    finally:
        await store.close()
        await engine.dispose()


@pytest.fixture
async def echo() -> AsyncIterator[LocalHTTPServer]:
    """A loopback server whose ``/echo`` answers with the request's Authorization header
    as JSON, ``/echo-text`` as JSON read as text, and ``/refuse`` with a 401 quoting it."""
    server = LocalHTTPServer()

    def echoed(request: Received) -> dict[str, Any]:
        return {"authorization": request.headers.get("authorization"), "path": request.path}

    server.route("/echo", lambda request: json_reply(echoed(request)))
    server.route("/echo-text", lambda request: text_reply(json.dumps(echoed(request))))
    server.route("/refuse", lambda request: json_reply(echoed(request), status=401))
    await server.start()
    try:
        yield server
    finally:
        await aclose_http_client()  # the replicas' runs used it on this test's loop
        install_egress_policy(None)
        await server.close()


def echo_node(node_id: str, url: str, secret: str = "API_TOKEN", **config: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {{{{ secrets.{secret} }}}}", "X-Trace": "t1"}
    return {"id": node_id, "type": "http", "config": {"url": url, "headers": headers, **config}}


async def put_secret(client: httpx.AsyncClient, name: str, value: str) -> httpx.Response:
    return await client.put(f"/v1/secrets/{name}", json={"value": value})


# ---------------------------------------------------------------- the API, write-only


async def test_a_secret_is_set_listed_replaced_and_deleted_never_shown(
    make_settings: MakeSettings, serve: Serve, database_url: str
) -> None:
    value = f"v-{uuid.uuid4().hex}"
    async with serve(secret_settings(make_settings)) as client:
        created = await put_secret(client, "API_TOKEN", value)
        assert created.status_code == 201, created.text
        assert created.headers["location"] == "/v1/secrets/API_TOKEN"
        body = created.json()
        assert set(body) == {"name", "created_at", "updated_at"}
        assert body["name"] == "API_TOKEN"
        assert body["created_at"] == body["updated_at"]

        replaced = await put_secret(client, "API_TOKEN", value + "-2")
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["created_at"] == body["created_at"]
        assert replaced.json()["updated_at"] >= body["updated_at"]
        assert (await put_secret(client, "_other", "x")).status_code == 201

        listed = await client.get("/v1/secrets")
        assert listed.status_code == 200
        assert [s["name"] for s in listed.json()["items"]] == ["API_TOKEN", "_other"]
        assert listed.json()["items"][0] == replaced.json()
        for response in (created, replaced, listed):
            assert value not in response.text

        assert (await client.delete("/v1/secrets/API_TOKEN")).status_code == 204
        gone = await client.delete("/v1/secrets/API_TOKEN")
        assert_problem(gone, 404, "not-found")
        assert [s["name"] for s in (await client.get("/v1/secrets")).json()["items"]] == ["_other"]

    # at rest: only a ciphertext, which the first key decrypts
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            (stored,) = (await conn.execute(text("SELECT ciphertext FROM secrets"))).scalars()
    finally:
        await engine.dispose()
    assert stored.startswith("gAAAAA")  # a Fernet token
    assert SecretBox([KEY_A]).decrypt(stored) == "x"


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("1abc", {"value": "x"}),  # a name starts with a letter or _
        ("a-b", {"value": "x"}),
        ("a" * 129, {"value": "x"}),
        ("OK", {"value": ""}),
        ("OK", {"value": 5}),
        ("OK", {"value": "x", "extra": 1}),
        ("OK", {}),
        ("OK", {"value": "é" * (MAX_SECRET_BYTES // 2 + 1)}),  # within the characters, not bytes
    ],
)
async def test_a_bad_name_or_value_is_a_422_naming_it(
    make_settings: MakeSettings, serve: Serve, name: str, body: dict[str, Any]
) -> None:
    async with serve(secret_settings(make_settings, max_body_bytes=1 << 20)) as client:
        response = await client.put(f"/v1/secrets/{name}", json=body)
        problem = assert_problem(response, 422, "invalid-request")
        assert (await client.get("/v1/secrets")).json()["items"] == []
    if isinstance(body.get("value"), str) and len(body["value"]) > 1:
        assert body["value"][:20] not in response.text  # a refused value is not echoed
    fields = [e["field"] for e in problem["errors"]]
    assert any(("name" in f) or ("value" in f) or ("extra" in f) for f in fields), problem


async def test_without_a_secret_key_the_secrets_api_answers_503(
    make_settings: MakeSettings, serve: Serve
) -> None:
    async with serve(make_settings(secret_key=None)) as client:
        for response in (
            await put_secret(client, "TOKEN", "x"),
            await client.get("/v1/secrets"),
            await client.delete("/v1/secrets/TOKEN"),
        ):
            problem = assert_problem(response, 503, "secrets-unavailable")
            assert "FLOWCORE_SECRET_KEY" in problem["detail"]
        # a run that references a secret fails, saying why
        workflow_id = unique("no-key")
        await post_workflow(
            client, chain(workflow_id, echo_node("call", "http://127.0.0.1:9/echo"))
        )
        run = await finished(client, (await start_run(client, workflow_id))["run_id"])
    assert run["status"] == "failed"
    assert run["error"]["kind"] == "config"
    assert "'API_TOKEN'" in run["error"]["message"]
    assert "FLOWCORE_SECRET_KEY is not set" in run["error"]["message"]


@pytest.mark.parametrize("key", ["not-a-key", f"{KEY_A},short", ","])
async def test_an_invalid_secret_key_stops_the_replica_at_startup(
    make_settings: MakeSettings, key: str
) -> None:
    settings = make_settings(secret_key=key)
    if key == ",":  # nothing but separators: no key at all
        with pytest.raises(InvalidSecretKey, match="holds no key"):
            SecretBox.from_setting(key)
        return
    with pytest.raises(InvalidSecretKey, match="FLOWCORE_SECRET_KEY") as raised:
        await build(settings)
    assert "not a Fernet key" in str(raised.value)
    assert "short" not in str(raised.value)  # the key itself is never printed
    assert "not-a-key" not in str(raised.value)


# ------------------------------------------------------------- roles and namespaces


async def test_setting_and_deleting_need_an_admin_and_listing_a_writer(store: Store) -> None:
    service = SecretService(store, SecretBox([KEY_A]))
    writer = Caller("team-a", Role.WRITER, "w")
    reader = Caller("team-a", Role.READER, "r")
    metrics_key = Caller("team-a", Role.METRICS, "m")
    for caller in (writer, reader, metrics_key):
        with pytest.raises(Forbidden):
            await service.put(caller, "TOKEN", "x")
        with pytest.raises(Forbidden):
            await service.delete(caller, "TOKEN")
    for caller in (reader, metrics_key):
        with pytest.raises(Forbidden):
            await service.listing(caller)
    assert await store.list_secrets("team-a") == []  # nothing was written

    info, created = await service.put(admin(), "TOKEN", "x")
    assert created
    assert (info.name, info.created_at) == ("TOKEN", info.updated_at)
    assert [s.name for s in await service.listing(writer)] == ["TOKEN"]
    assert [s.name for s in await service.listing(admin())] == ["TOKEN"]
    with pytest.raises(Forbidden):
        await service.delete(writer, "TOKEN")
    await service.delete(admin(), "TOKEN")
    with pytest.raises(NotFound):
        await service.delete(admin(), "TOKEN")


async def test_a_namespace_sees_and_uses_only_its_own_secrets(store: Store) -> None:
    service = SecretService(store, SecretBox([KEY_A]))
    await service.put(admin("team-a"), "TOKEN", "for-a")
    await service.put(admin("team-b"), "OTHER", "for-b")
    assert [s.name for s in await service.listing(admin("team-a"))] == ["TOKEN"]
    assert [s.name for s in await service.listing(admin("team-b"))] == ["OTHER"]
    with pytest.raises(NotFound):  # another namespace's secret does not exist for it
        await service.delete(admin("team-b"), "TOKEN")
    assert await service.for_run("team-a").resolve(["TOKEN"]) == {"TOKEN": "for-a"}
    with pytest.raises(SecretUnavailableError, match="'TOKEN' is not set in namespace 'team-b'"):
        await service.for_run("team-b").resolve(["TOKEN"])


async def test_the_service_refuses_bad_names_and_values(store: Store) -> None:
    service = SecretService(store, SecretBox([KEY_A]))
    for name in ("", "9x", "a.b", "x" * 129):
        with pytest.raises(InvalidValue) as bad:
            await service.put(admin(), name, "v")
        assert bad.value.field == "name"
    for value in ("", "é" * (MAX_SECRET_BYTES // 2 + 1)):
        with pytest.raises(InvalidValue) as bad:
            await service.put(admin(), "OK", value)
        assert bad.value.field == "value"
    await service.put(admin(), "OK", "x" * MAX_SECRET_BYTES)  # the largest there is
    with pytest.raises(SecretsUnavailable):
        await SecretService(store, None).listing(admin())


async def test_a_run_reads_its_secrets_once_and_masks_what_it_read(store: Store) -> None:
    service = SecretService(store, SecretBox([KEY_A]))
    await service.put(admin(), "A", "alpha-value")
    await service.put(admin(), "B", "beta-value")
    run = service.for_run("team-a")
    assert not run.masking
    assert await run.resolve(["A"]) == {"A": "alpha-value"}
    await service.put(admin(), "A", "changed")  # a run keeps what it read
    assert await run.resolve(["A", "B"]) == {"A": "alpha-value", "B": "beta-value"}
    assert run.mask({"x": ["alpha-value!", "beta-value"]}) == {"x": ["***!", "***"]}
    # a new execution reads the value as it is now, and caches nothing across runs
    assert await service.for_run("team-a").resolve(["A"]) == {"A": "changed"}


async def test_conversations_a_run_saves_keep_its_secrets_masked() -> None:
    shared = InMemoryMemoryStore()
    view = MaskingMemoryStore(shared, SecretMask(["s3cret"]))
    memory = await view.load("c")
    memory.add_message("tool", "got s3cret", source="s3cret")
    await view.save("c", memory)
    later = await shared.load("c")  # what a later run, of any secrets, finds
    assert [(m.content, m.metadata) for m in later.messages] == [("got ***", {"source": "***"})]
    untouched = MaskingMemoryStore(shared, SecretMask())
    memory.add_message("tool", "s3cret again")
    await untouched.save("c", memory)  # a run that resolved nothing masks nothing
    assert later.messages[-1].content == "s3cret again"


# ----------------------------------------------------------------------- rotation


async def test_rotation_re_encrypts_every_secret_with_the_first_key(
    make_settings: MakeSettings, store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = SecretService(store, SecretBox([KEY_A]))
    for namespace in ("team-a", "team-b"):
        for i in range(3):
            await old.put(admin(namespace), f"S{i}", f"{namespace}-value-{i}")
    # a secret no key of the new setting decrypts: reported, left as it is
    stranger = SecretBox([Fernet.generate_key().decode()]).encrypt("lost")
    await store.put_secret("team-c", "LOST", stranger)
    # with the new key first, the old one still decrypts: nothing breaks meanwhile
    both = SecretService(store, SecretBox([KEY_B, KEY_A]))
    assert await both.for_run("team-a").resolve(["S0"]) == {"S0": "team-a-value-0"}
    with pytest.raises(SecretUnavailableError, match="'S0' cannot be decrypted"):
        await SecretService(store, SecretBox([KEY_B])).for_run("team-a").resolve(["S0"])
    before = {s.name: s.updated_at for s in await store.list_secrets("team-a")}

    # the operator's command, as an operator runs it
    monkeypatch.setenv("FLOWCORE_DATABASE_URL", database_url)
    monkeypatch.setenv("FLOWCORE_SECRET_KEY", f"{KEY_B},{KEY_A}")
    assert in_thread(cli_main, ["secrets", "rotate"]) == 1  # one secret could not be read

    # the old key may go now: the new one alone reads every secret
    new = SecretService(store, SecretBox([KEY_B]))
    for namespace in ("team-a", "team-b"):
        values = await new.for_run(namespace).resolve(["S0", "S1", "S2"])
        assert values == {f"S{i}": f"{namespace}-value-{i}" for i in range(3)}
        with pytest.raises(SecretUnavailableError, match="cannot be decrypted"):
            await old.for_run(namespace).resolve(["S1"])  # the old key alone reads nothing
    assert (await store.secret_ciphertexts("team-c")) == {"LOST": stranger}
    # the values did not change, nor the time they were set
    assert {s.name: s.updated_at for s in await store.list_secrets("team-a")} == before
    # a second rotation with nothing left to do re-encrypts again, harmlessly
    assert (await new.rotate())[0] == 6


async def test_after_rotation_a_replica_with_only_the_new_key_runs_with_the_secret(
    make_settings: MakeSettings,
    serve: Serve,
    echo: LocalHTTPServer,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    async with serve(secret_settings(make_settings, secret_key=KEY_A)) as client:
        assert (await put_secret(client, "API_TOKEN", "rotated-value")).status_code == 201
        workflow_id = unique("rotate")
        await post_workflow(client, chain(workflow_id, echo_node("call", echo.url("/echo"))))
    monkeypatch.setenv("FLOWCORE_DATABASE_URL", database_url)
    monkeypatch.setenv("FLOWCORE_SECRET_KEY", f"{KEY_B},{KEY_A}")
    assert in_thread(cli_main, ["secrets", "rotate"]) == 0
    async with serve(secret_settings(make_settings, secret_key=KEY_B)) as client:
        run = await finished(client, (await start_run(client, workflow_id, wait=10))["run_id"])
        listed = await client.get("/v1/secrets")
    assert run["status"] == "succeeded", run
    assert echo.requests[-1].headers["authorization"] == "Bearer rotated-value"
    assert [s["name"] for s in listed.json()["items"]] == ["API_TOKEN"]


def test_the_cli_prints_a_new_key_and_refuses_to_rotate_without_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    assert cli_main(["secrets", "generate-key"]) == 0
    key = capsys.readouterr().out.strip()
    assert SecretBox([key]).decrypt(SecretBox([key]).encrypt("x")) == "x"
    monkeypatch.setenv("FLOWCORE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    monkeypatch.delenv("FLOWCORE_SECRET_KEY", raising=False)
    assert cli_main(["secrets", "rotate"]) == 2
    assert "FLOWCORE_SECRET_KEY" in capsys.readouterr().err
    monkeypatch.setenv("FLOWCORE_SECRET_KEY", "garbage")
    assert cli_main(["secrets", "rotate"]) == 2
    err = capsys.readouterr().err
    assert "not a Fernet key" in err
    assert "garbage" not in err


# -------------------------------------------------------------- in definitions


async def test_a_literal_credential_is_refused_with_a_hint_to_use_a_secret(
    make_settings: MakeSettings, serve: Serve
) -> None:
    literal = {"Authorization": "Bearer s3cr3t-literal", "X-Trace": "ok"}
    from_input = {"x-api-key": "{{ input.key }}"}
    async with serve(secret_settings(make_settings)) as client:
        for headers in (literal, from_input):
            node = {
                "id": "call",
                "type": "http",
                "config": {"url": "https://x.test/", "headers": headers},
            }
            response = await client.post("/v1/workflows", json=chain(unique("lit"), node))
            problem = assert_problem(response, 422, "invalid-workflow")
            (issue,) = problem["errors"]
            assert (issue["node"], issue["field"]) == ("call", "config.headers")
            assert "literal credential" in issue["message"]
            assert "{{ secrets.NAME }}" in issue["message"]
            assert "s3cr3t-literal" not in response.text
        misplaced = {
            "id": "call",
            "type": "http",
            "config": {"url": "https://x.test/{{ secrets.API_TOKEN }}"},
        }
        response = await client.post("/v1/workflows", json=chain(unique("mis"), misplaced))
        problem = assert_problem(response, 422, "invalid-workflow")
        assert [(e["field"], e["code"]) for e in problem["errors"]] == [("config.url", "secret")]
        read = transform("leak", v="secrets.API_TOKEN")
        response = await client.post("/v1/workflows", json=chain(unique("expr"), read))
        problem = assert_problem(response, 422, "invalid-workflow")
        assert problem["errors"][0]["field"] == "config.output.v"
        assert "{{ secrets.NAME }}" in problem["errors"][0]["message"]


async def test_an_unknown_secret_fails_the_node_naming_it(
    make_settings: MakeSettings, serve: Serve, echo: LocalHTTPServer
) -> None:
    async with serve(secret_settings(make_settings)) as client:
        assert (await put_secret(client, "KNOWN", "known-value")).status_code == 201
        workflow_id = unique("unknown")
        node = echo_node("call", echo.url("/echo"), secret="MISSING")
        node["config"]["headers"]["X-Known"] = "{{ secrets.KNOWN }}"
        await post_workflow(client, chain(workflow_id, node))
        run = await finished(client, (await start_run(client, workflow_id, wait=10))["run_id"])
    assert run["status"] == "failed"
    assert run["error"]["kind"] == "config"
    assert "secret 'MISSING' is not set in namespace 'default'" in run["error"]["message"]
    assert "known-value" not in json.dumps(run)
    assert echo.requests == []  # nothing was sent


# ------------------------------------------------------------------------- the proof


async def test_a_run_that_echoes_its_secret_stores_and_streams_only_the_mask(
    make_settings: MakeSettings,
    serve: Serve,
    echo: LocalHTTPServer,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = uuid.uuid4().hex  # found in any form the value may take
    value = f'tok-{token}-"q"'  # a quote: JSON escapes it in a text body
    gate = asyncio.Event()

    async def held(request: Received) -> Reply:
        await gate.wait()  # until the stream below is live
        return json_reply({"authorization": request.headers.get("authorization")})

    echo.route("/held", held)
    workflow_id = unique("echo")
    definition = chain(
        workflow_id,
        echo_node("held", echo.url("/held")),
        echo_node("json", echo.url("/echo")),
        echo_node("text", echo.url("/echo-text"), response="text"),
        transform("copy", seen="nodes.json.output.body.authorization"),
        output={"seen": "nodes.copy.output.seen", "text": "nodes.text.output.body"},
    )
    failing = chain(unique("refused"), echo_node("refuse", echo.url("/refuse")))
    cacheable = chain(unique("cached"), echo_node("once", echo.url("/echo")))
    settings = secret_settings(make_settings)
    async with serve(settings) as client:
        assert (await put_secret(client, "API_TOKEN", value)).status_code == 201
        await post_workflow(client, definition)
        await post_workflow(client, failing)
        await post_workflow(client, cacheable)
        # verbose_logging: the engine logs every event
        config = {"verbose_logging": True}
        run_id = (await start_run(client, workflow_id, config=config))["run_id"]
        async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=SSE) as response:
            lines = sse_lines(response)
            reader = await read_sse(lines, stop_after=2)  # run.started, node.started
            gate.set()
            reader = await read_sse(lines, reader=reader)  # live, to the end
        run = await finished(client, run_id)
        # enable_cache keeps a GET's result: the second run finds it there, masked
        for _ in range(2):
            start = await start_run(client, cacheable["id"], config={"enable_cache": True})
            cached = await finished(client, start["run_id"])
        cached_id = start["run_id"]
        refused_id = (await start_run(client, failing["id"]))["run_id"]
        refused = await finished(client, refused_id)
        views = [
            await client.get(f"/v1/runs/{run_id}"),
            await client.get(f"/v1/runs/{run_id}/trace"),
            await client.get(f"/v1/runs/{run_id}/state"),
            await client.get(f"/v1/runs/{refused_id}"),
            await client.get(
                f"/v1/runs/{cached_id}/events", headers={"Accept": "application/json"}
            ),
        ]
        checkpoints = (await client.get(f"/v1/runs/{run_id}/checkpoints")).json()
        for checkpoint in checkpoints:
            views.append(await client.get(f"/v1/checkpoints/{checkpoint['id']}"))
        logged = await events_json(client, run_id)
        metrics_text = (await client.get("/metrics")).text

    # the value did go where the definition sent it (the test could fail)
    assert echo.paths == ["/held", "/echo", "/echo-text", "/echo", "/refuse"]  # cached once
    assert [r.headers["authorization"] for r in echo.requests] == [f"Bearer {value}"] * 5
    assert run["status"] == "succeeded", run
    assert run["output"]["seen"] == "Bearer ***"
    assert json.loads(run["output"]["text"])["authorization"] == "Bearer ***"
    assert cached["status"] == "succeeded"
    assert cached["output"]["once"]["body"]["authorization"] == "Bearer ***"
    assert refused["status"] == "failed"
    assert refused["error"]["kind"] == "execution"
    assert "Bearer ***" in refused["error"]["message"]  # the 401's body, quoted masked

    # streamed live and logged: only the mask
    streamed = json.dumps([frame.data for frame in reader.frames])
    assert reader.frames[-1].event == "run.succeeded"
    assert "Bearer ***" in streamed
    assert "Bearer ***" in json.dumps(logged)
    for name, content in [
        ("the live stream", streamed),
        ("the event log", json.dumps(logged)),
        ("/metrics", metrics_text),
        *((f"GET {v.request.url.path}", v.text) for v in views),
    ]:
        assert token not in content, f"{name} holds the secret's value"
    assert all(v.status_code == 200 for v in views), [v.text for v in views]

    # the database: every row of every table
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            tables: dict[str, str] = {}
            for table in Base.metadata.sorted_tables:
                rows = (await conn.execute(text(f'SELECT * FROM "{table.name}"'))).all()
                tables[table.name] = json.dumps([list(row) for row in rows], default=str)
    finally:
        await engine.dispose()
    for name in ("events", "checkpoints", "node_results", "runs"):
        assert "Bearer ***" in tables[name], name  # they hold the run's results, masked
    leaking = [name for name, content in tables.items() if token in content]
    assert leaking == [], f"tables holding the secret's value: {leaking}"

    # the logs, the engine's DEBUG events (verbose_logging) included
    verbose = [r for r in caplog.records if r.name == "flowcore.engine"]
    assert any("Bearer ***" in r.getMessage() for r in verbose), "no verbose event was logged"
    assert token not in caplog.text
    assert all(token not in r.getMessage() for r in caplog.records)
