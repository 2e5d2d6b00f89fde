"""The operator's egress policy through the real HTTP API, on SQLite and Postgres: a
workflow's ``allow_hosts`` cannot reach what ``FLOWCORE_EGRESS_ALLOW`` does not allow,
``FLOWCORE_EGRESS_DENY`` beats both, and a bad entry stops the replica at startup.

The target is a local HTTP server on 127.0.0.1 that records every connection, so a
refused run is seen to have reached nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.nodes.egress import EgressPolicyError, install_egress_policy
from app.nodes.http import aclose_http_client
from app.runtime.wiring import build
from tests.nodes.conftest import LocalHTTPServer, json_reply
from tests.service.support import MakeSettings, Serve, finished, post_workflow, start_run, unique


@pytest.fixture
async def target() -> AsyncIterator[LocalHTTPServer]:
    """A loopback server that answers ``/ping``."""
    server = LocalHTTPServer()
    server.route("/ping", lambda _: json_reply({"pong": True}))
    await server.start()
    try:
        yield server
    finally:
        # the replicas' runs used the shared client on this test's loop
        await aclose_http_client()
        install_egress_policy(None)
        await server.close()


def calls(workflow_id: str, url: str) -> dict[str, Any]:
    """One http node that lists every IPv4 address in its allow_hosts."""
    node = {"id": "call", "type": "http", "config": {"url": url, "allow_hosts": ["0.0.0.0/0"]}}
    return {"id": workflow_id, "nodes": [node]}


async def run_once(client: httpx.AsyncClient, workflow_id: str) -> dict[str, Any]:
    run = await start_run(client, workflow_id, wait=10)
    return await finished(client, run["run_id"])


async def test_allow_hosts_reaches_loopback_only_when_the_operator_allows_it(
    make_settings: MakeSettings,
    serve: Serve,
    target: LocalHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workflow_id = unique("egress")
    async with serve(make_settings()) as client:
        await post_workflow(client, calls(workflow_id, target.url("/ping")))

        refused = await run_once(client, workflow_id)

    assert refused["status"] == "failed", refused
    assert refused["error"]["kind"] == "forbidden_target", refused["error"]
    assert "127.0.0.1 is a loopback address" in refused["error"]["message"]
    assert target.connections == 0

    monkeypatch.setenv("FLOWCORE_EGRESS_ALLOW", "127.0.0.1")
    async with serve(make_settings()) as client:
        reached = await run_once(client, workflow_id)

    assert reached["status"] == "succeeded", reached
    assert reached["output"]["call"]["body"] == {"pong": True}
    assert target.paths == ["/ping"]


async def test_the_operator_deny_list_beats_its_allow_list_and_allow_hosts(
    make_settings: MakeSettings,
    serve: Serve,
    target: LocalHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWCORE_EGRESS_ALLOW", "127.0.0.0/8")
    monkeypatch.setenv("FLOWCORE_EGRESS_DENY", "127.0.0.1")
    workflow_id = unique("egress")
    async with serve(make_settings()) as client:
        await post_workflow(client, calls(workflow_id, target.url("/ping")))

        run = await run_once(client, workflow_id)

    assert run["status"] == "failed", run
    assert run["error"]["kind"] == "forbidden_target", run["error"]
    assert "denied by the operator's egress policy" in run["error"]["message"]
    assert target.connections == 0


@pytest.mark.parametrize("setting", ["egress_allow", "egress_deny"])
async def test_a_bad_entry_stops_the_replica_at_startup(
    make_settings: MakeSettings, setting: str
) -> None:
    settings = make_settings(**{setting: ["10.0.0.0/8", "not a host"]})

    with pytest.raises(EgressPolicyError) as caught:
        await build(settings)

    assert str(caught.value) == (
        f"FLOWCORE_{setting.upper()}: 'not a host' is neither a host name nor an IP address "
        "or network"
    )
